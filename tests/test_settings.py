from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.settings import load_settings


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BRIDGE_HOST", "BRIDGE_PORT", "BRIDGE_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.topic_prefix == "airudder."
    assert settings.kafka_enable_idempotence is True
    assert settings.ack_timeout == 5.0


def test_settings_come_from_bridge_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "9999")
    monkeypatch.setenv("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "a:9092, b:9092")
    monkeypatch.setenv("BRIDGE_KAFKA_ENABLE_IDEMPOTENCE", "false")
    settings = load_settings()
    assert settings.port == 9999
    assert settings.bootstrap_servers == ["a:9092", "b:9092"]
    assert settings.kafka_enable_idempotence is False


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_PORT", "eighty"),
        ("BRIDGE_PORT", "70000"),
        ("BRIDGE_ACK_TIMEOUT", "12"),  # the vendor gives up after 10 s
        ("BRIDGE_TOPIC_PREFIX", "air rudder/"),
        ("BRIDGE_KAFKA_ENABLE_IDEMPOTENCE", "maybe"),
        ("BRIDGE_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert "\n" not in message
