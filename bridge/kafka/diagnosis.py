"""Why Kafka refuses bridge, in one line that names the setting to change.

aiokafka's client logs why a bootstrap server failed and then raises a bare "Unable to
bootstrap". A connection of our own, made the way the client makes its connections
(`aiokafka.conn.create_conn`: TLS, the API versions, SASL), keeps the cause: a SCRAM refusal,
a broker certificate the CA file does not vouch for or that is issued for another name, a
client certificate the broker refuses, a listener that speaks another protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from bridge.errors import BrokerUnavailable, ConfigError
from bridge.kafka.client import kafka_options
from bridge.settings import Settings

# OpenSSL's verify codes for a certificate that is valid but names another host or address.
_NAME_MISMATCH: Final = frozenset(
    {62, 64}
)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# The alerts a server sends when it refuses the client's certificate (or gets none): Java's
# broker sends bad_certificate without one and certificate_unknown for an untrusted one.
_CLIENT_CERTIFICATE_REFUSED: Final = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)
# The first bytes answered by a listener of another protocol: TLS to a plain listener
# (a reset, or a record that is not TLS), plain to a TLS listener (closed unanswered).
_OTHER_PROTOCOL: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}
)


async def check_connection(settings: Settings) -> None:
    """Connect and authenticate to a bootstrap server as every Kafka client of bridge does.

    ConfigError when a broker's answer shows a setting is wrong, BrokerUnavailable when none
    answers within `BRIDGE_KAFKA_CONNECT_TIMEOUT`.
    """
    options = _options(settings)
    failures: list[tuple[str, BaseException]] = []
    try:
        async with asyncio.timeout(settings.kafka_connect_timeout):
            for host, port, _ in collect_hosts(settings.kafka_bootstrap_servers, randomize=False):
                address = f"{host}:{port}"
                try:
                    connection = await create_conn(host, port, **options)
                except (OSError, EOFError, KafkaError, ValueError) as exc:
                    failures.append((address, exc))
                    continue
                connection.close()
                return
    except TimeoutError as timeout:
        failures.append((settings.kafka_bootstrap_servers, timeout))
    # A broker that answered and refused says more than one that did not answer.
    for address, failure in failures:
        if (problem := explain(failure, settings, address)) is not None:
            raise ConfigError(problem) from failure
    if not failures:
        raise ConfigError("invalid setting BRIDGE_KAFKA_BOOTSTRAP_SERVERS: no address in it")
    last = failures[-1][1]
    hint = next((h for _, e in failures if (h := _protocol_hint(e, settings))), "")
    raise BrokerUnavailable(
        f"cannot reach Kafka at {settings.kafka_bootstrap_servers} "
        f"(BRIDGE_KAFKA_BOOTSTRAP_SERVERS) within {settings.kafka_connect_timeout:g}s: "
        f"{_describe(last)}{hint}"
    ) from last


def explain(exc: BaseException, s: Settings, address: str) -> str | None:
    """The setting a broker's refusal points at, in one line; None when it is no refusal."""
    for cause in _chain(exc):
        problem = _tls_refusal(cause, s, address) or _sasl_refusal(cause, s, address)
        if problem is not None:
            return problem
    return None


def _sasl_refusal(cause: BaseException, s: Settings, address: str) -> str | None:
    if isinstance(cause, SaslAuthenticationFailed | IllegalSaslStateError):
        return (
            f"invalid setting BRIDGE_KAFKA_SASL_PASSWORD: Kafka at {address} refused user "
            f"{s.kafka_sasl_username!r} with {s.kafka_sasl_mechanism} (a wrong password, "
            "or no such user: BRIDGE_KAFKA_SASL_USERNAME)"
        )
    if (
        isinstance(cause, ValueError)
        and not isinstance(cause, ssl.SSLError)  # also a ValueError
        and s.kafka_sasl_mechanism.startswith("SCRAM")
    ):
        # aiokafka's SCRAM exchange raises ValueError on a server proof that does not fit.
        return (
            f"invalid setting BRIDGE_KAFKA_SASL_PASSWORD: the SCRAM exchange with Kafka at "
            f"{address} failed for user {s.kafka_sasl_username!r}: {cause}"
        )
    if isinstance(cause, UnsupportedSaslMechanismError):
        return (
            f"invalid setting BRIDGE_KAFKA_SASL_MECHANISM: Kafka at {address} does not "
            f"offer {s.kafka_sasl_mechanism} on this listener"
        )
    return None


