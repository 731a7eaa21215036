"""The image under test on a real container engine: build it once per session, run containers
of it on the host network (loopback only), and read their state.

`image` (tests/conftest.py) yields the tag of the image built from deploy/Dockerfile; `run`
starts a container of it with the environment, volumes and tmpfs a test gives and returns a
`Container` to read and stop. Without an engine the tests skip in one line, and fail under
CI=true (as the Apache Kafka tests do); `make engine` installs and starts one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "scripts" / "container_engine.py"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# The context deploy/Dockerfile copies (.dockerignore keeps the rest out).
CONTEXT = (
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    "bridge",
    "avro",
    "examples/notifications",
    "deploy/Dockerfile",
)
# What the tests allow the image (README, "Deploy"): checked by test_image.py.
SIZE_BUDGET_MB = 300
VENV_BUDGET_MB = 80
START_BUDGET_S = 5.0


def engine(*args: str, timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, str(ENGINE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"container_engine.py {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def docker_cli() -> str:
    for candidate in ("/usr/bin/docker", "/usr/local/bin/docker"):
        if Path(candidate).exists():
            return candidate
    return "docker"


def docker(
    *args: str, timeout: float = 120, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [docker_cli(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and done.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])}: {done.stderr.strip()[-2000:]}")
    return done


def require_engine() -> None:
    """Skip (on a developer's machine) or fail (under CI) in one line without an engine."""
    missing = engine("missing", timeout=60)
    if not missing and os.geteuid() != 0:
        # The tests chown volumes to the image's user and stop containers' processes.
        missing = "they need root"
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the image tests, but {missing}", pytrace=False)
    pytest.skip(f"image tests: {missing}")


def context_hash() -> str:
    digest = hashlib.sha256()
    for name in CONTEXT:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    # Two pytest-xdist workers (or two checkouts) building at once: one builds, the other
    # finds the tag.
    lock = Path.home() / ".cache" / "bridge" / "engine" / "build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def base_image() -> str:
    """TEST_BASE_IMAGE if set; else the Dockerfile's own base when the engine has it; else
    the stand-in made from Debian packages (once, cached by its inputs)."""
    chosen = os.environ.get("TEST_BASE_IMAGE")
    if chosen:
        return chosen
    default = next(
        line.split("=", 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("ARG BASE_IMAGE=")
    )
    if docker("image", "inspect", default, check=False).returncode == 0:
        return default
    return engine("base")


@dataclass(frozen=True)
class Build:
    tag: str
    seconds: float  # 0 when the tag was already there
    base: str


def build(tag: str, base: str, *, buildkit: bool = False, timeout: float = 600) -> float:
    """Build deploy/Dockerfile as `tag`; the seconds it took. The host network: the engine
    here runs without a bridge (nothing on the host is changed to start it)."""
    started = time.monotonic()
    docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(DOCKERFILE),
        "-t",
        tag,
        str(ROOT),
        timeout=timeout,
        env={"DOCKER_BUILDKIT": "1" if buildkit else "0"},
    )
    return time.monotonic() - started


def build_image() -> Build:
    require_engine()
    with build_lock():
        base = base_image()
        tag = f"bridge-test:{context_hash()}-{base.replace(':', '-').replace('/', '-')[-24:]}"
        if docker("image", "inspect", tag, check=False).returncode == 0:
            return Build(tag, 0.0, base)
        return Build(tag, build(tag, base), base)


@dataclass
class Container:
    """A running container of the image, on the host network."""

    id: str
    port: int
    stopped: bool = field(default=False)

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", self.id).stdout)
        return data[0]

    @property
    def pid(self) -> int:
        return int(self.inspect()["State"]["Pid"])

    def health(self) -> str:
        return str(self.inspect()["State"].get("Health", {}).get("Status", "none"))

    def logs(self) -> str:
        done = docker("logs", self.id, check=False)
        return done.stdout + done.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.id, *command, check=False)

    def stop(self, grace: int) -> tuple[int, float]:
        """`docker stop -t grace`: the container's exit code and the seconds it took."""
        started = time.monotonic()
        docker("stop", "-t", str(grace), self.id, timeout=grace + 60)
        seconds = time.monotonic() - started
        self.stopped = True
        return int(self.inspect()["State"]["ExitCode"]), seconds

    def start(self) -> None:
        docker("start", self.id)
        self.stopped = False

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.id, check=False, timeout=90)


def run(  # noqa: PLR0913 - `docker run`'s own options, keyword-only
    image: str,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    volumes: Mapping[Path | str, str] | None = None,
    tmpfs: Sequence[str] = (),
    args: Sequence[str] = (),
    command: Sequence[str] = (),
) -> Container:
    """Start a container of `image` serving on `port` of the host network. `volumes` maps a
    host path (or a named volume) to where it is mounted; `tmpfs` mounts, e.g. "/tmp", or a
    full disk for the spool: "/var/lib/bridge:size=1m,uid=10001,gid=10001" (ENOSPC past 1 MiB);
    `args` other `docker run` options (e.g. "--read-only"); `command` replaces `serve`."""
    options = ["--detach", "--network", "host", "--env", f"BRIDGE_PORT={port}"]
    for name, value in (env or {}).items():
        options += ["--env", f"{name}={value}"]
    for source, target in (volumes or {}).items():
        options += ["--volume", f"{source}:{target}"]
    for mount in tmpfs:
        options += ["--tmpfs", mount]
    done = docker("run", *options, *args, image, *command)
    return Container(done.stdout.strip(), port)


@contextlib.contextmanager
def running(image: str, port: int, **kwargs: Any) -> Iterator[Container]:
    """`run`, and the container removed afterwards (its logs shown when the test failed)."""
    container = run(image, port, **kwargs)
    try:
        yield container
    except BaseException:
        print(container.logs()[-5000:])
        raise
    finally:
        container.remove()


def spool_dir(path: Path) -> Path:
    """A host folder the image's user (10001) may write: the spool volume of a test."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 10001, 10001)
    return path
