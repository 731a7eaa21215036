"""The one exception tree of bridge.

BridgeError                  status, retriable
 +-- ConfigError             bad settings; start refused
 +-- InvalidNotification     the body cannot be typed; goes to the dead-letter topic
 +-- PublishError            Kafka did not acknowledge; retriable, answered 503
 |    +-- PublishTimeout     no acknowledgement within the ack budget
 +-- BrokerUnavailable       Kafka cannot be reached at start
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


class PublishTimeout(PublishError):
    """No acknowledgement within the ack budget."""

    code = "kafka_timeout"


class BrokerUnavailable(BridgeError):
    """Kafka cannot be reached."""

    code = "kafka_unreachable"

    status = 503
    retriable = True


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
