"""What the tests share: notifications, ports, servers in threads, fake publishers, reading
Kafka back, and the broker under test. Fixtures are in conftest.py; test modules import only
from here (never from one another)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import uvicorn
from aiokafka import ConsumerRecord

from bridge.codec.schemas import default_schema_dir
from bridge.devbrokers.launcher import EmbeddedBroker, KafkaCluster, kafka_missing
from bridge.errors import BrokerUnavailable, PublishError
from bridge.http.ports import free_port
from bridge.http.supervisor import serving
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.client import reading
from bridge.kafka.publish import Delivery, MemoryPublisher, Publisher
from bridge.notifications.record import Record
from bridge.notifications.routing import all_topics
from bridge.settings import Settings, load_settings
from tests.registry_double import Registry

__all__ = [
    "NEW_TYPE",
    "Broker",
    "DevBanner",
    "RunningRegistry",
    "RunningServer",
    "StalledPublisher",
    "SwitchablePublisher",
    "broker_settings",
    "connections_to",
    "consume",
    "fill_disk",
    "free_port",
    "frozen",
    "notification",
    "process_env",
    "require_apache_kafka",
    "run_server",
    "run_sync",
    "sample",
    "sample_bytes",
    "schema_dir_with_new_type",
    "serve_in_thread",
    "started",
    "task_end",
    "tmpfs",
    "wait_for",
    "wait_for_port",
]

T = TypeVar("T")
SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notifications"


# --- notifications --------------------------------------------------------------------------


def sample(kind: str = "call") -> dict[str, Any]:
    """The vendor's example notification of `kind`, parsed."""
    data: dict[str, Any] = orjson.loads((SAMPLES / f"{kind}.json").read_bytes())
    return data


def sample_bytes(kind: str = "call") -> bytes:
    return (SAMPLES / f"{kind}.json").read_bytes()


def notification(case: str, step: int) -> bytes:
    """A call notification of case `case`, the `step`-th of that case (its call id says so)."""
    data = sample("call")
    data["callee"] = {**data["callee"], "case_id": case}
    data["call"] = {**data["call"], "call_id": f"{case}/{step}"}
    return orjson.dumps(data)


# A notification type the packaged schemas do not have: added by one schema file.
NEW_TYPE = "task_end"
_NEW_TYPE_SCHEMA = {
    "type": "record",
    "name": "TaskEndNotification",
    "namespace": "airudder",
    "x-notification": {
        "type": NEW_TYPE,
        "event-id": ["task_end.task_id"],
        "description": "A dialling task ended.",
    },
    "doc": "A dialling task ended (`type` = `task_end`); topic <prefix>task_end.",
    "fields": [
        {"name": "type", "type": ["null", "string"], "default": None, "doc": "task_end."},
        {"name": "timestamp", "type": ["null", "long"], "default": None, "doc": "Unix s."},
        {"name": "callee", "type": ["null", "airudder.Callee"], "default": None, "doc": "Case."},
        {
            "name": "task_end",
            "default": None,
            "doc": "The task.",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "TaskEnd",
                    "doc": "A task.",
                    "fields": [
                        {"name": name, "type": ["null", kind], "default": None, "doc": name}
                        for name, kind in (("task_id", "string"), ("status", "string"))
                    ]
                    + [
                        {"name": "calls", "type": ["null", "long"], "default": None, "doc": "n"},
                        {
                            "name": "unmapped",
                            "type": {"type": "map", "values": "string"},
                            "default": {},
                            "doc": "The rest.",
                        },
                    ],
                },
            ],
        },
        {
            "name": "unmapped",
            "type": {"type": "map", "values": "string"},
            "default": {},
            "doc": "The rest.",
        },
    ],
}


def schema_dir_with_new_type(tmp_path: Path) -> Path:
    """The packaged schemas (and their history) copied to a folder of its own, plus one file
    declaring the type `task_end`: what a team adds to avro/ for a new notification type."""
    folder = tmp_path / "avro"
    shutil.copytree(default_schema_dir(), folder)
    (folder / "airudder.TaskEndNotification.avsc").write_bytes(
        orjson.dumps(_NEW_TYPE_SCHEMA, option=orjson.OPT_INDENT_2)
    )
    return folder


