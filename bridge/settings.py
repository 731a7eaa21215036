"""All settings, in one typed and frozen object read from `BRIDGE_*` variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigError

ENV_PREFIX = "BRIDGE_"
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")


class Settings(BaseSettings):
    """Every knob of bridge. Each field is read from `BRIDGE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    topic_prefix: str = Field(
        "airudder.", description="Prefix of every topic: `<prefix>call`, `<prefix>dlq`, ..."
    )
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    kafka_enable_idempotence: bool = Field(
        True,  # noqa: FBT003
        description="Idempotent producer (needs broker support; off for the embedded broker).",
    )
    kafka_client_id: str = Field("airudder-bridge", description="Kafka client id.")
    kafka_linger_ms: int = Field(0, ge=0, description="Producer linger time in ms.")
    kafka_max_batch_size: int = Field(
        16384, ge=1024, description="Largest producer batch per partition, bytes."
    )
    kafka_request_timeout_ms: int = Field(
        30000, ge=1000, description="Kafka request timeout in ms."
    )
    kafka_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for Kafka at start before giving up."
    )
    ack_timeout: float = Field(
        5.0,
        gt=0,
        lt=10,
        description="Seconds a request waits for Kafka's acknowledgement (the vendor waits 10).",
    )
    retry_after: int = Field(
        60,
        ge=1,
        description="Seconds sent in `Retry-After` with a 503 (the vendor retries each minute).",
    )
    spool_dir: Path | None = Field(
        Path("spool"),
        description="Directory of the durable spool (empty: no spool, 503 when Kafka is down).",
    )
    spool_max_bytes: int = Field(
        1024**3, ge=1024 * 1024, description="Size limit of the spool, bytes; beyond it 503."
    )
    dedup_window: float = Field(
        1800.0,
        ge=0,
        description="Seconds an event id is remembered to drop the vendor's retries (0: off).",
    )
    dedup_max_entries: int = Field(
        200_000, ge=1000, description="Most event ids remembered (bounds memory)."
    )
    max_in_flight: int = Field(
        512, ge=1, description="Notifications handled at once; beyond it 503 at once."
    )
    shutdown_timeout: float = Field(
        10.0, gt=0, lt=15, description="Seconds to finish in-flight work and flush on SIGTERM."
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body accepted, bytes."
    )

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _empty_means_no_spool(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_is_legal(cls, value: str) -> str:
        if not _TOPIC_CHARS.fullmatch(value) or len(value) > 200:
            raise ValueError("only letters, digits, '.', '_' and '-' are allowed in topic names")
        return value

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in error["loc"]).upper()
            value = error.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{name}: {error['msg']}{shown}")
        raise ConfigError("invalid setting " + "; ".join(lines)) from None


def settings_table() -> str:
    """The README's configuration table, generated from `Settings` (a test keeps it fresh)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default
        shown = (
            ""
            if default is None
            else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        )
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows)
