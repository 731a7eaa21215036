"""Running bridge under uvicorn: one process, or several workers kept alive by a supervisor.

Each worker gets the `Settings` object (pickled by multiprocessing's spawn), never the
environment, and builds its own app from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import cast

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn._types import ASGIApplication
from uvicorn.config import STARTUP_FAILURE  # a worker that could not start

from bridge.http.app import create_app
from bridge.http.ports import free_port
from bridge.http.protocol import ConnectionMetrics, Limits, protocol_for
from bridge.kafka.publish import Publisher
from bridge.settings import Settings
from bridge.telemetry.logs import dict_config
from bridge.telemetry.metrics import MULTIPROCESS_DIR, Metrics

APP = "bridge.http.app:create_app"
lifecycle = logging.getLogger("bridge.lifecycle")
FIRST_DELAY, LAST_DELAY = 0.5, 30.0  # seconds before a dead worker's replacement starts
STABLE_AFTER = 60.0  # a worker that ran this long before it died is replaced at once


class Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        heartbeat: ctypes.c_double | None = None,
        supervisor: int | None = None,
    ) -> None:
        super().__init__(config)
        self.heartbeat, self.supervisor = heartbeat, supervisor

    async def on_tick(self, counter: int) -> bool:
        # Ten times a second, on the event loop: a supervisor that sees no beat knows the loop
        # is stuck, not just busy.
        if self.heartbeat is not None:
            self.heartbeat.value = time.monotonic()
        if self.supervisor is not None and os.getppid() != self.supervisor and not self.should_exit:
            # The supervisor is gone (SIGKILL, the OOM killer): nobody would stop or replace
            # this worker, which would hold the port beside the next supervisor's. Stop as on
            # SIGTERM: what is in flight finishes, what Kafka has not taken stays in the spool.
            lifecycle.error("worker %d: the supervisor is gone, stopping", os.getpid())
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # SIGTERM/SIGINT asked for a graceful stop, which is done: exit 0 instead of
            # re-raising the signal as uvicorn does (orchestrators read that as a crash).
            self._captured_signals.clear()


def graceful_seconds(settings: Settings) -> int:
    """How long a stopping server waits for the requests in flight: each is done (stored or
    spooled) within the ack budget."""
    return math.ceil(settings.ack_timeout) + 2


def serving(settings: Settings, publisher: Publisher | None = None) -> uvicorn.Config:
    """One process's server and app, counting into the same metrics (the app's pipeline and
    the server's connections): what `bridge serve` runs, in each worker; tests run it too."""
    metrics = Metrics()
    app = create_app(settings, publisher, metrics=metrics)
    # uvicorn's ASGI type is narrower than Starlette's.
    return server_config(settings, cast("ASGIApplication", app), metrics)


def server_config(
    settings: Settings, app: ASGIApplication | str = APP, metrics: ConnectionMetrics | None = None
) -> uvicorn.Config:
    """How bridge runs under uvicorn, for `app` (its connections counted into `metrics`)."""
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
        timeout_graceful_shutdown=graceful_seconds(settings),
        # Deadlines and limits on each connection, BRIDGE_MAX_CONNECTIONS among them.
        http=cast("type[asyncio.Protocol]", protocol_for(Limits.of(settings), metrics)),
        timeout_keep_alive=settings.keep_alive_timeout,
        ws="none",  # no websocket routes; an upgraded connection would escape the deadlines
        server_header=False,
        # X-Forwarded-For is read by bridge itself, from BRIDGE_TRUSTED_PROXIES only.
        proxy_headers=False,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    if settings.workers == 1:
        Server(serving(settings)).run()
        return 0
    # Several processes, each building its own app (and taking its own spool file); metrics
    # added up across them (prometheus-client reads its directory from the environment). A
    # directory made here is removed when the workers are gone, not left behind in /tmp.
    made = None
    if MULTIPROCESS_DIR not in os.environ:
        made = os.environ[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix="bridge-metrics-")
    if settings.port == 0:  # one port for all: chosen here
        settings = settings.model_copy(update={"port": free_port()})
    try:
        return supervise(settings)
    finally:
        if made is not None:
            del os.environ[MULTIPROCESS_DIR]
            shutil.rmtree(made, ignore_errors=True)


def restart_delay(previous: float, lived: float) -> float:
    """Seconds to wait before replacing a worker that died after `lived` seconds: at once
    after a long life, else twice the previous wait (a worker that keeps crashing at start
    would otherwise be replaced, and crash, twice a second)."""
    if lived >= STABLE_AFTER:
        return 0.0
    return min(LAST_DELAY, max(FIRST_DELAY, previous * 2))


class Worker:
    """One worker slot: its process, when it started, and the heartbeat its event loop writes."""

    def __init__(self, index: int, settings: Settings) -> None:
        self.index, self.settings = index, settings
        self.delay = 0.0
        self.due: float | None = None  # when a dead worker's replacement starts
        self.start()

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.heartbeat = context.Value("d", 0.0, lock=False)
        self.process = context.Process(
            target=work,
            args=(self.settings, self.heartbeat, os.getpid()),
            name=f"bridge-worker-{self.index}",
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


def supervise(settings: Settings) -> int:
    """Run `settings.workers` processes until SIGTERM or SIGINT, replacing any that dies or
    hangs; the exit status: 0, or 1 when a worker could not start.

    Each worker listens on a socket of its own, all bound to the port with SO_REUSEPORT, so
    the kernel spreads connections evenly across them. (uvicorn's supervisor hands all
    workers one socket; the first to wake accepts a burst of connections and, kept alive,
    their load: measured, one worker of two did all the work in most runs.) A worker whose
    event loop has not run for `settings.worker_timeout` seconds is killed: the connections
    the kernel gives its socket would otherwise wait forever.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    slots = [Worker(i, settings) for i in range(settings.workers)]
    lifecycle.info("started %d workers on port %d", settings.workers, settings.port)
    failed = False
    while not stop.wait(0.25):
        now = time.monotonic()
        if not all(slot.tend(now, settings.worker_timeout) for slot in slots):
            failed = True
            break
    for slot in slots:
        slot.stop()
    # A worker finishes its requests within the ack budget, then its own stop within the
    # shutdown budget; one that is hung (stopped, deadlocked) would hold the supervisor, and
    # the port, until the orchestrator's SIGKILL: it is killed once both budgets are spent.
    deadline = time.monotonic() + graceful_seconds(settings) + settings.shutdown_timeout
    for slot in slots:
        slot.process.join(max(0.0, deadline - time.monotonic()))
        if slot.process.exitcode is None and slot.process.pid is not None:
            lifecycle.error("worker %d did not stop in time: killed", slot.index)
            os.kill(slot.process.pid, signal.SIGKILL)
            slot.process.join()
    return 1 if failed else 0


def work(
    settings: Settings, heartbeat: ctypes.c_double | None = None, supervisor: int | None = None
) -> None:
    """One worker process: its own socket on the shared port, its own app; it stops by itself
    when `supervisor` (the pid of its parent) is gone."""
    config = serving(settings)  # logging configured here too
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((config.host, config.port))
    except OSError as exc:
        lifecycle.error("cannot listen on port %d: %s", config.port, exc)
        sys.exit(STARTUP_FAILURE)
    server = Server(config, heartbeat, supervisor)
    server.run(sockets=[listener])
    if not server.started:  # the app did not start (its lifespan failed)
        sys.exit(STARTUP_FAILURE)