def task_end(case: str, task_id: str, **extra: Any) -> bytes:
    """A notification of the new type (`schema_dir_with_new_type`)."""
    data = {
        "type": NEW_TYPE,
        "timestamp": 1733000000,
        "callee": {"case_id": case, "phone_number": "+6200000000"},
        "task_end": {"task_id": task_id, "status": "finished", "calls": 3},
        **extra,
    }
    return orjson.dumps(data)


# --- waiting --------------------------------------------------------------------------------


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something true; fail the test naming `what` after
    `timeout` seconds. The deadlines are generous: the machine is shared."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(interval)


def wait_for_port(
    port: int,
    timeout: float = 20.0,
    process: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; fails at once if `process`
    exits first, with the end of its `log`."""

    def output() -> str:
        if log is not None:
            return log.read_text(errors="replace")[-3000:]
        return process.communicate()[0] if process is not None and process.stdout else ""

    def accepting() -> bool:
        if process is not None and process.poll() is not None:
            code = process.returncode
            pytest.fail(f"exited early ({code}) before listening on {port}: {output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_for(accepting, timeout, f"nothing listened on {port}{f' (log: {log})' if log else ''}")


@dataclass(frozen=True)
class DevBanner:
    """What `bridge dev` prints before it serves: its curl line's example file and URL, and
    the broker's address."""

    text: str
    example: Path
    url: str
    bootstrap_servers: str

    @classmethod
    def read(cls, process: subprocess.Popen[str], timeout: float) -> DevBanner:
        """The banner, read from `process`'s output up to its `bridge tail` line."""
        assert process.stdout is not None
        text, deadline = "", time.monotonic() + timeout
        while "bridge tail" not in text:
            line = process.stdout.readline()
            assert line or process.poll() is None, text
            assert time.monotonic() < deadline, text
            text += line
        curl = re.search(r"--data-binary @(\S+) (\S+)", text)
        bootstrap = re.search(r"BRIDGE_KAFKA_BOOTSTRAP_SERVERS=(\S+)", text)
        assert curl is not None, text
        assert bootstrap is not None, text
        return cls(text, Path(curl.group(1)), curl.group(2), bootstrap.group(1))

    def assert_broker_gone(self) -> None:
        port = int(self.bootstrap_servers.rpartition(":")[2])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


# --- processes and servers ------------------------------------------------------------------


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `bridge` process started by a test: this test's settings only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=str(settings.kafka_enable_idempotence).lower(),
        BRIDGE_TOPIC_PREFIX=settings.topic_prefix,
        BRIDGE_PORT=str(settings.port),
        BRIDGE_SPOOL_DIR=str(settings.spool_dir),
    )
    env.update(extra)
    return env


@dataclass
class RunningRegistry:
    state: Registry
    url: str


@dataclass
class RunningServer:
    url: str
    settings: Settings


def run_server(settings: Settings, publisher: Publisher | None = None) -> Iterator[RunningServer]:
    """bridge on a real uvicorn server in a thread, as httpx's own test suite does."""
    config = serving(settings, publisher)
    for url in serve_in_thread(uvicorn.Server(config)):
        yield RunningServer(url, settings)


def serve_in_thread(server: uvicorn.Server) -> Iterator[str]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 15, "the server to start", 0.02)
    if not server.started:
        pytest.fail("server did not start")
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(20)


# --- fake publishers ------------------------------------------------------------------------


class StalledPublisher(MemoryPublisher):
    """A broker that never acknowledges."""

    async def publish(self, record: Record) -> Delivery:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class SwitchablePublisher(MemoryPublisher):
    """A broker that can be taken away and given back."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def publish(self, record: Record) -> Delivery:
        if self.down:
            raise PublishError("broker unreachable")
        return await super().publish(record)


# --- real filesystems -----------------------------------------------------------------------


def _mount(*args: str) -> str | None:
    """Run mount(8); None when it worked, else why not (one line)."""
    if os.geteuid() != 0:
        return "not root"
    try:
        result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"mount: {exc.strerror}"
    return None if result.returncode == 0 else result.stderr.strip() or f"mount {args}: failed"


@contextlib.contextmanager
def tmpfs(directory: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` (`2m`) mounted on `directory` for the test, unmounted after it.
    Skips in one line where it cannot mount (not root), fails under CI=true (root)."""
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    problem = _mount("-t", "tmpfs", "-o", options, "tmpfs", str(directory))
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the disk tests, but cannot mount a tmpfs: {problem}")
        pytest.skip(f"disk tests mount a tmpfs: {problem}")
    try:
        yield directory
    finally:
        # Lazily: a process the test left behind must not keep the mount.
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def fill_disk(path: Path) -> None:
    """Write to `path` until its disk is full (a tmpfs: bounded by its size)."""
    with path.open("ab", buffering=0) as file:
        try:
            while True:
                file.write(bytes(64 * 1024))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


