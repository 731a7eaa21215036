"""The `bridge` command: serve, dev, tail, version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn._types import ASGIApplication
from uvicorn.config import STARTUP_FAILURE  # a worker that could not start

from bridge import __version__, replay, schema_tools
from bridge.app import WEBHOOK_PATH
from bridge.auth import require_credentials
from bridge.broker import EmbeddedBroker, create_topics, free_port
from bridge.compat import LEVELS
from bridge.errors import BridgeError, ConfigError
from bridge.logs import configure_logging, dict_config
from bridge.metrics import MULTIPROCESS_DIR
from bridge.parse import TYPES
from bridge.protocol import BridgeProtocol
from bridge.publish import KafkaPublisher
from bridge.registry import SchemaRegistry, resolve_ids
from bridge.routing import DLQ, all_topics
from bridge.schemas import load_schemas
from bridge.settings import Settings, load_settings
from bridge.tail import TailOptions, tail

APP = "bridge.app:create_app"
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notifications" / "call.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="AIRudder webhook notifications to typed Avro records on Kafka. "
        "Settings come from BRIDGE_* environment variables (see README).",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service against the configured Kafka")
    serve.set_defaults(run=_serve)

    dev = commands.add_parser(
        "dev", help="start an embedded broker, create the topics and serve (Ctrl-C stops both)"
    )
    dev.add_argument("--partitions", type=int, default=3, help="partitions per topic (3)")
    dev.set_defaults(run=_dev)

    tail_ = commands.add_parser("tail", help="print the records in the topics")
    tail_.add_argument(
        "--type",
        dest="types",
        action="append",
        choices=[*TYPES, DLQ],
        help="topic to read, repeatable (default: all four)",
    )
    tail_.add_argument("--case-id", help="only this case's records, in order")
    tail_.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the end"
    )
    tail_.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="exit after SECONDS with nothing new (default: follow forever)",
    )
    tail_.add_argument(
        "--format",
        choices=["json", "pretty"],
        default="json",
        help="json: one JSON document per line; pretty: a readable timeline",
    )
    tail_.set_defaults(run=_tail)

    schemas = commands.add_parser(
        "schemas", help="list, check, register or snapshot the Avro schemas (for CI/CD)"
    )
    schema_commands = schemas.add_subparsers(required=True, metavar="ACTION")
    listing = schema_commands.add_parser(
        "list", help="each type's schema, subject, fingerprint and registry id"
    )
    listing.add_argument("--format", choices=["table", "json"], default="table")
    listing.set_defaults(run=_schemas_list)
    check = schema_commands.add_parser(
        "check",
        help="check compatibility against avro/history/ and the registry's latest version; "
        "exit 1 naming the field when incompatible",
    )
    check.add_argument(
        "--level",
        choices=list(LEVELS),
        help="compatibility level (default: BRIDGE_SCHEMA_COMPATIBILITY, BACKWARD)",
    )
    check.add_argument(
        "--schema-dir", type=Path, help="the schemas to check (default: the avro/ folder)"
    )
    check.set_defaults(run=_schemas_check)
    register = schema_commands.add_parser(
        "register", help="register the current schemas under their subjects"
    )
    register.set_defaults(run=_schemas_register)
    keep = schema_commands.add_parser(
        "snapshot", help="keep each changed schema as the next version in avro/history/"
    )
    keep.add_argument("--schema-dir", type=Path, help="default: the avro/ folder")
    keep.set_defaults(run=_schemas_snapshot)

    replay_ = commands.add_parser(
        "replay",
        help="re-send archived notifications (JSON lines or a JSON array) to a bridge URL or "
        "straight to Kafka, duplicates suppressed by event id",
    )
    replay_.add_argument("file", type=Path, help="the archive: JSON lines, or a JSON array")
    target = replay_.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a bridge's webhook URL (with the token as last segment)")
    target.add_argument(
        "--kafka",
        action="store_true",
        help="publish straight to the Kafka in BRIDGE_KAFKA_BOOTSTRAP_SERVERS",
    )
    replay_.add_argument("--token", help="send the token as a bearer token instead")
    replay_.add_argument("--concurrency", type=int, default=4, help="requests at once (4)")
    replay_.set_defaults(run=_replay)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=lambda _: print(f"bridge {__version__}") or 0)
    return parser


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings)


def _serve(_: argparse.Namespace) -> int:
    settings = load_settings()
    require_credentials(settings)
    _configure_logging(settings)
    asyncio.run(_preflight(settings))
    return _run_server(settings)


async def _preflight(settings: Settings) -> None:
    """Fail at start, with one clear line, when Kafka or the schema registry is not right."""
    if settings.schema_registry_url:
        registry = SchemaRegistry(settings)
        try:
            # Only the ids: the app resolves them again, in each worker, when it starts.
            await resolve_ids(registry, settings, load_schemas())
        finally:
            await registry.close()
    publisher = KafkaPublisher(settings)
    await publisher.start()
    await publisher.stop(timeout=5.0)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, heartbeat: ctypes.c_double | None = None) -> None:
        super().__init__(config)
        self.heartbeat = heartbeat

    async def on_tick(self, counter: int) -> bool:
        # Ten times a second, on the event loop: a supervisor that sees no beat knows the loop
        # is stuck, not just busy.
        if self.heartbeat is not None:
            self.heartbeat.value = time.monotonic()
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # SIGTERM/SIGINT asked for a graceful stop, which is done: exit 0 instead of
            # re-raising the signal as uvicorn does (orchestrators read that as a crash).
            self._captured_signals.clear()


def server_config(settings: Settings, app: ASGIApplication | str = APP) -> uvicorn.Config:
    """How bridge runs under uvicorn; tests run the same configuration."""
    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=settings.host,
        port=settings.port,
        # One process: logging configured by `bridge serve` itself; several: by uvicorn in
        # each worker, from the same configuration.
        log_config=dict_config(settings) if settings.workers > 1 else None,
        # Our own line per notification replaces the access log: no bodies, no secrets.
        access_log=False,
        lifespan="on",
        # Requests in flight are done (stored or spooled) within the ack budget.
        timeout_graceful_shutdown=math.ceil(settings.ack_timeout) + 2,
        # Deadlines and limits on each connection, BRIDGE_MAX_CONNECTIONS among them.
        http=BridgeProtocol,
        timeout_keep_alive=settings.keep_alive_timeout,
        ws="none",  # no websocket routes; an upgraded connection would escape the deadlines
        server_header=False,
        # X-Forwarded-For is read by bridge itself, from BRIDGE_TRUSTED_PROXIES only.
        proxy_headers=False,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )


def _run_server(settings: Settings) -> int:
    config = server_config(settings)
    if settings.workers == 1:
        _Server(config).run()
        return 0
    # Several processes, each building its own app (and taking its own spool file); metrics
    # added up across them.
    os.environ.setdefault(MULTIPROCESS_DIR, tempfile.mkdtemp(prefix="bridge-metrics-"))
    if config.port == 0:  # one port for all: chosen here
        config.port = free_port()
    return _supervise(config, settings.workers, settings.worker_timeout)


lifecycle = logging.getLogger("bridge.lifecycle")
FIRST_DELAY, LAST_DELAY = 0.5, 30.0  # seconds before a dead worker's replacement starts
STABLE_AFTER = 60.0  # a worker that ran this long before it died is replaced at once


def restart_delay(previous: float, lived: float) -> float:
    """Seconds to wait before replacing a worker that died after `lived` seconds: at once
    after a long life, else twice the previous wait (a worker that keeps crashing at start
    would otherwise be replaced, and crash, twice a second)."""
    if lived >= STABLE_AFTER:
        return 0.0
    return min(LAST_DELAY, max(FIRST_DELAY, previous * 2))


class _Worker:
    """One worker slot: its process, when it started, and the heartbeat its event loop writes."""

    def __init__(self, index: int, config: uvicorn.Config) -> None:
        self.index, self.config = index, config
        self.delay = 0.0
        self.due: float | None = None  # when a dead worker's replacement starts
        self.start()

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.heartbeat = context.Value("d", 0.0, lock=False)
        self.process = context.Process(
            target=_worker, args=(self.config, self.heartbeat), name=f"bridge-worker-{self.index}"
        )
        self.process.start()
        self.started, self.due = time.monotonic(), None

    def tend(self, now: float, timeout: float) -> bool:
        """Start a due replacement, kill a hung worker, schedule a dead one's replacement;
        False when the worker could not start (it would fail the same way again)."""
        if self.due is not None:
            if now >= self.due:
                self.start()
            return True
        beat = float(self.heartbeat.value)  # 0 until the worker serves
        if beat and now - beat > timeout and self.process.pid:
            lifecycle.error("worker %d hung (%.0f s): killed", self.index, now - beat)
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.join()
        if self.process.exitcode is None:
            return True
        if self.process.exitcode == STARTUP_FAILURE:
            lifecycle.error("a worker could not start: stopping")
            return False
        if self.process.pid is not None and MULTIPROCESS_DIR in os.environ:
            # Its gauges leave the sums (a dead worker's in-flight count, spool depth or
            # kafka_up would otherwise stay in them); its counters stay, as they must.
            mark_process_dead(self.process.pid)  # type: ignore[no-untyped-call]
        self.delay = restart_delay(self.delay, now - self.started)
        self.due = now + self.delay
        lifecycle.error(
            "worker %d exited (%s) after %.0f s: replaced in %.1f s",
            self.index,
            self.process.exitcode,
            now - self.started,
            self.delay,
        )
        return True

    def stop(self) -> None:
        if self.process.pid is not None and self.process.exitcode is None:
            os.kill(self.process.pid, signal.SIGTERM)  # it finishes what it holds, then exits


def _supervise(config: uvicorn.Config, workers: int, timeout: float) -> int:
    """Run `workers` processes until SIGTERM or SIGINT, replacing any that dies or hangs; the
    exit status: 0, or 1 when a worker could not start.

    Each worker listens on a socket of its own, all bound to the port with SO_REUSEPORT, so
    the kernel spreads connections evenly across them. (uvicorn's supervisor hands all
    workers one socket; the first to wake accepts a burst of connections and, kept alive,
    their load: measured, one worker of two did all the work in most runs.) A worker whose
    event loop has not run for `timeout` seconds is killed: the connections the kernel gives
    its socket would otherwise wait forever.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    slots = [_Worker(i, config) for i in range(workers)]
    lifecycle.info("started %d workers on port %d", workers, config.port)
    failed = False
    while not stop.wait(0.25):
        now = time.monotonic()
        if not all(slot.tend(now, timeout) for slot in slots):
            failed = True
            break
    for slot in slots:
        slot.stop()
    for slot in slots:
        slot.process.join()
    return 1 if failed else 0


