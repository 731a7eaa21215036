"""`bridge dev`: a broker of its own (Tansu, embedded, by default; Apache Kafka's own with
`--broker kafka` where Java is installed), its topics, a token and a fresh spool, then serve."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from bridge.devbrokers.launcher import EmbeddedBroker, KafkaCluster, kafka_missing
from bridge.errors import BrokerUnavailable
from bridge.http.app import WEBHOOK_PATH
from bridge.http.ports import free_port
from bridge.http.supervisor import run
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.event_ids import ensure_topic, event_ids_topic
from bridge.notifications.routing import topics_of
from bridge.settings import Settings

# The sample the banner's curl posts: shipped in the wheel (pyproject's force-include), else
# the checkout's examples/.
_PACKAGED = Path(__file__).resolve().parent / "notifications" / "call.json"
_CHECKOUT = Path(__file__).resolve().parents[2] / "examples" / "notifications" / "call.json"
SAMPLE = _PACKAGED if _PACKAGED.is_file() else _CHECKOUT


@dataclass(frozen=True)
class DevBroker:
    bootstrap_servers: str
    log_path: Path
    description: str
    changes: dict[str, object]  # settings this broker needs


@contextlib.contextmanager
def started(kind: str) -> Iterator[DevBroker]:
    """The broker of `bridge dev`, stopped (and its data removed) at the end."""
    if kind == "kafka":
        missing = kafka_missing()
        if missing is not None:
            raise BrokerUnavailable(f"--broker kafka: {missing}; without it: --broker tansu")
        with KafkaCluster(1) as cluster:  # idempotence stays on, as in production
            yield DevBroker(
                cluster.bootstrap_servers,
                cluster.log_paths[0],
                f"Apache Kafka {cluster.version} (one node, KRaft, data in {cluster.directory})",
                {},
            )
        return
    with EmbeddedBroker() as tansu:
        yield DevBroker(
            tansu.bootstrap_servers,
            tansu.log_path,
            "embedded Kafka broker (Tansu, in memory)",
            # Tansu has no InitProducerId; production keeps idempotence on.
            {"kafka_enable_idempotence": False},
        )


def serve(settings: Settings, partitions: int, broker_kind: str = "tansu") -> int:
    """Serve against a broker started here; both stop on Ctrl-C."""
    with started(broker_kind) as broker:
        changes: dict[str, object] = {
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            **broker.changes,
        }
        if settings.port == 0:
            changes["port"] = free_port()
        if not settings.tokens and not settings.allow_unauthenticated:
            changes["auth_tokens"] = SecretStr(secrets.token_urlsafe(24))
        # Not set by the operator: the broker forgets all, so does the spool.
        if "spool_dir" not in settings.model_fields_set:
            changes["spool_dir"] = Path(tempfile.mkdtemp(prefix="bridge-dev-spool-"))
        settings = settings.model_copy(update=changes)
        asyncio.run(
            create_topics_and_wait(broker.bootstrap_servers, topics_of(settings), partitions)
        )
        asyncio.run(ensure_topic(settings, event_ids_topic(settings)))
        scheme = "https" if settings.tls_certfile else "http"
        token = settings.tokens[0] if settings.tokens else ""
        url = f"{scheme}://{settings.host}:{settings.port}{WEBHOOK_PATH}" + (
            f"/{token}" if token else ""
        )
        print(banner(settings, broker, url), flush=True)
        return run(settings)


def banner(settings: Settings, broker: DevBroker, url: str) -> str:
    sample = shlex.quote(str(SAMPLE))
    env = f"BRIDGE_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}"
    return "\n".join(
        [
            "",
            f"  Kafka broker           {broker.bootstrap_servers}  {broker.description}",
            f"  broker log             {broker.log_path}",
            f"  topics                 {', '.join(topics_of(settings))}",
            f"  webhook URL            {url}",
            "                         (the last segment is the token: keep the URL secret)",
            "",
            "  post the vendor's example:",
            "    curl -sS -X POST -H 'Content-Type: application/json' \\",
            f"      --data-binary @{sample} {url}",
            "",
            "  then read the case's history:",
            f"    {env} .venv/bin/bridge tail --case-id 12345.0 --from-beginning --until-idle 2",
            "",
        ]
    )