# --- the broker under test ------------------------------------------------------------------


def require_apache_kafka() -> None:
    """Skip (on a developer's machine) or fail (under CI) in one line when this machine cannot
    run Apache Kafka."""
    missing = kafka_missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Apache Kafka tests, but {missing}", pytrace=False)
    pytest.skip(f"Apache Kafka tests need Java and Maven: {missing}")


def started(cluster: KafkaCluster, timeout: float = 240.0) -> KafkaCluster:
    """`cluster` started (on a loaded machine its JVMs may take minutes), or the test failed
    with the cause and the cluster closed."""
    try:
        cluster.start(timeout=timeout)
    except BrokerUnavailable as exc:
        cluster.close()
        pytest.fail(str(exc))
    return cluster


def connections_to(port: int) -> int:
    """This process's open TCP connections to a loopback `port` (from /proc: what the kernel
    holds, whatever Python still refers to)."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                ours.add(target[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[9] in ours:
            count += 1
    return count


@contextlib.contextmanager
def frozen(broker: EmbeddedBroker | KafkaCluster) -> Iterator[None]:
    """A broker's processes stopped (SIGSTOP: connections stay open, nothing is answered),
    and given back afterwards whatever happens."""
    if isinstance(broker, KafkaCluster):
        pids = [node.pid for node in broker.nodes.values() if node.pid is not None]
    else:
        pids = [broker.pid] if broker.pid is not None else []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@dataclass(frozen=True)
class Broker:
    """The broker a test runs against (the `broker` fixture: Tansu or Apache Kafka) and what
    it can do. Tansu's quirks are set by its fixture alone; the defaults are Apache Kafka's."""

    name: str
    bootstrap_servers: str
    idempotence: bool = True  # Tansu has no InitProducerId
    end_offsets_trusted: bool = True  # Tansu can misreport them
    topics_validated: bool = True  # Tansu creates any topic asked for, 0 partitions or 7 replicas
    configs_described: bool = True  # Tansu drops a DescribeConfigs naming keys
    cluster: KafkaCluster | None = None  # Apache Kafka: its nodes, for tests that need them
    # Another broker of this kind, not started (for a test that stops its broker).
    another: Callable[[], EmbeddedBroker | KafkaCluster] = KafkaCluster

    async def consume(
        self, topics: list[str], idle: float = 1.5
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record in `topics`: up to the end offsets where they can be trusted, else
        until nothing new comes for `idle` seconds."""
        return await consume(
            self.bootstrap_servers, topics, idle=None if self.end_offsets_trusted else idle
        )


def broker_settings(broker: Broker, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings for a test on `broker`, its topics created (Apache Kafka creates none on first
    use, as most production clusters)."""
    settings = load_settings(
        spool_dir=tmp_path / "spool",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=broker.idempotence,
        topic_prefix=topic_prefix,
        port=free_port(),
    )
    run_sync(create_topics_and_wait(broker.bootstrap_servers, all_topics(topic_prefix)))
    return settings


async def consume(
    bootstrap_servers: str, topics: list[str], idle: float | None = None, timeout: float = 90.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in `topics`, from the beginning (`bridge.kafka.client.reading`, as tail and
    replay read): up to the end offsets read at the start, or, given `idle`, until nothing new
    comes for `idle` seconds (prefer `Broker.consume`, which knows whether its broker's end
    offsets can be trusted). Fails the test after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            # A broker just restarted may not list every topic at first: ask again a while.
            settled = time.monotonic() + 10
            while True:
                async with reading({"bootstrap_servers": bootstrap_servers}, topics) as read:
                    if not read.missing or time.monotonic() > settled:
                        assert read.partitions, f"no partitions in {topics}"
                        return [r async for r in read.records(idle, to_end=idle is None)]
                await asyncio.sleep(0.5)
    except TimeoutError:
        pytest.fail(f"reading {topics} back: not done within {timeout} s")