def _worker(config: uvicorn.Config, heartbeat: ctypes.c_double | None = None) -> None:
    config.configure_logging()
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((config.host, config.port))
    except OSError as exc:
        lifecycle.error("cannot listen on port %d: %s", config.port, exc)
        sys.exit(STARTUP_FAILURE)
    server = _Server(config, heartbeat)
    server.run(sockets=[listener])
    if not server.started:  # the app did not start (its lifespan failed)
        sys.exit(STARTUP_FAILURE)


def _dev(args: argparse.Namespace) -> int:
    settings = load_settings()
    _configure_logging(settings)
    with EmbeddedBroker() as broker:
        os.environ["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        # The embedded broker has no InitProducerId; production keeps idempotence on.
        os.environ["BRIDGE_KAFKA_ENABLE_IDEMPOTENCE"] = "false"
        if settings.port == 0:
            os.environ["BRIDGE_PORT"] = str(free_port())
        if not settings.tokens and not settings.allow_unauthenticated:
            os.environ["BRIDGE_AUTH_TOKENS"] = secrets.token_urlsafe(24)
        if "BRIDGE_SPOOL_DIR" not in os.environ:  # the broker forgets all; so does the spool
            os.environ["BRIDGE_SPOOL_DIR"] = tempfile.mkdtemp(prefix="bridge-dev-spool-")
        settings = load_settings()
        asyncio.run(
            create_topics(
                broker.bootstrap_servers, all_topics(settings.topic_prefix), args.partitions
            )
        )
        scheme = "https" if settings.tls_certfile else "http"
        token = settings.tokens[0] if settings.tokens else ""
        url = f"{scheme}://{settings.host}:{settings.port}{WEBHOOK_PATH}" + (
            f"/{token}" if token else ""
        )
        print(_banner(settings, broker, url), flush=True)
        return _run_server(settings)


def _banner(settings: Settings, broker: EmbeddedBroker, url: str) -> str:
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


def _schemas_list(args: argparse.Namespace) -> int:
    asyncio.run(schema_tools.list_schemas(load_settings(), as_json=args.format == "json"))
    return 0


def _schemas_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    level = args.level or settings.schema_compatibility
    report = asyncio.run(schema_tools.check_schemas(settings, level, args.schema_dir))
    for line in report.checked:
        print(f"checked  {line}")
    for failure in report.failures:
        print(f"INCOMPATIBLE  {failure}", file=sys.stderr)
    if report.failures:
        return 1
    print(f"compatible ({level})")
    return 0


def _schemas_register(_: argparse.Namespace) -> int:
    for kind, (subject, schema_id) in asyncio.run(
        schema_tools.register_schemas(load_settings())
    ).items():
        print(f"{kind}: subject {subject} id {schema_id}")
    return 0


def _schemas_snapshot(args: argparse.Namespace) -> int:
    written = schema_tools.snapshot(args.schema_dir)
    for path in written:
        print(f"kept {path}")
    if not written:
        print("no schema changed since the last version in avro/history/")
    return 0


def _replay(args: argparse.Namespace) -> int:
    bodies = replay.read_archive(args.file)
    if args.kafka:
        settings = load_settings()
        configure_logging(settings)
        summary = asyncio.run(replay.to_kafka(bodies, settings))
    else:
        summary = asyncio.run(replay.to_url(bodies, args.url, args.token, args.concurrency))
    print(f"replayed {summary.line()}")
    return 1 if any(k.startswith("failed") for k in summary.outcomes) else 0


def _tail(args: argparse.Namespace) -> int:
    settings = load_settings()
    options = TailOptions(
        types=tuple(args.types or (*TYPES, DLQ)),
        case_id=args.case_id,
        from_beginning=args.from_beginning,
        until_idle=args.until_idle,
        format=args.format,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail(settings, options))
    return 0
