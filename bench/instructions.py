"""Instructions per request, counted by valgrind's callgrind: unlike requests per second,
the same on a busy machine as on an idle one, so a change's effect shows even when it is
smaller than the machine's noise. The server runs under callgrind twice, once answering no
request and once answering `count`; the difference, divided by `count`, is what a request
costs (start-up, schema compilation and the idle loop cancel out)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import load
from bench.bodies import stream
from bridge.broker import EmbeddedBroker


def available() -> bool:
    return shutil.which("valgrind") is not None


def total(kind: str, body: str, broker: EmbeddedBroker, count: int, protocol: str = "") -> int:
    """Instructions the server process executed from start to exit, answering `count`
    (`protocol`: served by bench/serve.py with that HTTP protocol)."""
    from bench.__main__ import PATH, server  # noqa: PLC0415 - the harness imports this module

    with _callgrind() as (tool, log):
        with server(kind, broker, prefix=tool, body=body, protocol=protocol) as (port, _):
            if count:
                statuses = asyncio.run(
                    load.send("127.0.0.1", port, PATH, stream(body), count=count, concurrency=8)
                )
                if set(statuses) != {200}:
                    raise RuntimeError(f"under callgrind, answers {statuses}")
        return _collected(log)


@contextlib.contextmanager
def _callgrind() -> Iterator[tuple[tuple[str, ...], Path]]:
    """The command prefix that counts a process's instructions, and the log it writes."""
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as scratch:
        log = Path(scratch) / "valgrind.log"
        yield (
            ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log}"),
            log,
        )


def _collected(log: Path) -> int:
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"no count from callgrind: {log.read_text()[-500:]}")
    return int(found.group(1))


_STAGES = """
import sys
from bench.bodies import stream
from bridge.pipeline import Pipeline
from bridge.publish import MemoryPublisher
from bridge.settings import load_settings
pipeline = Pipeline(load_settings(allow_unauthenticated=True, spool_dir=""), MemoryPublisher())
bodies = stream(sys.argv[1])
for _ in range(int(sys.argv[2])):
    pipeline.prepare(next(bodies), "application/json", 0.0)
"""


def _counted(command: list[str]) -> int:
    with _callgrind() as (tool, log):
        subprocess.run([*tool, *command], check=True, capture_output=True)
        return _collected(log)


def stages(body: str, count: int = 1000) -> float:
    """Thousands of instructions of the pure stages (parse, map + encode, route) per body."""
    command = [sys.executable, "-c", _STAGES, body]
    return (_counted([*command, str(count)]) - _counted([*command, "0"])) / count / 1000


def per_request(
    kinds: list[str], bodies: list[str], broker: EmbeddedBroker, count: int = 400
) -> dict[tuple[str, str], float]:
    """Thousands of instructions per request, for each (kind, body)."""
    results = {}
    for kind in kinds:
        idle = total(kind, bodies[0], broker, 0)
        for body in bodies:
            results[kind, body] = (total(kind, body, broker, count) - idle) / count / 1000
    return results


def per_request_by_protocol(
    kind: str, body: str, broker: EmbeddedBroker, count: int = 400
) -> dict[str, float]:
    """Thousands of instructions per request of `kind`, with each HTTP protocol."""
    results = {}
    for protocol in ("uvicorn", "bridge"):
        idle = total(kind, body, broker, 0, protocol)
        results[protocol] = (total(kind, body, broker, count, protocol) - idle) / count / 1000
    return results
