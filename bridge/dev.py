"""`bridge dev`: an embedded broker, its topics, a token and a fresh spool, then serve."""

from __future__ import annotations

import asyncio
import secrets
import shlex
import tempfile
from pathlib import Path

from pydantic import SecretStr

from bridge.app import WEBHOOK_PATH
from bridge.broker import EmbeddedBroker, create_topics, free_port
from bridge.event_ids import ensure_topic, event_ids_topic
from bridge.routing import all_topics
from bridge.settings import Settings
from bridge.supervisor import run

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notifications" / "call.json"


def serve(settings: Settings, partitions: int) -> int:
    """Serve against a broker started here; both stop on Ctrl-C."""
    with EmbeddedBroker() as broker:
        changes: dict[str, object] = {
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            # The embedded broker has no InitProducerId; production keeps idempotence on.
            "kafka_enable_idempotence": False,
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
            create_topics(broker.bootstrap_servers, all_topics(settings.topic_prefix), partitions)
        )
        asyncio.run(ensure_topic(settings, event_ids_topic(settings)))
        scheme = "https" if settings.tls_certfile else "http"
        token = settings.tokens[0] if settings.tokens else ""
        url = f"{scheme}://{settings.host}:{settings.port}{WEBHOOK_PATH}" + (
            f"/{token}" if token else ""
        )
        print(banner(settings, broker, url), flush=True)
        return run(settings)


def banner(settings: Settings, broker: EmbeddedBroker, url: str) -> str:
    sample = shlex.quote(str(SAMPLE))
    env = f"BRIDGE_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}"
    return "\n".join(
        [
            "",
            f"  embedded Kafka broker  {broker.bootstrap_servers}  (in memory)",
            f"  broker log             {broker.log_path}",
            f"  topics                 {', '.join(all_topics(settings.topic_prefix))}",
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
