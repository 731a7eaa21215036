"""Fixtures. The helpers they use, and that tests import, are in tests/helpers.py.

One suite, two brokers (as faststream runs one suite against several): every test that takes
`broker` (or `kafka_settings`, `server`) runs once on Tansu and once on Apache Kafka, ids
`tansu` and `kafka`. Tansu's quirks are worked around in `tansu_broker` alone; Apache Kafka
runs as in production (idempotent producer, no topic created on first use). Tests of what
only Apache Kafka has (replication, SASL, TLS, ACLs) take `kafka_broker` or `kafka_cluster`
and are marked `apache`.

Tiers (docs/development.md): a test that starts a broker, a process, a JVM or a container says
so with a marker of its own (`kafka`, `apache`, `process`, `faults`, `container`, `mount`);
markers are declared, never guessed from fixture names. The rest is the unit tier
(`make check`), and a guard here fails any test of it that starts a process anyway.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import gc
import inspect
import os
import subprocess
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from bridge.devbrokers.launcher import EmbeddedBroker, KafkaCluster
from bridge.http.ports import free_port
from bridge.settings import Settings
from tests.container import Build, build_image
from tests.helpers import (
    Broker,
    RunningRegistry,
    RunningServer,
    broker_settings,
    require_apache_kafka,
    run_server,
    serve_in_thread,
    started,
)
from tests.registry_double import Registry
from tests.traffic import Proxy

BROKER_FIXTURES = {"broker", "kafka_settings", "server", "tansu_broker"}
APACHE_FIXTURES = {"kafka_broker", "kafka_cluster"}
# The markers of the tiers that may start processes; a test with none of them is a unit test.
STARTING = ("kafka", "apache", "process", "faults", "container", "mount")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process settings read BRIDGE_* from the environment: whatever the developer exported
    # must not change a test. In-process apps serve without a token unless a test sets one;
    # the processes started by tests get their environment explicitly, with a token.
    for name in [name for name in os.environ if name.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGE_ALLOW_UNAUTHENTICATED", "true")


@pytest.fixture(autouse=True)
def _leaks_reported_where_made(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """What a test leaves open (a socket, a transport, a Kafka client) is reported when the
    garbage collector frees it: in CI, by an unrelated test minutes later. Collected when a
    test that runs a loop or a process ends (this teardown comes after its fixtures'),
    pytest's unraisable-exception check fails the test that leaked it. The log records it
    captured go first: their arguments and tracebacks hold what the test used (an aiokafka
    error, its connection) until pytest drops them, after this teardown."""
    yield
    if _marked(request.node, *STARTING) or inspect.iscoroutinefunction(
        getattr(request.node, "obj", None)
    ):
        for when in ("setup", "call"):
            caplog.get_records(when).clear()  # already written into the report
        gc.collect()


def pytest_configure() -> None:
    # Module and session fixtures, and module-level code, run before `_hermetic`: the
    # developer's BRIDGE_* leave the whole process first (pytest-xdist's workers inherit this).
    for name in [name for name in os.environ if name.startswith("BRIDGE_")]:
        del os.environ[name]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        action="append",
        choices=["tansu", "kafka"],
        help="run the broker-facing tests on this broker only (repeatable; default: both)",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test marked `one_broker` uses a broker without being about it: Tansu alone, which
    # every machine has. `--broker` narrows the matrix.
    chosen = set(config.getoption("broker") or ["tansu", "kafka"])
    kept = [item for item in items if not _on_another_broker(item, chosen)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    # `-m "not kafka"` runs what needs no broker; `-m apache` what needs Apache Kafka itself.
    unmarked = []
    for item in items:
        if not item.nodeid.endswith(item.name):
            # schemathesis gives each API operation's test the function's id: pytest-xdist,
            # which tells tests apart by id, would run one operation of six. Its name has it.
            item._nodeid = f"{item.nodeid.rpartition('::')[0]}::{item.name}"
        fixtures = set(getattr(item, "fixturenames", ()))
        missing = _unmarked(item, fixtures)
        if missing:
            unmarked.append(f"{item.nodeid} ({missing})")
        if "kafka_cluster" in fixtures:  # one pytest-xdist worker starts the cluster, once
            item.add_marker(pytest.mark.xdist_group("kafka-cluster"))
        if "image" in fixtures:  # one pytest-xdist worker builds the image and runs it
            item.add_marker(pytest.mark.xdist_group("container"))
    if unmarked:
        raise pytest.UsageError(
            "tests take a broker or the image without their tier's marker (`kafka`: a broker; "
            "`apache`: Apache Kafka itself; `container`: the image):\n  " + "\n  ".join(unmarked)
        )


def _unmarked(item: pytest.Item, fixtures: set[str]) -> str | None:
    """A broker fixture the test takes without the marker that says so, or None."""
    if fixtures & APACHE_FIXTURES and item.get_closest_marker("apache") is None:
        return ", ".join(sorted(fixtures & APACHE_FIXTURES))
    if fixtures & BROKER_FIXTURES and not _marked(item, "kafka", "apache", "faults"):
        return ", ".join(sorted(fixtures & BROKER_FIXTURES))
    if "image" in fixtures and item.get_closest_marker("container") is None:
        return "image"
    return None


def _marked(item: pytest.Item, *names: str) -> bool:
    return any(item.get_closest_marker(name) is not None for name in names)


# Not an Exception: no `except Exception` in the code under test hides it.
class StartedInUnitTier(BaseException):
    """A unit-tier test started a process (a broker, a server, a JVM, a container)."""


_VIOLATIONS = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _no_process_unless_marked(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _no_process_unless_marked(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    started = item.stash.get(_VIOLATIONS, [])
    if started and call.when != "teardown" and not report.failed:
        report.outcome = "failed"
        report.longrepr = f"unit-tier test started a process: {started}; give it its tier's marker"
    return report


@contextlib.contextmanager
def _no_process_unless_marked(item: pytest.Item) -> Iterator[None]:
    """Every way Python starts a process (subprocess, asyncio, multiprocessing, os) goes through
    one of these; in a unit-tier test each records the attempt and refuses."""
    if _marked(item, *STARTING):
        yield
        return
    started = item.stash.setdefault(_VIOLATIONS, [])

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **_: Any) -> Any:
            started.append(f"{name}{tuple(str(a) for a in args[:1])}")
            raise StartedInUnitTier(name)

        return refused

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_posixsubprocess, "fork_exec", refuse("fork_exec"))  # multiprocessing
        patch.setattr(subprocess, "_fork_exec", refuse("subprocess"))  # subprocess, asyncio
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            patch.setattr(os, name, refuse(f"os.{name}"))
        yield


def _on_another_broker(item: pytest.Item, chosen: set[str]) -> bool:
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("broker") if callspec is not None else None
    if name is None:
        return False
    return name not in chosen or (
        item.get_closest_marker("one_broker") is not None and name != "tansu"
    )


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[Broker]:
    """Tansu (the embedded development broker) on a free loopback port."""
    embedded = EmbeddedBroker()
    try:
        embedded.start()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(f"cannot start the embedded broker: {exc}", returncode=3)
    # Tansu's quirks, here alone: no InitProducerId (idempotence off), end offsets it can
    # misreport (read until idle), topics it creates on first use (nothing to do), or when
    # asked whatever their shape, and no topic configuration it describes.
    yield Broker(
        "tansu",
        embedded.bootstrap_servers,
        idempotence=False,
        end_offsets_trusted=False,
        topics_validated=False,
        configs_described=False,
        another=EmbeddedBroker,
    )
    embedded.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """Apache Kafka, one combined broker+controller node, as production runs it."""
    require_apache_kafka()
    with KafkaCluster(1) as cluster:
        yield Broker("kafka", cluster.bootstrap_servers, cluster=cluster)


@pytest.fixture(scope="session", params=["tansu", "kafka"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """The broker under test: every test that takes it runs on both."""
    found: Broker = request.getfixturevalue(f"{request.param}_broker")
    return found


@pytest.fixture
def proxy(broker: Broker) -> Iterator[Proxy]:
    """A TCP proxy in front of `broker`, for the fault tests to cut and restore."""
    front = Proxy(broker.bootstrap_servers)
    front.start()
    yield front
    front.stop()


@pytest.fixture(scope="session")
def _kafka_cluster() -> Iterator[KafkaCluster]:
    require_apache_kafka()
    # The one three-broker cluster of the session (the fault tests' too): four JVMs of 256 MB
    # share two cores with the bridge under test, and may take minutes to start under load.
    cluster = started(KafkaCluster(3, heap="256m"))
    yield cluster
    cluster.close()


@pytest.fixture
def kafka_cluster(_kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """Three Apache Kafka brokers beside a controller (replication factor 3,
    min.insync.replicas=2), shared by the session: a test may kill or stop nodes; they are
    started again after it."""
    yield _kafka_cluster
    down = [node for node in _kafka_cluster.nodes.values() if not node.running]
    for node in sorted(down, key=lambda node: node.is_broker):  # the controller first
        _kafka_cluster.start_node(node.node_id)
    if down:
        _kafka_cluster.wait_ready()


@pytest.fixture(scope="session")
def image() -> Build:
    """The image built from deploy/Dockerfile, once per session, on a real container engine
    (tests/container.py runs containers of it); skips, or fails under CI, without one."""
    return build_image()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix per test, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_settings(broker: Broker, topic_prefix: str, tmp_path: Path) -> Settings:
    return broker_settings(broker, topic_prefix, tmp_path)


@pytest.fixture
def server(kafka_settings: Settings) -> Iterator[RunningServer]:
    yield from run_server(kafka_settings)


@pytest.fixture
def schema_registry() -> Iterator[RunningRegistry]:
    """The registry test double, over real HTTP on a free port."""
    state = Registry()
    config = uvicorn.Config(
        state.app(), host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off"
    )
    for url in serve_in_thread(uvicorn.Server(config)):
        yield RunningRegistry(state, url)
