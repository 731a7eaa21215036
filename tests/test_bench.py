"""`make bench` is not part of the suite, but must keep running: the whole harness, briefly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load
from bridge.devbrokers.launcher import kafka_missing


def test_percentiles_count_every_request() -> None:
    result = load.Result(1.0)
    result.latencies.extend([0.001] * 98 + [2.0, 3.0])  # the slow ones are not left out
    assert result.percentile(50) == 0.001
    assert result.percentile(99) == 3.0
    assert result.max == 3.0
    assert result.rate == 100


@pytest.mark.apache
@pytest.mark.timeout(480)  # a dozen servers and a run on Apache Kafka, on two shared cores
def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", "bench", "--seconds", "0.5", "--warmup", "0.2"]
    command += ["--repeat", "1", "--bodies", "small", "--instructions", "0", "--soak", "1"]
    command += ["--stage-calls", "20"]  # the timings of the pure stages: a third of the run
    subprocess.run([*command, "--output", str(output)], check=True, capture_output=True)
    text = output.read_text()
    for heading in (
        "Pure stages, per body (µs, best of 5 timings of 20 calls)",
        "Ceiling, floor and bridge",
        "half of the bridge",
        "HTTP protocol against uvicorn's",
        "Workers",
        "Overload",
    ):
        assert heading in text
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:]
        for line in text.splitlines()
        if line.startswith(("| bridge", "| ceiling, ", "| floor, "))
    }
    for label in (
        "ceiling, small",
        "floor, small",
        "bridge, small",
        "bridge, half rate",
        "bridge, 2 workers",
    ):
        requests_per_second, errors = float(rows[label][0].split()[0]), rows[label][4].strip()
        assert requests_per_second > 0
        assert errors == "0", label
    assert "bridge, overload" in rows
    for kind in ("ceiling", "bridge"):
        for protocol in ("uvicorn's", "bridge's"):
            assert rows[f"{kind}, {protocol} protocol"][4].strip() == "0"
        assert re.search(rf"\*\*{kind}: bridge's ÷ uvicorn's protocol\*\* \| \*\*\d+%", text)
    assert re.search(r"Held for 1 s .* 0 errors; resident memory \d+ MB after", text)
    assert "duplicate memory full (170,000 event ids" in text
    assert re.search(r"\*\*2 workers / 1 worker\*\* \| \*\*\d+\.\d+x\*\*", text)
    assert "What each change bought" in text  # the history follows the tables
    if kafka_missing() is None:  # beside Tansu, on Apache Kafka with idempotence on
        assert "The bridge on Apache Kafka (one node, idempotence on)" in text
        kafka = rows["bridge on Apache Kafka, small"]
        assert float(kafka[0].split()[0]) > 0
        assert kafka[4].strip() == "0"
        assert re.search(r"Apache Kafka / Tansu, req/s: small: \d+%", text)
    else:
        assert "Not measured: " in text
