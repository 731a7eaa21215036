from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2
import orjson
import pytest

from tests.helpers import (
    Broker,
    RunningServer,
    sample,
    sample_bytes,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "python" / "consumer.py"


@pytest.mark.kafka
def test_the_python_consumer_example_reads_a_case_history(
    server: RunningServer, broker: Broker, request: pytest.FixtureRequest
) -> None:
    settings = server.settings
    for kind in ("call", "waba_template", "chatbot"):
        assert (
            httpx2.post(f"{server.url}/webhooks/airudder", content=sample_bytes(kind)).status_code
            == 200
        )
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", settings.kafka_bootstrap_servers,
         "--case-id", "12345.0", "--prefix", settings.topic_prefix, "--idle", "1.5"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    by_type = {line["headers"]["notification-type"]: line["notification"] for line in lines}
    assert by_type == {kind: sample(kind) for kind in ("call", "waba_template", "chatbot")}
