"""The one place Kafka's errors become bridge's (`bridge.errors`): what a Kafka client raises
when the broker is away or slow (its own KafkaError, and the OSError and TimeoutError of the
connection under it), and why the broker refuses a write."""

from __future__ import annotations

from typing import Final

from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError, KafkaTimeoutError

from bridge.errors import BrokerUnavailable, PublishError, PublishRefused

# What a call to Kafka may raise that says "not now": each caller words it with `unavailable`
# or keeps its own fallback.
UNREACHABLE: Final = (KafkaError, OSError, TimeoutError)

# Why the broker refuses a write, as a bounded label; any other error it does not retry is
# "other". (UnknownTopicOrPartition is retried by aiokafka until the ack budget runs out: a
# deleted topic is found by `kafka.topics` instead.)
REFUSALS: Final[dict[type[KafkaError], str]] = {
    kafka_errors.TopicAuthorizationFailedError: "topic_authorization",
    kafka_errors.ClusterAuthorizationFailedError: "cluster_authorization",
    kafka_errors.TransactionalIdAuthorizationFailed: "cluster_authorization",
    kafka_errors.UnknownTopicOrPartitionError: "topic_missing",
    kafka_errors.InvalidTopicError: "topic_missing",
    kafka_errors.MessageSizeTooLargeError: "too_large",
    kafka_errors.RecordListTooLargeError: "too_large",
    kafka_errors.PolicyViolationError: "policy",
}


def reason(exc: BaseException) -> str:
    """The error's class and message, in one line ("KafkaConnectionError: ...")."""
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def unavailable(doing: str, exc: BaseException) -> BrokerUnavailable:
    """Kafka did not answer what bridge was `doing` ("cannot create the topics")."""
    return BrokerUnavailable(f"{doing}: {reason(exc)}")


def publish_error(exc: KafkaError) -> PublishError:
    """A failed send as bridge's error: a refusal (503, not spooled) when the broker will
    refuse it again until someone changes the cluster, else a failure to spool."""
    text = reason(exc)
    refusal = REFUSALS.get(type(exc))
    if refusal is not None:
        return PublishRefused(text, refusal)
    # Down or slow, or the producer being replaced under this send (ProducerClosed, marked
    # not retriable by aiokafka): spool it.
    if exc.retriable or isinstance(exc, (KafkaTimeoutError, kafka_errors.ProducerClosed)):
        return PublishError(text)
    return PublishRefused(text, "other")
