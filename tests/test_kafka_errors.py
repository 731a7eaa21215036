"""Kafka's errors in bridge's words, in one place (bridge.kafka.errors)."""

from __future__ import annotations

import pytest
from aiokafka import errors as kafka_errors

from bridge.errors import BrokerUnavailable, PublishError, PublishRefused
from bridge.kafka.errors import UNREACHABLE, publish_error, unavailable


def test_an_unreachable_broker_is_named_with_what_bridge_was_doing() -> None:
    error = unavailable("cannot create the topics", kafka_errors.KafkaConnectionError("refused"))
    assert isinstance(error, BrokerUnavailable)
    assert str(error).startswith("cannot create the topics: KafkaConnectionError: ")
    assert str(error).endswith("refused")
    assert str(unavailable("cannot ask", TimeoutError())) == "cannot ask: TimeoutError"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (kafka_errors.TopicAuthorizationFailedError(), "topic_authorization"),
        (kafka_errors.MessageSizeTooLargeError(), "too_large"),
        (kafka_errors.PolicyViolationError(), "policy"),
        (kafka_errors.InvalidRequiredAcksError(), "other"),  # not retriable, not known
    ],
)
def test_what_the_broker_will_refuse_again_is_a_refusal(
    exc: kafka_errors.KafkaError, reason: str
) -> None:
    error = publish_error(exc)
    assert isinstance(error, PublishRefused)
    assert error.reason == reason


@pytest.mark.parametrize(
    "exc",
    [
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.NotLeaderForPartitionError(),  # retriable: a leader being elected
        kafka_errors.ProducerClosed(),  # the producer replaced under this send
    ],
)
def test_what_may_pass_is_spooled(exc: kafka_errors.KafkaError) -> None:
    error = publish_error(exc)
    assert type(error) is PublishError


def test_unreachable_covers_the_connection_under_the_client() -> None:
    assert issubclass(ConnectionRefusedError, UNREACHABLE)
    assert issubclass(kafka_errors.KafkaConnectionError, UNREACHABLE)
