"""All settings, in one typed and frozen object read from `BRIDGE_*` variables."""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigError

ENV_PREFIX = "BRIDGE_"
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")
# Secrets that may also come from a file: BRIDGE_<NAME>_FILE.
SECRET_FILES = ("auth_tokens", "kafka_sasl_password", "schema_registry_password")


class Settings(BaseSettings):
    """Every knob of bridge. Each field is read from `BRIDGE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes, each with its own spool file and its own listening "
        "socket on the port (SO_REUSEPORT: the kernel spreads connections across them).",
    )
    worker_timeout: float = Field(
        30.0,
        gt=0,
        description="With several workers: one whose event loop has not run for this many "
        "seconds is killed and replaced.",
    )
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
    kafka_max_request_size: int = Field(
        1024 * 1024 + 64 * 1024,
        ge=64 * 1024,
        description="Largest record sent, bytes (keep the topics' max.message.bytes at least "
        "this); a notification that does not fit goes to the DLQ, a raw body that does not "
        "fit is answered 413.",
    )
    kafka_request_timeout_ms: int = Field(
        30000, ge=1000, description="Kafka request timeout in ms."
    )
    kafka_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for Kafka at start before giving up."
    )
    kafka_create_topics: bool = Field(
        False,  # noqa: FBT003
        description="Create the topics at start when they are missing (with the two settings "
        "below, `min.insync.replicas` 2 of 3, `max.message.bytes` BRIDGE_KAFKA_MAX_REQUEST_SIZE); "
        "otherwise `bridge serve` refuses to start, naming the topic and the command.",
    )
    kafka_topic_partitions: int = Field(
        6, ge=1, description="Partitions of each topic bridge creates (they can only grow)."
    )
    kafka_topic_replication_factor: int = Field(
        3, ge=1, description="Replication factor of each topic bridge creates."
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
        # Just below 174,762, where the dict's table doubles (to 2**20 slots) once ids come
        # and go: measured in steady state, 170,000 ids take 20 MB, 200,000 took 32 MB.
        170_000,
        ge=1000,
        description="Most event ids remembered (bounds memory: about 120 bytes each).",
    )
    dedup_shared: bool = Field(
        True,  # noqa: FBT003
        description="Share the event ids stored with every other process (workers, replicas) "
        "through the compacted topic `<prefix>event-ids`, so a retry reaching another process "
        "is dropped too; `bridge serve` creates the topic when it is missing.",
    )
    max_in_flight: int = Field(
        512, ge=1, description="Notifications handled at once; beyond it 503 at once."
    )
    shutdown_timeout: float = Field(
        10.0, gt=0, lt=15, description="Seconds to finish in-flight work and flush on SIGTERM."
    )
    header_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a client may take to send its request line and headers, from "
        "connecting (or from a later request's first byte); then 408 and the connection is "
        "closed.",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request line and headers, bytes; beyond it 431 and the "
        "connection is closed, the rest unread.",
    )
    body_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client may take to send its body; then 408 and the connection "
        "is closed.",
    )
    keep_alive_timeout: int = Field(
        5, ge=1, description="Seconds an idle kept-alive connection stays open."
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Open connections at once; a new one beyond it takes the place of the "
        "oldest that holds no request (waiting for its headers, or idle), or is closed when "
        "all hold one.",
    )
    max_connections_per_address: int = Field(
        128,
        ge=0,
        description="Open connections from one client address (the peer's: behind a proxy, "
        "the proxy's); beyond it as for BRIDGE_MAX_CONNECTIONS, among that address's own "
        "(0: no limit).",
    )
    # -- who may post -----------------------------------------------------------------------
    auth_tokens: SecretStr = Field(
        SecretStr(""),
        description="Shared-secret tokens, comma-separated (several for rotation); sent as "
        "`Authorization: Bearer <token>` or as the last path segment "
        "`/webhooks/airudder/<token>`.",
    )
    auth_tokens_file: Path | None = Field(
        None, description="File with the tokens, one per line (instead of BRIDGE_AUTH_TOKENS)."
    )
    allow_unauthenticated: bool = Field(
        False,  # noqa: FBT003
        description="Serve without a token. Refused unless set explicitly.",
    )
    allowed_cidrs: str = Field(
        "", description="Client networks allowed to post, comma-separated CIDRs (empty: any)."
    )
    trusted_proxies: str = Field(
        "",
        description="Proxies whose `X-Forwarded-For` is believed, comma-separated CIDRs.",
    )
    auth_failure_limit: int = Field(
        20,
        ge=0,
        description="Failed authentications per client address per minute; beyond it that "
        "address's wrong tokens get 429 (a valid token is always served; 0: off).",
    )
    tls_certfile: Path | None = Field(
        None, description="Certificate (PEM) for HTTPS on the listener; with BRIDGE_TLS_KEYFILE."
    )
    tls_keyfile: Path | None = Field(None, description="Private key (PEM) for HTTPS.")
    # -- Kafka security ------------------------------------------------------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How to talk to Kafka."
    )
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "", description="SASL mechanism, with a SASL_* protocol."
    )
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password.")
    kafka_sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password."
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle (PEM) to verify the brokers; default: the system's."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="Client key (PEM) for mutual TLS.")
    # -- schema registry -------------------------------------------------------------------
    schema_registry_url: str = Field(
        "",
        description="Confluent-compatible schema registry; when set, values are written in the "
        "Confluent wire format (else Avro single-object encoding).",
    )
    schema_registry_username: str = Field("", description="Registry basic-auth user.")
    schema_registry_password: SecretStr = Field(
        SecretStr(""), description="Registry basic-auth password."
    )
    schema_registry_password_file: Path | None = Field(
        None, description="File holding the registry password."
    )
    schema_registry_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) to verify the registry; default: the system's."
    )
    schema_subject_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic",
        description="Subject naming: `<topic>-value`, `<record>`, or `<topic>-<record>`.",
    )
    schema_registration: Literal["lookup", "auto"] = Field(
        "lookup",
        description="`lookup`: use the schemas CI/CD registered, refuse to start if missing; "
        "`auto`: register them at start (development).",
    )
    schema_dir: Path | None = Field(
        None,
        description="Folder of the Avro schemas (default: the packaged avro/ folder). Each "
        "top-level schema declaring `x-notification` is a notification type, written to "
        "`<prefix><type>` (see README, 'Adding a notification type').",
    )
    schema_compatibility: Literal["BACKWARD", "FORWARD", "FULL", "NONE"] = Field(
        "BACKWARD",
        description="Level `bridge schemas check` enforces against avro/history/.",
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body accepted, bytes."
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in SECRET_FILES:
            path = data.get(f"{name}_file")
            if path:
                try:
                    data[name] = Path(path).read_text().strip().replace("\n", ",")
                except OSError as exc:
                    variable = f"{ENV_PREFIX}{name.upper()}_FILE"
                    raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None
        return data

    @field_validator("spool_dir", "schema_dir", mode="before")
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
    def tokens(self) -> list[str]:
        raw = self.auth_tokens.get_secret_value()
        return [t.strip() for t in raw.split(",") if t.strip()]

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one line that names the variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = "_".join(str(p) for p in error["loc"])
            value = error.get("input")
            secret = field in SECRET_FILES or isinstance(value, dict)
            shown = "" if secret else f" (got {value!r})"
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{ENV_PREFIX}{field.upper()}: {message}{shown}" if field else message)
        raise ConfigError("invalid setting " + "; ".join(lines)) from None
    _check_together(settings)
    return settings


def _check_together(s: Settings) -> None:
    """Settings that only make sense together; each error names the variable to set."""

    def require(condition: bool, name: str, why: str) -> None:
        if not condition:
            raise ConfigError(f"invalid setting {ENV_PREFIX}{name}: {why}")

    sasl = s.kafka_security_protocol.startswith("SASL_")
    require(
        not sasl or bool(s.kafka_sasl_mechanism),
        "KAFKA_SASL_MECHANISM",
        f"required with BRIDGE_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}",
    )
    require(
        not s.kafka_sasl_mechanism or sasl,
        "KAFKA_SECURITY_PROTOCOL",
        "must be SASL_PLAINTEXT or SASL_SSL when a SASL mechanism is set",
    )
    if s.kafka_sasl_mechanism:
        require(bool(s.kafka_sasl_username), "KAFKA_SASL_USERNAME", "required with SASL")
        require(
            bool(s.kafka_sasl_password.get_secret_value()),
            "KAFKA_SASL_PASSWORD",
            "required with SASL (or BRIDGE_KAFKA_SASL_PASSWORD_FILE)",
        )
    require(
        (s.tls_certfile is None) == (s.tls_keyfile is None),
        "TLS_KEYFILE" if s.tls_keyfile is None else "TLS_CERTFILE",
        "HTTPS needs both BRIDGE_TLS_CERTFILE and BRIDGE_TLS_KEYFILE",
    )
    require(
        (s.kafka_ssl_certfile is None) == (s.kafka_ssl_keyfile is None),
        "KAFKA_SSL_KEYFILE" if s.kafka_ssl_keyfile is None else "KAFKA_SSL_CERTFILE",
        "mutual TLS needs both the certificate and the key",
    )
    require(
        not s.schema_registry_url or s.schema_registry_url.startswith(("http://", "https://")),
        "SCHEMA_REGISTRY_URL",
        "must be an http:// or https:// URL",
    )
    for name in (
        "tls_certfile",
        "tls_keyfile",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "schema_registry_ca_file",
    ):
        path = getattr(s, name)
        require(path is None or path.is_file(), name.upper(), f"{path} is not a readable file")
    for name in ("allowed_cidrs", "trusted_proxies"):
        try:
            networks(getattr(s, name))
        except ValueError as exc:
            require(False, name.upper(), str(exc))  # noqa: FBT003


def networks(text: str) -> list[IPv4Network | IPv6Network]:
    """Comma-separated CIDRs (a bare address is a /32 or /128)."""
    return [ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


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
