"""A container engine for the image tests, and the stand-in base they build on.

    python scripts/container_engine.py start   # install (root, Debian) and start dockerd if needed
    python scripts/container_engine.py base    # print the base image tag, making it once
    python scripts/container_engine.py kafka   # print the Apache Kafka image tag, making it once
    python scripts/container_engine.py stop    # stop dockerd, only if `start` started it

Run by `make engine` (which `.ci/run` calls before `make test`). Where it cannot (not root, not
Debian), it says why and exits 0: the image tests then skip, or fail under CI; a step that
fails where it should work (apt, dockerd, debootstrap) exits non-zero, naming it.

No container registry is reachable from the machines the suite runs on, so `python:3.11-slim`
cannot be pulled: a base of the same shape is made from Debian's own packages (debootstrap,
then `docker import`), once, tagged by a hash of everything that goes into it. The daemon runs
without iptables rules, IP forwarding or the docker0 bridge (every test container uses the host
network), so starting it changes no host setting and stopping it leaves nothing to restore.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bridge"
STATE = CACHE / "engine"
STARTED = STATE / "dockerd.pid"  # written only for a daemon this script started
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# The shape of python:3.11-slim: Debian, a Python 3.11 with venv and pip, CA certificates, tz.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "tzdata")
# Apache Kafka's broker in compose: Debian's JRE on that base; the jars from `make kafka`.
KAFKA_PACKAGES = ("openjdk-17-jre-headless", "ca-certificates")
HOST_CAS = Path("/usr/local/share/ca-certificates")
RECIPE = "2"  # bump when the way a base is made changes


def docker() -> str | None:
    """The Docker CLI to use: Debian's own (it builds with BuildKit without the buildx plugin)."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _cli() -> str:
    cli = docker()
    if cli is None:
        raise SystemExit("no docker CLI: run `make engine` first")
    return cli


def engine_ready() -> bool:
    cli = docker()
    if cli is None:
        return False
    probe = subprocess.run([cli, "info"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def missing() -> str | None:
    """Why this machine cannot run the image tests, or None."""
    if engine_ready():
        return None
    if docker() is None or shutil.which("dockerd") is None:
        return "no container engine (run `make engine` as root on Debian to install one)"
    return "the container engine is not running (`make engine` starts it)"


def start() -> int:
    if engine_ready():
        print("container engine: already running")
        return 0
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        print("container engine: not started (needs root on Debian); image tests will skip")
        return 0
    if shutil.which("dockerd") is None or shutil.which("debootstrap") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "docker.io", "debootstrap", "docker-compose"],
            check=True,
            env=env,
        )
    STATE.mkdir(parents=True, exist_ok=True)
    log = (STATE / "dockerd.log").open("ab")
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--pidfile",
            str(STATE / "dockerd.own.pid"),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,  # outlives `make engine`; stopped by `stop`
    )
    STARTED.write_text(str(daemon.pid))
    deadline = time.monotonic() + 60
    while not engine_ready():
        if daemon.poll() is not None or time.monotonic() > deadline:
            STARTED.unlink(missing_ok=True)
            print(f"container engine: dockerd did not start; see {STATE / 'dockerd.log'}")
            return 1
        time.sleep(0.5)
    print(f"container engine: dockerd started (pid {daemon.pid})")
    return 0


def stop() -> int:
    if not STARTED.exists():
        print("container engine: not started by us, left running")
        return 0
    pid = int(STARTED.read_text())
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        command = ""
    if command == "dockerd":
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"container engine: dockerd (pid {pid}) stopped")
    STARTED.unlink()
    return 0


def _inputs_hash(packages: tuple[str, ...], extra: bytes = b"") -> str:
    digest = hashlib.sha256()
    for part in (RECIPE, SUITE, MIRROR, *packages):
        digest.update(part.encode() + b"\0")
    for ca in sorted(HOST_CAS.glob("*.crt")):
        digest.update(ca.read_bytes())
    digest.update(extra)
    return digest.hexdigest()[:12]


def _image_exists(tag: str) -> bool:
    cli = _cli()
    found = subprocess.run([cli, "image", "inspect", tag], capture_output=True, check=False)
    return found.returncode == 0


def _rootfs(packages: tuple[str, ...], tag: str, changes: tuple[str, ...]) -> None:
    """Debian minbase with `packages`, the host's CA certificates trusted, imported as `tag`
    and kept as a tarball in the cache (the engine's images may be wiped, the cache not)."""
    cli = _cli()
    tarball = CACHE / f"{tag.replace(':', '-')}.tar"
    if not tarball.exists():
        with tempfile.TemporaryDirectory(prefix="bridge-base-") as root:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    SUITE,
                    root,
                    MIRROR,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            # Package downloads here pass through a TLS-inspecting proxy: its CA must be
            # trusted inside, as on the host.
            target = Path(root) / HOST_CAS.relative_to("/")
            for ca in sorted(HOST_CAS.glob("*.crt")):
                shutil.copy(ca, target / ca.name)
            subprocess.run(["chroot", root, "update-ca-certificates"], check=True)
            for cache in ("var/lib/apt/lists", "var/cache/apt/archives"):
                for item in (Path(root) / cache).glob("*"):
                    if item.is_file():
                        item.unlink()
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", root, "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
    command = [cli, "import"]
    for change in changes:
        command += ["--change", change]
    subprocess.run([*command, str(tarball), tag], check=True, stdout=subprocess.DEVNULL)


def base() -> str:
    """The stand-in for python:3.11-slim, made once per set of inputs."""
    changes = (
        "ENV LANG=C.UTF-8",
        # pip in a venv reads its own CA bundle unless told: the system's, with the host's CAs.
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        'CMD ["python3"]',
    )
    tag = f"bridge-base:{_inputs_hash(BASE_PACKAGES, repr(changes).encode())}"
    if not _image_exists(tag):
        _rootfs(BASE_PACKAGES, tag, changes)
    return tag


def kafka() -> str:
    """Apache Kafka's broker: Debian's JRE on the stand-in base, and the jars `make kafka`
    fetched; made once per set of inputs."""
    from bridge.devbrokers.launcher import kafka_classpath, kafka_version  # noqa: PLC0415 - needs the venv

    jars = sorted(kafka_classpath().glob("*.jar"))
    names = "\n".join(j.name for j in jars).encode()
    tag = f"bridge-kafka:{kafka_version()}-{_inputs_hash((base(), *KAFKA_PACKAGES), names)}"
    if _image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="bridge-kafka-") as context:
        libs = Path(context) / "libs"
        libs.mkdir()
        for jar in jars:
            shutil.copy(jar, libs / jar.name)
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base()}\n"
            "RUN apt-get update -q && apt-get install -y -q --no-install-recommends "
            f"{' '.join(KAFKA_PACKAGES)} && rm -rf /var/lib/apt/lists/*\n"
            "COPY libs /opt/kafka/libs\n"
            "RUN useradd --system --uid 10002 --no-create-home kafka\n"
            "USER 10002\n"
            'ENTRYPOINT ["java", "-cp", "/opt/kafka/libs/*"]\n'
        )
        subprocess.run(
            [_cli(), "build", "--network", "host", "-q", "-t", tag, context],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return tag


def main(argv: list[str]) -> int:
    match argv:
        case ["start"]:
            return start()
        case ["stop"]:
            return stop()
        case ["base"]:
            print(base())
            return 0
        case ["kafka"]:
            print(kafka())
            return 0
        case ["missing"]:
            print(missing() or "")
            return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
