"""Instructions per request, counted by valgrind's callgrind: unlike requests per second,
the same on a busy machine as on an idle one, so a change's effect shows even when it is
smaller than the machine's noise. The server runs under callgrind twice, once answering no
request and once answering `count`; the difference, divided by `count`, is what a request
costs (start-up, schema compilation and the idle loop cancel out)."""

from __future__ import annotations

import argparse
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
from bench.bodies import BODIES, stream
from bridge.devbrokers.launcher import EmbeddedBroker
from bridge.kafka.admin import create_topics_and_wait
from bridge.notifications.routing import all_topics

UNSHARED = {"BRIDGE_DEDUP_SHARED": "false"}


def available() -> bool:
    return shutil.which("valgrind") is not None


def total(  # noqa: PLR0913 - the knobs of one count, spelled out
    kind: str,
    body: str,
    broker: EmbeddedBroker,
    count: int,
    protocol: str = "",
    *,
    remembered: int = 0,
) -> int:
    """Instructions the server process executed from start to exit, answering `count`
    (`protocol`: served by bench/serve.py with that HTTP protocol; `remembered`: event ids the
    bridge starts with in its duplicate memory). The bridge runs with its event ids not shared:
    their follower works by the second (about 5 million instructions a second under callgrind),
    not by the request, and runs under callgrind last minutes of varying length, so it would
    weigh on each request by the run's duration (2026-12-06: 71k to 3,700k a request on the
    same code). What sharing costs a notification is measured on its own (bench/shared_ids.py)."""
    from bench.__main__ import PATH, server  # noqa: PLC0415 - the harness imports this module

    with _callgrind() as (tool, log):
        with server(
            kind,
            broker,
            prefix=tool,
            body=body,
            protocol=protocol,
            remembered=remembered,
            extra=UNSHARED,
        ) as (port, _):
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
from bridge.container import build_pipeline
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import load_settings
settings = load_settings(allow_unauthenticated=True, spool_dir="")
pipeline = build_pipeline(settings, MemoryPublisher())
bodies = stream(sys.argv[1])
for _ in range(int(sys.argv[2])):
    pipeline.prepare(next(bodies), "application/json", 0.0)
"""


# The service's ASGI app driven in process (no sockets, no HTTP parsing) with an in-memory
# publisher: what bridge does around the HTTP server and the Kafka client, the log line and
# the spool's file included. A request is counted from its scope to its answer.
_APP = """
import asyncio, os, sys, tempfile
import uvloop
from bench.bodies import stream
from bridge.http.app import create_app
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import load_settings
from bridge.telemetry.logs import configure_logging

async def main(body_kind, count, spool):
    settings = load_settings(auth_tokens="t", spool_dir=spool, log_level="info")
    configure_logging(settings, json=True)
    publisher = MemoryPublisher()
    app = create_app(settings, publisher)
    bodies = stream(body_kind)
    async with app.router.lifespan_context(app) as state:
        for n in range(300 + count):  # a warm-up first, in both counts
            body = next(bodies)
            answers = []
            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}
            async def send(message):
                answers.append(message)
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "POST", "scheme": "http", "path": "/webhooks/airudder/t",
                "raw_path": b"/webhooks/airudder/t", "query_string": b"", "root_path": "",
                "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8080),
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())],
                "state": dict(state),
            }
            await app(scope, receive, send)
            assert answers[0]["status"] == 200, answers
            if n % 1000 == 999:
                publisher.topics.clear()

sys.stderr = open(os.devnull, "w")  # the log lines: written, then thrown away
with tempfile.TemporaryDirectory(prefix="bench-app-") as spool:
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), spool))
"""


def _counted(command: list[str]) -> int:
    with _callgrind() as (tool, log):
        subprocess.run([*tool, *command], check=True, capture_output=True)
        return _collected(log)


def stages(body: str, count: int = 1000) -> float:
    """Thousands of instructions of the pure stages (parse, map + encode, route) per body."""
    command = [sys.executable, "-c", _STAGES, body]
    return (_counted([*command, str(count)]) - _counted([*command, "0"])) / count / 1000


def app(body: str, count: int = 1000) -> float:
    """Thousands of instructions per request of the service's ASGI app in process, with an
    in-memory publisher (no HTTP server, no Kafka client: `per_request` counts those too)."""
    command = [sys.executable, "-c", _APP, body]
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


def main() -> None:
    """`python -m bench.instructions KIND BODY`: one count, e.g. before and after a change
    (`app`: the ASGI app alone, in process, `--count` 1000 a good size).
    With the event ids shared, the bridge also works per second (its follower fetches the
    event-ids topic about ten times a second, some 5 million instructions a second under
    callgrind against under 1 million without): a run slowed by a busy machine counts more of
    it per request, so compare counts of runs that took about as long."""
    from bench.__main__ import FULL, PARTITIONS  # noqa: PLC0415 - the harness imports this module

    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument(
        "kind",
        choices=["ceiling", "floor", "bridge", "app"],
        help="app: the bridge's ASGI app in process, in-memory publisher (a minute, no broker)",
    )
    parser.add_argument("body", choices=BODIES)
    parser.add_argument("--count", type=int, default=300, help="requests counted")
    parser.add_argument(
        "--full", action="store_true", help="the bridge's duplicate memory full, as make bench"
    )
    args = parser.parse_args()
    if args.kind == "app":
        print(f"app, {args.body}: {app(args.body, args.count):,.0f}k instructions a request")
        return
    remembered = FULL if args.full and args.kind == "bridge" else 0
    with EmbeddedBroker() as broker:
        asyncio.run(
            create_topics_and_wait(broker.bootstrap_servers, all_topics("bench."), PARTITIONS)
        )
        idle = total(args.kind, args.body, broker, 0, remembered=remembered)
        busy = total(args.kind, args.body, broker, args.count, remembered=remembered)
    per_request = (busy - idle) / args.count / 1000
    print(f"{args.kind}, {args.body}: {per_request:,.0f}k instructions a request")


if __name__ == "__main__":
    main()