def _tls_refusal(cause: BaseException, s: Settings, address: str) -> str | None:
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _untrusted_broker(cause, s, address)
    if not isinstance(cause, ssl.SSLError) or cause.reason not in _CLIENT_CERTIFICATE_REFUSED:
        return None
    if s.kafka_ssl_certfile is None:
        return (
            f"invalid setting BRIDGE_KAFKA_SSL_CERTFILE: Kafka at {address} requires a "
            "client certificate (mutual TLS); set it and BRIDGE_KAFKA_SSL_KEYFILE"
        )
    return (
        f"invalid setting BRIDGE_KAFKA_SSL_CERTFILE: Kafka at {address} refused the "
        f"client certificate {s.kafka_ssl_certfile} ({cause.reason.lower()}): it is "
        "not issued by a CA the broker trusts, or has expired"
    )


def _untrusted_broker(cause: ssl.SSLCertVerificationError, s: Settings, address: str) -> str:
    why = cause.verify_message or cause.reason or str(cause)
    if cause.verify_code in _NAME_MISMATCH:
        # aiokafka always checks the name (its SSL context has no way to turn it off), and
        # checks it against the address it connects to: the one in the bootstrap list.
        return (
            f"invalid setting BRIDGE_KAFKA_BOOTSTRAP_SERVERS: the certificate of Kafka at "
            f"{address} is not issued for the name used to reach it ({why}); use a name the "
            "certificate carries"
        )
    trusted = s.kafka_ssl_cafile or "unset, so the system's CAs"
    return (
        f"invalid setting BRIDGE_KAFKA_SSL_CAFILE: the certificate of Kafka at {address} is "
        f"not trusted ({why}); BRIDGE_KAFKA_SSL_CAFILE is {trusted}"
    )


def _protocol_hint(exc: BaseException, s: Settings) -> str | None:
    for cause in _chain(exc):
        if isinstance(cause, ConnectionResetError | asyncio.IncompleteReadError) or (
            isinstance(cause, ssl.SSLError) and cause.reason in _OTHER_PROTOCOL
        ):
            return (
                "; the broker closed the connection unanswered: does BRIDGE_KAFKA_SECURITY_"
                f"PROTOCOL={s.kafka_security_protocol} match this listener?"
            )
    return None


def _options(s: Settings) -> dict[str, Any]:
    """`kafka_options` as `create_conn` takes them; a PEM file that cannot be loaded is a
    ConfigError naming its setting (OpenSSL's error says what is wrong, not which file)."""
    try:
        options = kafka_options(s)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(_unloadable(s, exc)) from exc
    options.pop("bootstrap_servers")
    options["request_timeout_ms"] = s.kafka_request_timeout_ms
    return options


def _unloadable(s: Settings, exc: BaseException) -> str:
    name = "BRIDGE_KAFKA_SSL_CERTFILE"
    if s.kafka_ssl_cafile is not None:
        try:
            ssl.create_default_context(cafile=str(s.kafka_ssl_cafile))
        except (ssl.SSLError, OSError):
            name = "BRIDGE_KAFKA_SSL_CAFILE"
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        name = "BRIDGE_KAFKA_SSL_KEYFILE"
    # OpenSSL's reason is a code ("PEM lib", "NO_CERTIFICATE_OR_CRL_FOUND"), never the content.
    return f"invalid setting {name}: cannot load it ({_describe(exc)})"


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes: aiokafka wraps a TLS alert read from a closed connection in a
    KafkaConnectionError whose cause is the SSLError."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
