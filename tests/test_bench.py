"""`make bench` is not part of the suite, but must keep running: the whole harness, briefly."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import benthos, instructions, load
from bench.__main__ import target_line
from bridge.devbrokers.launcher import kafka_missing


def test_percentiles_count_every_request() -> None:
    result = load.Result(1.0)
    result.latencies.extend([0.001] * 98 + [2.0, 3.0])  # the slow ones are not left out
    assert result.percentile(50) == 0.001
    assert result.percentile(99) == 3.0
    assert result.max == 3.0
    assert result.rate == 100


def test_targets_against_benthos_are_judged_on_the_median_round() -> None:
    rounds = [
        ({"rps": 100.0, "server_cpu_us": 400.0}, {"rps": r, "server_cpu_us": c})
        for r, c in ((110.0, 330.0), (130.0, 310.0), (125.0, 300.0))
    ]
    assert (
        target_line("example", rounds) == "| example | 1.25x | ≥ 1.2x: met | 0.78x | ≤ 0.8x: met |"
    )
    slower = [(theirs, {**ours, "server_cpu_us": 450.0}) for theirs, ours in rounds]
    assert target_line("small", slower) == "| small | 1.25x | - | 1.12x | ≤ 1.0x: NOT met |"


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
        "Ceiling, floor, Benthos and bridge",
        "half of the bridge",
        "HTTP protocol against uvicorn's",
        "Workers",
        "Overload",
    ):
        assert heading in text
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:]
        for line in text.splitlines()
        if line.startswith(("| bridge", "| ceiling, ", "| floor, ", "| benthos, ", "| Benthos "))
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
    if benthos.missing() is None:  # built from the Go module proxy, measured beside the bridge
        assert float(rows["benthos, small"][0].split()[0]) > 0
        assert rows["benthos, small"][4].strip() == "0"
        assert re.search(r"\*\*bridge ÷ Benthos, small\*\* \| \*\*\d+\.\d+x", text)
        assert re.search(
            r"\| small \| \d+\.\d+x \| - \| \d+\.\d+x \| ≤ 1\.0x: (met|NOT met) \|", text
        )
    else:
        assert "Benthos not measured: go not found" in text
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
        if benthos.missing() is None:
            assert rows["Benthos on Apache Kafka, small"][4].strip() == "0"
    else:
        assert "Not measured: " in text


def test_the_bridge_is_counted_with_its_event_ids_not_shared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Their follower works by the second: shared, a count would grow with the run's length.
    started: list[dict[str, str] | None] = []

    @contextlib.contextmanager
    def server(
        *_: object, extra: dict[str, str] | None = None, **__: object
    ) -> Iterator[tuple[int, int]]:
        started.append(extra)
        yield 0, 0

    log = tmp_path / "valgrind.log"
    log.write_text("==1== Collected : 1234\n")
    monkeypatch.setattr("bench.__main__.server", server)
    monkeypatch.setattr(instructions, "_callgrind", lambda: contextlib.nullcontext(((), log)))
    assert instructions.total("bridge", "small", None, 0) == 1234  # type: ignore[arg-type]
    assert started == [{"BRIDGE_DEDUP_SHARED": "false"}]


@pytest.mark.process
def test_the_app_counted_in_process_answers_every_request() -> None:
    # What `python -m bench.instructions app BODY` runs under callgrind, here without it: it
    # must serve (a 200 for each request) or its count would be of something else.
    script = subprocess.run(
        [sys.executable, "-c", instructions._APP, "small", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert script.returncode == 0, script.stderr[-2000:]
