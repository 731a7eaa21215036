"""Benthos 4.27 (MIT), the tool one would pick instead of bridge, as a contestant in `make bench`:
its `http_server` input, a mapping and its `kafka_franz` output, configured as bridge is used
(bench/benthos/config.yaml says what it does and does not do) and held to one core
(GOMAXPROCS=1), as bridge has one worker.

Built from the Go module proxy by bench/benthos/main.go, which imports only Benthos's public
service package and the component packages io, pure and kafka (Redpanda Connect, its successor,
is not open-source licensed). Built once into the user cache, keyed by version, like Apache
Kafka's jars (~4 minutes the first time); without Go it is not measured, and the bench says so.

python -m bench.benthos    (builds it, prints where)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

VERSION = "4.27.0"  # also in bench/benthos/go.mod
SOURCE = Path(__file__).resolve().parent / "benthos"
CONFIG = SOURCE / "config.yaml"


def cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bridge" / f"benthos-{VERSION}"


def missing() -> str | None:
    """Why Benthos cannot be measured here, in one line; None when it can."""
    if not (cache() / "benthos").is_file() and shutil.which("go") is None:
        return f"go not found (it builds Benthos {VERSION} from the Go module proxy)"
    return None


def binary(timeout: float = 1800) -> Path:
    """The built Benthos, built on first use (into a temporary name, then renamed, so an
    interrupted build leaves nothing behind)."""
    target = cache() / "benthos"
    if target.is_file():
        return target
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(missing())
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same version
        if target.is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
        try:
            # -mod=mod: go.sum in the repo pins the modules; the proxy serves them.
            env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false"}
            built = staging / "benthos"
            subprocess.run(
                [go, "build", "-trimpath", "-o", str(built), "."],
                cwd=SOURCE,
                env=env,
                check=True,
                timeout=timeout,
            )
            built.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def command_and_env(
    port: int, bootstrap_servers: str, *, idempotent: bool
) -> tuple[list[str], dict[str, str]]:
    """How to start Benthos on `port`, writing to the broker at `bootstrap_servers`."""
    env = {
        **os.environ,
        "GOMAXPROCS": "1",  # one core, as bridge's one worker
        "BENCH_PORT": str(port),
        "BENCH_KAFKA": bootstrap_servers,
        "BENCH_IDEMPOTENT": str(idempotent).lower(),
    }
    return [str(binary()), "-c", str(CONFIG)], env


if __name__ == "__main__":
    # `make test` builds it before the suite (test_bench measures it), so that the minutes Go
    # takes on a new machine are not spent inside a test's time limit.
    print(f"Benthos {VERSION} not built: {missing()}" if missing() else binary())
