"""The one exception tree of bridge. Each class says its HTTP status and whether the
vendor should retry (`retriable`: answered with `Retry-After`).

BridgeError                  status
 +-- ConfigError             -     bad settings; start refused
 +-- InvalidNotification     200   cannot be typed; stored in the dead-letter topic
 +-- BodyTooLarge            413   the request body exceeds BRIDGE_MAX_BODY_BYTES
 +-- BodyTimeout             408   the body did not arrive within BRIDGE_BODY_TIMEOUT
 +-- PayloadTooLarge         413   not even the raw body fits in a Kafka record
 +-- UndecodableRecord       -     a Kafka record's value is not Avro we can read (tail)
 +-- RegistryError           503   the schema registry refused or could not be reached
 +-- PublishError            503   Kafka did not acknowledge; retriable
 |    +-- PublishTimeout     503   no acknowledgement within the ack budget
 |    +-- PublishRefused     503   the broker refuses the write (ACLs, topic gone): not spooled
 +-- BrokerUnavailable       503   Kafka cannot be reached (at start)
 +-- TopicUnavailable        -     a topic bridge writes is missing or not ours (start refused)
 +-- Unavailable             503   cannot take the notification now; retriable
      +-- Overloaded         503   too many notifications in flight
      +-- SpoolError         503   the spool cannot take it (disk error)
           +-- SpoolFull     503   the spool is at its size limit
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error bridge raises on purpose."""

    status: int = 500
    retriable: bool = False
    code: str = "error"  # stable token for responses and metric labels


class ConfigError(BridgeError):
    """A setting is missing or invalid; the message names the variable."""

    code = "config"


class InvalidNotification(BridgeError):
    """The body is not a notification we can type. `reason` is a short stable token."""

    code = "invalid"

    status = 200  # answered 2xx once the raw body is in the dead-letter topic

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PublishError(BridgeError):
    """Kafka did not take the record. The vendor should retry."""

    code = "kafka_unavailable"

    status = 503
    retriable = True


class PublishRefused(PublishError):
    """The broker refuses the write until someone changes it (an ACL, a deleted topic, a topic
    limit). Still 503 with Retry-After, never 422: the notification is valid, and the vendor's
    retries reach it once the broker is fixed. Never spooled: the spool would drain into the
    same refusal while a 200 claimed it stored. `reason` is a short stable token (a label)."""

    code = "kafka_refused"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BodyTooLarge(BridgeError):
    """The request body is larger than BRIDGE_MAX_BODY_BYTES."""

    status = 413
    code = "body_too_large"


class BodyTimeout(BridgeError):
    """The client did not send its whole body within BRIDGE_BODY_TIMEOUT."""

    status = 408
    code = "body_timeout"


class UndecodableRecord(BridgeError):
    """A value read from Kafka is not Avro of a schema we know. The read side's error: an
    HTTP notification that cannot be typed is an `InvalidNotification` instead."""

    code = "undecodable"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RegistryError(BridgeError):
    """The schema registry answered with an error, or could not be reached. `error_code` is
    the registry's own (40401 subject not found, ...), or 0."""

    status = 503
    retriable = True
    code = "registry_error"

    def __init__(self, message: str, error_code: int = 0) -> None:
        super().__init__(message)
        self.error_code = error_code


class PayloadTooLarge(BridgeError):
    """Not even the raw body fits in a Kafka record."""

    status = 413
    code = "too_large_for_kafka"


class PublishTimeout(PublishError):
    """No acknowledgement within the ack budget."""

    code = "kafka_timeout"


class BrokerUnavailable(BridgeError):
    """Kafka cannot be reached."""

    code = "kafka_unreachable"

    status = 503
    retriable = True


class TopicUnavailable(BridgeError):
    """At start: a topic bridge writes does not exist (and may not be created), or may not be
    described; the message names the topic and the command that fixes it."""

    code = "kafka_topic"


class Unavailable(BridgeError):
    """bridge cannot store the notification now; the vendor should retry."""

    code = "unavailable"

    status = 503
    retriable = True


class Overloaded(Unavailable):
    """Too many notifications in flight."""

    code = "overloaded"


class SpoolError(Unavailable):
    """The spool cannot take the entry (disk error, damaged file)."""

    code = "spool_error"


class SpoolFull(SpoolError):
    """The spool is at its size limit."""

    code = "spool_full"
