"""`make bench`: the ceiling (a bare Starlette endpoint), the floor (parse + publish only) and
the bridge, end to end against the embedded broker, same server settings, bodies and
concurrency; repeated; results printed and written to bench/RESULTS.md. Every server is a
separate process, stopped at the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import uvloop

from bench import apache, benthos, instructions, load, shared_ids, stages
from bench.bodies import BODIES, stream
from bridge.devbrokers.launcher import EmbeddedBroker
from bridge.http.ports import free_port
from bridge.kafka.admin import create_topics_and_wait
from bridge.notifications.routing import all_topics
from bridge.settings import Settings
from bridge.state.spool import Spool

TOKEN = "bench-token"  # noqa: S105 - a benchmark, not a secret
PATH = f"/webhooks/airudder/{TOKEN}"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HISTORY = Path(__file__).resolve().parent / "HISTORY.md"
PARTITIONS = 12
FULL = Settings.model_fields["dedup_max_entries"].default  # event ids the bridge remembers


class Say(Protocol):
    def __call__(self, text: str = ...) -> None: ...


Rows = list[dict[str, float]]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def tree(pid: int) -> list[int]:
    """A process and its children (uvicorn's workers), whichever of its threads started them."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def listeners(port: int) -> int:
    """Sockets listening on the port (with SO_REUSEPORT, one per worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                count += state == "0A" and int(local.rpartition(":")[2], 16) == port
    return count


def wait_for_workers(port: int, workers: int, timeout: float = 60) -> None:
    """Every worker listening: connections made before would all go to the first ones."""
    deadline = time.monotonic() + timeout
    while listeners(port) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{listeners(port)} of {workers} workers listening")
        time.sleep(0.1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS: now, VmHWM: peak) of the process, or of
    its worst worker when it has some, in MB."""
    worst = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    worst = max(worst, float(line.split()[1]) / 1024)
    return worst


async def remembered_ids(directory: str, count: int, files: int) -> None:
    """Spool files (one per worker) that remember `count` event ids of the last minutes, as
    after a long run: each worker loads its file at start, its duplicate memory full."""
    spools = [Spool(Path(directory), 1024**3) for _ in range(files)]
    for spool in spools:
        await spool.open()  # each takes the next file, as the workers will
    first = int(time.time()) - count // 2000  # 2,000 a second, up to now
    for n, spool in enumerate(spools):
        for start in range(0, count, 50_000):
            ids = range(start, min(count, start + 50_000))
            rows = [(f"{n}:{i:032x}", float(first + i // 2000)) for i in ids]
            await spool.remember(rows, 0)
        await spool.close()


def remembering(port: int) -> float:
    """Event ids the server remembers (all workers), from its metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r"^bridge_dedup_event_ids (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A folder for one server's spool and log: removed once the server stopped cleanly (a
    run starts a dozen), kept and named when it did not."""
    folder = tempfile.mkdtemp(prefix="bench-spool-")
    try:
        yield folder
    except BaseException:
        print(f"the server's spool and log are kept in {folder}", file=sys.stderr)
        raise
    shutil.rmtree(folder, ignore_errors=True)


def command_and_env(  # noqa: PLR0913 - the knobs of one server, spelled out
    kind: str,
    broker: EmbeddedBroker,
    port: int,
    spool: str,
    *,
    workers: int,
    body: str,
    protocol: str,
    extra: dict[str, str] | None,
) -> tuple[list[str], dict[str, str]]:
    """How to start the server `server` describes, on `port` with its spool in `spool`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    if protocol:
        command = [sys.executable, "-m", "bench.serve", kind, protocol]
    elif kind == "ceiling":
        command = [sys.executable, "-m", "uvicorn", "bench.noop:create_app", "--factory"]
        command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
        command += ["--workers", str(workers)] if workers > 1 else []
    elif kind == "floor":
        command = [sys.executable, "-m", "uvicorn", "bench.floor:create_app", "--factory"]
        command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
        env.update(
            BENCH_FLOOR_KAFKA=broker.bootstrap_servers,
            BENCH_FLOOR_VALUE_BYTES=str(stages.record_bytes(body)),
        )
    elif kind == "benthos":
        idempotent = getattr(broker, "idempotence", False)  # as the bridge on the same broker
        command, env = benthos.command_and_env(
            port, broker.bootstrap_servers, idempotent=idempotent
        )
    else:
        command = [sys.executable, "-m", "bridge", "serve"]
    if kind == "bridge" or protocol:
        env.update(
            BRIDGE_PORT=str(port),
            BRIDGE_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            # On (Apache Kafka) or off (Tansu has no InitProducerId).
            BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=str(getattr(broker, "idempotence", False)).lower(),
            BRIDGE_TOPIC_PREFIX="bench.",
            BRIDGE_AUTH_TOKENS=TOKEN,
            BRIDGE_SPOOL_DIR=spool,
            BRIDGE_WORKERS=str(workers),
            BRIDGE_LOG_LEVEL="info",  # the production line per notification, to a file
            **(extra or {}),
        )
    return command, env


@contextlib.contextmanager
def server(  # noqa: PLR0913 - the knobs of one server, spelled out
    kind: str,
    broker: EmbeddedBroker,
    *,
    workers: int = 1,
    prefix: tuple[str, ...] = (),
    remembered: int = 0,
    body: str = "example",
    protocol: str = "",
    extra: dict[str, str] | None = None,
) -> Iterator[tuple[int, int]]:
    """A server process on a free port: `prefix` runs it under a tool (valgrind). `kind` is
    ceiling (bench/noop.py), floor (bench/floor.py, records as long as the bridge's for
    `body`), benthos (bench/benthos.py) or bridge. With `protocol` (bridge or uvicorn), the
    ceiling or the bridge is served by bench/serve.py with that HTTP protocol, all else as
    `bridge serve` does. `extra`: more settings."""
    port = free_port()
    with scratch() as spool:
        if remembered:
            asyncio.run(remembered_ids(spool, remembered, workers))
        command, env = command_and_env(
            kind, broker, port, spool, workers=workers, body=body, protocol=protocol, extra=extra
        )
        with (Path(spool) / "server.log").open("wb") as out:
            process = subprocess.Popen([*prefix, *command], env=env, stdout=out, stderr=out)
        try:
            wait_for_port(port, process, timeout=300 if prefix else 30)
            if kind == "bridge" and workers > 1:
                wait_for_workers(port, workers)
            if remembered and (held := remembering(port)) < remembered:  # the fullest worker
                raise RuntimeError(f"the server remembers {held:.0f} event ids")
            yield port, process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120 if prefix else 20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure(  # noqa: PLR0913 - the knobs of one run, spelled out
    kind: str,
    body: str,
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    *,
    workers: int = 1,
    rate: float | None = None,
    concurrency: int | None = None,
    seconds: float | None = None,
    protocol: str = "",
    extra: dict[str, str] | None = None,
    full: bool = True,
) -> dict[str, float]:
    # The bridge as after minutes at full rate: its duplicate memory full, so each stored id
    # makes it forget one (10 s runs from empty never got there). `full=False`: empty.
    remembered = FULL if kind == "bridge" and full else 0
    with server(
        kind,
        broker,
        workers=workers,
        remembered=remembered,
        body=body,
        protocol=protocol,
        extra=extra,
    ) as (port, pid):
        marks: list[tuple[float, float, float, float, float]] = []

        def mark() -> None:  # CPU used so far by the server, the broker and this process
            marks.append(
                (
                    cpu_seconds(tree(pid)),
                    cpu_seconds([broker.pid] if broker.pid else []),
                    time.process_time(),
                    time.monotonic(),
                    memory_mb(pid, "VmRSS"),
                )
            )

        result = asyncio.run(
            load.run(
                "127.0.0.1",
                port,
                PATH,
                stream(body),
                concurrency=concurrency or args.concurrency,
                seconds=seconds or args.seconds,
                warmup=args.warmup,
                rate=rate,
                mark=mark,
            )
        )
        mark()
        row = load.summary(result)
        row["rss_mb"] = memory_mb(pid, "VmHWM")
        (server0, broker0, self0, wall0, rss0), (server1, broker1, self1, wall1, rss1) = marks
        row["rss_start_mb"], row["rss_end_mb"] = rss0, rss1
        row["server_cpu_us"] = (server1 - server0) / max(1, result.requests) * 1e6
        wall = wall1 - wall0
        row["cores_server"] = (server1 - server0) / wall
        row["cores_broker"] = (broker1 - broker0) / wall
        row["cores_load"] = (self1 - self0) / wall
    return row


def median_and_spread(rows: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in rows]
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.0f}"
    return f"{middle:.0f} ({min(values):.0f}-{max(values):.0f})"


def line(label: str, rows: list[dict[str, float]]) -> str:
    return (
        f"| {label} | {median_and_spread(rows, 'rps')} | {median_and_spread(rows, 'p50_ms')} | "
        f"{median_and_spread(rows, 'p99_ms')} | {median_and_spread(rows, 'max_ms')} | "
        f"{sum(r['errors'] for r in rows):.0f} | {max(r['rss_mb'] for r in rows):.0f} | "
        f"{median_and_spread(rows, 'server_cpu_us')} |"
    )


def cores(rows: list[dict[str, float]]) -> str:
    """Where the machine's cores went during the measured time (medians)."""
    used = {
        k: statistics.median(r[f"cores_{k}"] for r in rows) for k in ("server", "broker", "load")
    }
    return (
        f"cores busy: server {used['server']:.2f}, broker {used['broker']:.2f}, "
        f"load generator {used['load']:.2f} (of {os.cpu_count()})"
    )


def pair_ratios(values: list[float]) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.0%}"
    return f"{middle:.0%} ({min(values):.0%}-{max(values):.0%})"


def times(values: list[float]) -> str:
    """Ratios as a median and a spread, in times (1.20x)."""
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.2f}x"
    return f"{middle:.2f}x ({min(values):.2f}-{max(values):.2f})"


TARGETS = {"example": (1.2, 0.8)}  # body: (req/s at least, CPU at most), times Benthos's


def to_benthos(body: str, theirs: Rows, ours: Rows, say: Say) -> str:
    """The bridge's rate and CPU per request over Benthos's, round by round, as a row of the
    table; returned: the row of the targets' table."""
    pairs = list(zip(theirs, ours, strict=True))
    speed = times([b["rps"] / a["rps"] for a, b in pairs])
    cpu = times([b["server_cpu_us"] / a["server_cpu_us"] for a, b in pairs])
    say(f"| **bridge ÷ Benthos, {body}** | **{speed}** | | | | | | **{cpu}** |")
    return target_line(body, pairs)


def target_line(body: str, pairs: list[tuple[dict[str, float], dict[str, float]]]) -> str:
    """One body's ratios to Benthos against issue 22's targets."""
    speed = statistics.median(ours["rps"] / theirs["rps"] for theirs, ours in pairs)
    cpu = statistics.median(
        ours["server_cpu_us"] / theirs["server_cpu_us"] for theirs, ours in pairs
    )
    least, most = TARGETS.get(body, (None, 1.0))
    rate_target = (
        "-" if least is None else f"≥ {least:.1f}x: {'met' if speed >= least else 'NOT met'}"
    )
    cpu_target = f"≤ {most:.1f}x: {'met' if cpu <= most else 'NOT met'}"
    return f"| {body} | {speed:.2f}x | {rate_target} | {cpu:.2f}x | {cpu_target} |"


def protocol_cost(args: argparse.Namespace, broker: EmbeddedBroker, say: Say) -> None:
    """bridge's HTTP protocol against uvicorn's own, under the ceiling and under the bridge:
    both served by bench/serve.py, nothing else different. Each repeat measures a pair back to
    back, the order alternating, so a drift of the shared machine falls on both."""
    first = args.bodies.split(",")[0]
    say(f"## bridge's HTTP protocol against uvicorn's ({first} body)\n")
    say(
        "The connection deadlines and limits of bridge/http/protocol.py, against uvicorn's "
        "httptools "
        "protocol as bridge used it before; same configuration otherwise (bench/serve.py). "
        "Ratios are bridge's protocol ÷ uvicorn's, per pair measured back to back: the median "
        "(min-max). Above 100% for CPU per request means the protocol costs more. The "
        "bridge's duplicate memory starts empty here (quicker to start; the protocol's cost "
        "does not depend on it).\n"
    )
    say("| run | req/s | p50 ms | p99 ms | max ms | errors | peak RSS MB | server CPU µs/req |")
    say("|---|---|---|---|---|---|---|---|")
    for kind in ("ceiling", "bridge"):
        rows: dict[str, list[dict[str, float]]] = {"uvicorn": [], "bridge": []}
        for n in range(args.repeat):
            for protocol in ("uvicorn", "bridge") if n % 2 == 0 else ("bridge", "uvicorn"):
                rows[protocol].append(
                    measure(kind, first, broker, args, protocol=protocol, full=False)
                )
        for protocol, runs in rows.items():
            say(line(f"{kind}, {protocol}'s protocol", runs))
        pairs = list(zip(rows["uvicorn"], rows["bridge"], strict=True))
        rate = pair_ratios([ours["rps"] / theirs["rps"] for theirs, ours in pairs])
        cpu = pair_ratios(
            [ours["server_cpu_us"] / theirs["server_cpu_us"] for theirs, ours in pairs]
        )
        say(f"| **{kind}: bridge's ÷ uvicorn's protocol** | **{rate}** | | | | | | **{cpu}** |")
    say()
    if args.instructions and instructions.available():
        say(
            f"Instructions per request (callgrind, {args.instructions} requests; the same on a "
            "busy machine as on an idle one):\n"
        )
        say("| server | uvicorn's protocol | bridge's protocol | bridge's ÷ uvicorn's |")
        say("|---|---|---|---|")
        for kind in ("ceiling", "bridge"):
            counts = instructions.per_request_by_protocol(kind, first, broker, args.instructions)
            theirs, ours = counts["uvicorn"], counts["bridge"]
            say(f"| {kind} | {theirs:,.0f}k | {ours:,.0f}k | {ours / theirs:.1%} |")
        say()


def instruction_counts(args: argparse.Namespace, broker: EmbeddedBroker, say: Say) -> None:
    bodies = args.bodies.split(",")
    say(f"## Instructions per request (callgrind, {args.instructions} requests per body)\n")
    say(
        "Counted by valgrind, not timed: the same on a busy machine as on an idle one. "
        "Thousands of instructions the server process executes per request (start-up "
        "subtracted). The bridge with its event ids not shared (their follower works by the "
        "second, not by the request); their cost is under 'Sharing the event ids' above.\n"
    )
    say(
        "| body | ceiling (HTTP) | floor (parse + publish) | bridge | of which the stages "
        "(parse, map + encode, route) | the rest (Kafka client, pipeline, log line, metrics) "
        "| ratio of rates it implies: ceiling ÷ floor | ceiling ÷ bridge |"
    )
    say("|---|---|---|---|---|---|---|---|")
    kinds = ["ceiling", "floor", "bridge"]
    counts = instructions.per_request(kinds, bodies, broker, args.instructions)
    for body in bodies:
        ceiling, floor, bridge = (counts[kind, body] for kind in kinds)
        alone = instructions.stages(body)
        say(
            f"| {body} | {ceiling:,.0f}k | {floor:,.0f}k | {bridge:,.0f}k | {alone:,.0f}k | "
            f"{bridge - ceiling - alone:,.0f}k | {ceiling / floor:.0%} | {ceiling / bridge:.0%} |"
        )
    say()


def side_by_side(
    args: argparse.Namespace, broker: EmbeddedBroker, say: Say
) -> tuple[dict[str, float], dict[str, Rows]]:
    """The contestants on each body, interleaved; the bridge's median rate and runs per body."""
    contestants = ["ceiling", "floor", "bridge"]
    if (no_benthos := benthos.missing()) is None:
        benthos.binary()  # built before the first run (minutes, once per version)
        contestants.insert(2, "benthos")
    say("## Ceiling, floor, Benthos and bridge, one worker\n")
    say(
        "Closed loop, every request counted (slow ones included). Median of the runs, "
        "(min-max) after it; the runs interleaved (one of each, the order reversed every "
        "other round), so a drift of the shared machine falls on all alike. The ceiling "
        "reads the body and answers `{}`; the floor (bench/floor.py) only parses the body "
        "with orjson and publishes one record of the bridge's length with aiokafka, "
        "acks=all: no implementation on these parts can be faster. Benthos "
        f"{benthos.VERSION} (bench/benthos/config.yaml: JSON stored as posted, acks=all, "
        "200 once acknowledged) on one core (GOMAXPROCS=1), as the bridge's one worker; "
        "its CPU is its whole process's. Ratios to Benthos: per round, bridge ÷ Benthos, "
        "the median (min-max).\n"
    )
    if no_benthos is not None:
        say(f"Benthos not measured: {no_benthos}.\n")
    say("| run | req/s | p50 ms | p99 ms | max ms | errors | peak RSS MB | server CPU µs/req |")
    say("|---|---|---|---|---|---|---|---|")
    best: dict[str, float] = {}
    ones: dict[str, list[dict[str, float]]] = {}
    against: list[str] = []
    for body in args.bodies.split(","):
        rows: dict[str, Rows] = {kind: [] for kind in contestants}
        for n in range(args.repeat):
            for kind in contestants if n % 2 == 0 else contestants[::-1]:
                rows[kind].append(measure(kind, body, broker, args))
        rate = {kind: statistics.median(r["rps"] for r in runs) for kind, runs in rows.items()}
        for kind, runs in rows.items():
            say(line(f"{kind}, {body}", runs))
        for upper, lower in (("bridge", "ceiling"), ("floor", "ceiling"), ("bridge", "floor")):
            ratio = rate[upper] / rate[lower]
            say(f"| **{upper} / {lower}, {body}** | **{ratio:.0%}** | | | | | | |")
        if "benthos" in rows:
            against.append(to_benthos(body, rows["benthos"], rows["bridge"], say))
        best[body] = rate["bridge"]
        ones[body] = rows["bridge"]
    say()
    targets(against, say)
    return best, ones


def targets(against: list[str], say: Say) -> None:
    """The table of issue 22's targets, when Benthos was measured."""
    if against:
        say(
            "Against Benthos (issue 22's targets: CPU per request at most 0.8x Benthos's on "
            "the example body and 1.0x on the others; req/s at least 1.2x on the example "
            "body; medians of the per-round ratios):\n"
        )
        say("| body | req/s, bridge ÷ Benthos | target | CPU µs/req, bridge ÷ Benthos | target |")
        say("|---|---|---|---|---|")
        for text in against:
            say(text)
        say()


def main() -> None:  # noqa: PLR0915 - a script, read top to bottom
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time first")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="connections")
    parser.add_argument(
        "--stage-calls",
        type=int,
        default=2000,
        help="calls per timing of each pure stage (best of 5 timings)",
    )
    parser.add_argument("--bodies", default=",".join(BODIES), help="example,small,mix")
    parser.add_argument(
        "--soak", type=float, default=60.0, help="seconds at half rate, once (0: skip)"
    )
    parser.add_argument("--output", type=Path, help="default: bench/RESULTS.md (all only)")
    parser.add_argument(
        "--only",
        choices=["all", "protocol"],
        default="all",
        help="protocol: only bridge's HTTP protocol against uvicorn's, printed",
    )
    parser.add_argument(
        "--apache-kafka",
        choices=["auto", "on", "off"],
        default="auto",
        help="also measure the bridge on Apache Kafka (auto: when Java is installed)",
    )
    parser.add_argument(
        "--instructions",
        type=int,
        default=400,
        help="requests per body counted under callgrind (0: skip; needs valgrind)",
    )
    args = parser.parse_args()
    uvloop.install()
    out: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    say(
        f"# Benchmark results\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `make bench` "
        f"(`python -m bench --seconds {args.seconds:g} --warmup {args.warmup:g} "
        f"--repeat {args.repeat} --concurrency {args.concurrency}`)\n"
    )
    say(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}. The load generator "
        "(bench/load.py, asyncio + uvloop), the embedded broker and the server share the "
        f"machine. Topics have {PARTITIONS} partitions; bodies carry 10,000 distinct case ids and "
        "a new event id each (no duplicates). Each bridge starts with its duplicate memory "
        f"full ({FULL:,} event ids of a long run, loaded from its spool file), as a service "
        "that has run at full rate for minutes: each id it stores makes it forget one.\n"
    )
    if args.only == "protocol":
        with EmbeddedBroker() as broker:
            asyncio.run(
                create_topics_and_wait(broker.bootstrap_servers, all_topics("bench."), PARTITIONS)
            )
            protocol_cost(args, broker, say)
        if args.output:
            args.output.write_text("\n".join(out) + "\n")
        return
    say(f"## Pure stages, per body (µs, best of 5 timings of {args.stage_calls:,} calls)\n")
    say(stages.report(stages.measure(args.stage_calls)))
    say()
    with EmbeddedBroker() as broker:
        asyncio.run(
            create_topics_and_wait(broker.bootstrap_servers, all_topics("bench."), PARTITIONS)
        )
        best, ones = side_by_side(args, broker, say)
        first = args.bodies.split(",")[0]
        half = best[first] / 2
        say(
            f"## At half of the bridge's maximum rate ({first} body, {half:.0f} req/s, open loop)\n"
        )
        say("Latency counted from when each request was due, so queueing is not hidden.\n")
        say(
            "| run | req/s | p50 ms | p99 ms | max ms | errors | peak RSS MB "
            "| server CPU µs/req | over 1 s |"
        )
        say("|---|---|---|---|---|---|---|---|---|")
        halves = [
            measure("bridge", first, broker, args, rate=half, concurrency=64)
            for _ in range(args.repeat)
        ]
        say(line("bridge, half rate", halves)[:-1] + f"| {sum(r['over_1s'] for r in halves):.0f} |")
        say()
        if args.soak:
            soak = measure(
                "bridge", first, broker, args, rate=half, concurrency=64, seconds=args.soak
            )
            say(
                f"Held for {args.soak:g} s (one run): p99 {soak['p99_ms']:.0f} ms, max "
                f"{soak['max_ms']:.0f} ms, {soak['over_1s']:.0f} over 1 s, "
                f"{soak['errors']:.0f} errors; "
                f"resident memory {soak['rss_start_mb']:.0f} MB after the warm-up, "
                f"{soak['rss_end_mb']:.0f} MB at the end.\n"
            )
        protocol_cost(args, broker, say)
        say(f"## Workers ({first} body)\n")
        say(
            "| run | req/s | p50 ms | p99 ms | max ms | errors | peak RSS MB (worst worker) "
            "| server CPU µs/req |"
        )
        say("|---|---|---|---|---|---|---|---|")
        two = [measure("bridge", first, broker, args, workers=2) for _ in range(args.repeat)]
        say(line("bridge, 1 worker", ones[first]))
        say(line("bridge, 2 workers", two))
        scale = statistics.median(r["rps"] for r in two) / best[first]
        say(f"| **2 workers / 1 worker** | **{scale:.2f}x** | | | | | | |")
        say()
        say(f"One worker, {cores(ones[first])}. Two workers, {cores(two)}.\n")
        say("Both with the event ids shared through their topic (BRIDGE_DEDUP_SHARED).\n")
        say("## Sharing the event ids (bench/shared_ids.py)\n")
        say(shared_ids.report(asyncio.run(shared_ids.measure(broker.bootstrap_servers))) + "\n")
        say(f"## Overload ({first} body, 1,024 connections: beyond BRIDGE_MAX_IN_FLIGHT=512)\n")
        say(
            "| run | req/s | p50 ms | p99 ms | max ms | errors (503 by design) | peak RSS MB "
            "| server CPU µs/req |"
        )
        say("|---|---|---|---|---|---|---|---|")
        # The load generator's one address stands for many clients here.
        many = {"BRIDGE_MAX_CONNECTIONS_PER_ADDRESS": "0"}
        over = [measure("bridge", first, broker, args, concurrency=1024, extra=many)]
        say(line("bridge, overload", over))
        say()
        if args.instructions and instructions.available():
            instruction_counts(args, broker, say)
        if apache.wanted(args.apache_kafka, say):
            apache.section(args, broker, measure, line, say, PARTITIONS)
    output = args.output or RESULTS
    output.write_text("\n".join(out) + "\n\n" + HISTORY.read_text())
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
