"""The image, built from deploy/Dockerfile and run on a real container engine against the
suite's Apache Kafka, on the host network (loopback only): what an operator runs.

Skipped in one line without an engine (`make engine` installs and starts one, as root on
Debian); under CI=true they fail instead.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trustme
import yaml

from bridge.http.app import WEBHOOK_PATH
from bridge.http.ports import free_port
from bridge.settings import Settings
from tests.container import (
    SIZE_BUDGET_MB,
    START_BUDGET_S,
    VENV_BUDGET_MB,
    Build,
    Container,
    build,
    docker,
    engine,
    running,
    spool_dir,
)
from tests.helpers import (
    Broker,
    broker_settings,
    consume,
    notification,
    run_sync,
    wait_for,
)
from tests.traffic import (
    Answers,
    Landed,
    Proxy,
    assert_kept,
    full_disk,
    late,
    scrape,
    twice,
)

pytestmark = [pytest.mark.container, pytest.mark.apache, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TOKEN = "image-test-token-9Vq"
# Health checked every second in the tests (the image's 10 s would only make them wait).
FAST_HEALTH = ("--health-interval=1s", "--health-timeout=2s", "--health-retries=2")


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        "BRIDGE_HOST": "127.0.0.1",  # the host network: loopback only
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "BRIDGE_TOPIC_PREFIX": settings.topic_prefix,
        "BRIDGE_AUTH_TOKENS": TOKEN,
        **extra,
    }


def hardened() -> list[str]:
    """The `docker run` options the Helm chart's security contexts amount to."""
    values = yaml.safe_load((DEPLOY / "helm" / "bridge" / "values.yaml").read_text())
    context = values["securityContext"]
    pod = values["podSecurityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert pod["runAsNonRoot"] is True
    return [
        "--read-only",
        *(f"--cap-drop={c}" for c in context["capabilities"]["drop"]),
        "--security-opt=no-new-privileges",
        f"--user={pod['runAsUser']}:{pod['fsGroup']}",
    ]


def url(container: Container, path: str = "") -> str:
    return f"http://127.0.0.1:{container.port}{path}"


def ready(container: Container, timeout: float = 60.0) -> float:
    """Seconds until /readyz answers 200 (the container exiting fails the test)."""
    started = time.monotonic()

    def answered() -> bool:
        if container.inspect()["State"]["Status"] == "exited":
            pytest.fail(f"the container exited: {container.logs()[-3000:]}")
        try:
            return httpx2.get(url(container, "/readyz"), timeout=2).status_code == 200
        except httpx2.HTTPError:
            return False

    wait_for(answered, timeout, "/readyz to answer 200", interval=0.05)
    return time.monotonic() - started


def post(container: Container, body: bytes) -> int | None:
    try:
        return httpx2.post(
            url(container, f"{WEBHOOK_PATH}/{TOKEN}"), content=body, timeout=30
        ).status_code
    except httpx2.HTTPError:
        return None


def event_ids(broker: Broker, settings: Settings) -> set[str]:
    records = run_sync(broker.consume([f"{settings.topic_prefix}call"]))
    return {dict(r.headers)["event-id"].decode() for r in records}


@pytest.fixture
def settings(kafka_broker: Broker, topic_prefix: str, tmp_path: Path) -> Settings:
    return broker_settings(kafka_broker, topic_prefix, tmp_path)


def test_the_image_is_small_runs_as_its_own_user_and_leaves_no_volume(image: Build) -> None:
    config = docker("image", "inspect", image.tag, "--format", "{{json .}}").stdout
    inspected: dict[str, Any] = yaml.safe_load(config)
    assert inspected["Config"]["User"] == "10001:10001"
    assert not inspected["Config"].get("Volumes")  # no anonymous volume per `docker run`
    assert inspected["Config"]["Healthcheck"]["Test"] == [
        "CMD",
        "python3",
        "-m",
        "bridge.commands.healthcheck",
    ]
    size_mb = inspected["Size"] / 1e6
    probe = docker(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint=/bin/sh",
        image.tag,
        "-c",
        "id -u; id -g; du -sm /venv | cut -f1; "
        "/venv/bin/python -c 'import pip' 2>/dev/null && echo pip; "
        "/venv/bin/python -c 'import setuptools' 2>/dev/null && echo setuptools; "
        "ls /venv/bin",
    ).stdout.split()
    uid, gid, venv_mb = probe[:3]
    assert (uid, gid) == ("10001", "10001")
    assert "pip" not in probe[3:]  # neither importable nor on the PATH
    assert "setuptools" not in probe[3:]
    assert "bridge" in probe[3:]
    print(f"image {size_mb:.0f} MB, venv {venv_mb} MB, built in {image.seconds:.1f} s")
    assert size_mb <= SIZE_BUDGET_MB
    assert int(venv_mb) <= VENV_BUDGET_MB


def test_the_hardened_image_serves_end_to_end(
    image: Build, kafka_broker: Broker, settings: Settings, tmp_path: Path
) -> None:
    """The run the Helm chart prescribes: read-only root, every capability dropped, no new
    privileges, a volume for the spool, /tmp a tmpfs, two workers."""
    volume = spool_dir(tmp_path / "volume")
    with running(
        image.tag,
        settings.port,
        env=environment(settings, BRIDGE_WORKERS="2"),
        volumes={volume: "/var/lib/bridge"},
        tmpfs=["/tmp"],  # noqa: S108 - the container's /tmp, as the chart mounts it
        args=[*hardened(), *FAST_HEALTH],
    ) as container:
        ready(container)  # the start time is measured (and held) below, on one worker
        body = notification("case-img", 1)
        assert post(container, body) == 200
        assert "call:case-img/1" in event_ids(kafka_broker, settings)
        assert httpx2.get(url(container, "/readyz")).json()["status"] in {"ready", "degraded"}
        metrics = httpx2.get(url(container, "/metrics")).text
        assert re.search(r"^bridge_in_flight", metrics, re.MULTILINE)
        wait_for(lambda: container.health() == "healthy", 30, "the container to be healthy")
        # Not root, and nothing but the spool (and /tmp) writable.
        status = Path(f"/proc/{container.pid}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s", status, re.MULTILINE)
        assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE)
        assert container.exec("touch", "/venv/x").returncode != 0
        assert any(p.name.startswith("spool") for p in volume.iterdir())
        mounts = container.inspect()["Mounts"]
        assert [m["Destination"] for m in mounts] == ["/var/lib/bridge"]


def test_start_time_to_ready_is_within_budget(
    image: Build, settings: Settings, tmp_path: Path
) -> None:
    """`docker run` to /readyz 200, on the same volume each time. The machine is shared: the
    best of up to three starts is held to the budget (one start under it shows the image
    can; a regression slows them all)."""
    volume = spool_dir(tmp_path / "volume")
    timings: list[float] = []
    while len(timings) < 3 and min(timings, default=START_BUDGET_S) >= START_BUDGET_S:
        started = time.monotonic()
        with running(
            image.tag,
            settings.port,
            env=environment(settings),
            volumes={volume: "/var/lib/bridge"},
        ) as container:
            ready(container)
            timings.append(time.monotonic() - started)
    print(f"docker run to /readyz 200: {', '.join(f'{t:.2f}' for t in timings)} s")
    assert min(timings) < START_BUDGET_S


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    """A certificate and key the image's user can read, in a folder to mount."""
    folder = tmp_path / "tls"
    folder.mkdir()
    cert = trustme.CA().issue_cert("bridge.example.com")
    cert.private_key_pem.write_to_path(folder / "key.pem")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    for path in (folder, *folder.iterdir()):
        os.chown(path, 10001, 10001)
    (folder / "key.pem").chmod(stat.S_IRUSR)
    return folder


def container_pids(container: Container) -> list[int]:
    top = docker("top", container.id, "-eo", "pid").stdout.split()
    return [int(p) for p in top[1:]]


def test_the_healthcheck_follows_port_and_tls_and_sees_a_hung_bridge(
    image: Build, settings: Settings, tls: Path, tmp_path: Path
) -> None:
    port = free_port()
    assert port != 8080  # the port the old HEALTHCHECK always asked
    with running(
        image.tag,
        port,
        env=environment(
            settings,
            BRIDGE_TLS_CERTFILE="/run/tls/cert.pem",
            BRIDGE_TLS_KEYFILE="/run/tls/key.pem",
        ),
        volumes={spool_dir(tmp_path / "volume"): "/var/lib/bridge", tls: "/run/tls:ro"},
        args=FAST_HEALTH,
    ) as container:
        wait_for(lambda: container.health() == "healthy", 60, "healthy with TLS on a port")
        # Hung (every process stopped, as a deadlock would leave it): unhealthy.
        pids = container_pids(container)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: container.health() == "unhealthy", 30, "unhealthy when hung")
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: container.health() == "healthy", 30, "healthy again")


def stop_grace() -> int:
    """The stop grace deploy/docker-compose.yml gives the bridge, in seconds."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    text = compose["services"]["bridge"]["stop_grace_period"]
    return int(text.removesuffix("s"))


@pytest.fixture
def frozen(kafka_broker: Broker) -> Iterator[list[int]]:
    """Apache Kafka's processes, to stop (SIGSTOP: connections open, nothing answered) and
    given back afterwards whatever happens."""
    assert kafka_broker.cluster is not None
    pids = [n.pid for n in kafka_broker.cluster.nodes.values() if n.pid is not None]
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_docker_stop_with_kafka_frozen_and_requests_in_flight_loses_nothing(
    image: Build, kafka_broker: Broker, settings: Settings, frozen: list[int], tmp_path: Path
) -> None:
    grace = stop_grace()
    volume = spool_dir(tmp_path / "volume")
    with running(
        image.tag,
        settings.port,
        env=environment(settings),
        volumes={volume: "/var/lib/bridge"},
    ) as container:
        ready(container)
        assert post(container, notification("case-stop", 0)) == 200
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = [
                pool.submit(post, container, notification(f"case-stop-{n}", 1)) for n in range(3)
            ]
            wait_for(
                lambda: run_sync(scrape(url(container))).get("bridge_in_flight", 0) >= 3,
                15,
                "three requests in flight",
            )
            code, seconds = container.stop(grace)
            statuses = [a.result() for a in answers]
        print(f"docker stop -t {grace}: exit {code} after {seconds:.1f} s; {statuses}")
        assert code == 0, container.logs()[-3000:]
        assert seconds < grace
        assert all(s is not None and 200 <= s < 300 for s in statuses), statuses
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        container.start()  # the same container, on the same volume: its spool drains
        ready(container)
        wanted = {"call:case-stop/0"} | {f"call:case-stop-{n}/1" for n in range(3)}
        wait_for(
            lambda: wanted <= event_ids(kafka_broker, settings),
            90,
            "every request answered 2xx to be in Kafka",
            interval=1,
        )


@pytest.fixture
def proxy(kafka_broker: Broker) -> Iterator[Proxy]:
    """A proxy between the container and Apache Kafka (both on the host network), to cut."""
    front = Proxy(kafka_broker.bootstrap_servers)
    front.start()
    yield front
    front.stop()


# The spool's volume: a tmpfs of 4 MiB (about 500 notifications), far below
# BRIDGE_SPOOL_MAX_BYTES, owned by the image's user as a volume's fsGroup would make it.
SMALL_SPOOL = "/var/lib/bridge:size=4m,uid=10001,gid=10001,mode=0750"


async def test_the_hardened_image_on_a_full_spool_volume_answers_503_and_drains_once(
    image: Build, kafka_broker: Broker, settings: Settings, proxy: Proxy
) -> None:
    """Issue 21's full disk in the container: the chart's run (read-only root, no capability,
    no new privileges, its user), the spool a small volume, Kafka cut through a proxy. Load
    until the volume is full: 503 + Retry-After and /readyz not ready naming the spool; Kafka
    back: the spool drains, every 2xx is in Kafka once, each case in order, ready again."""
    with running(
        image.tag,
        settings.port,
        env=environment(
            settings,
            BRIDGE_KAFKA_BOOTSTRAP_SERVERS=proxy.bootstrap_servers,
            BRIDGE_WORKERS="1",  # the chart's
        ),
        tmpfs=[SMALL_SPOOL, "/tmp"],  # noqa: S108 - the container's /tmp, as the chart mounts it
        args=hardened(),
    ) as container:
        ready(container)
        while_full: dict[str, float] = {}

        async def cut() -> None:
            proxy.stop()

        async def restore() -> None:
            # Called once the disk is full and /readyz read: the metrics of that moment first.
            while_full.update(await scrape(url(container)))
            proxy.start()

        seen = await full_disk(
            url(container), url(container, f"{WEBHOOK_PATH}/{TOKEN}"), cut=cut, restore=restore
        )
        kafka = Landed.of(await kafka_broker.consume([f"{settings.topic_prefix}call"]))
    acknowledged = {s.event_id for s in seen.sent if s.acknowledged}
    print(
        f"full spool volume: {Answers.of(seen.sent)}; acknowledged {len(acknowledged)}, "
        f"in Kafka {len(kafka.counts)} distinct, duplicated {kafka.duplicates} (answered after "
        f"the ack budget {len(late(seen.sent))}), drained in {seen.drained_in:.1f} s"
    )
    refused = [s for s in seen.sent if s.status == 503]
    assert refused, Answers.of(seen.sent)
    assert {s.retry_after for s in refused} == {"60"}
    status, body = seen.when_full
    assert (status, body["status"]) == (503, "not ready"), body
    assert "disk full" in body["checks"]["spool"], body
    assert while_full["bridge_spool_writable"] == 0
    assert while_full['bridge_spool_disk_faults{fault="disk_full"}'] >= 1
    assert seen.after[0] == 200, seen.after
    assert seen.after[1]["status"] == "ready", seen.after
    assert seen.figures["bridge_spool_writable"] == 1
    assert seen.figures["bridge_spool_depth"] == 0
    assert seen.figures["bridge_spool_sent_unremoved"] == 0
    assert seen.figures['bridge_spool_disk_faults{fault="disk_full"}'] >= 1
    assert_kept(seen.sent, kafka)
    assert twice(kafka, seen.sent) == []


def test_buildkit_builds_it_without_a_registry(image: Build) -> None:
    """The base is local, and no `# syntax=` frontend is fetched: BuildKit builds offline."""
    tag = image.tag.replace("bridge-test:", "bridge-test-buildkit:")
    seconds = build(tag, image.base, buildkit=True)
    print(f"BuildKit build: {seconds:.1f} s")
    try:
        user = docker("image", "inspect", tag, "--format", "{{.Config.User}}").stdout.strip()
        assert user == "10001:10001"
    finally:
        docker("rmi", tag, check=False)


NOT_BUILDABLE = ("schema-registry", "prometheus", "grafana")  # images from registries only


def merge(base: Any, override: Any) -> Any:
    """Compose's own rule for an override file: mappings merged, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in override.items()}}
    return override


def compose_file(tmp_path: Path) -> Path:
    """deploy/docker-compose.yml with tests/compose.override.yml, on the host network: no
    published ports (Docker refuses them there, and an override cannot remove them), and
    without the services no registry here can give."""
    compose = merge(
        yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()),
        yaml.safe_load((ROOT / "tests" / "compose.override.yml").read_text()),
    )
    for name in NOT_BUILDABLE:
        del compose["services"][name]
    for service in compose["services"].values():
        service.pop("ports", None)
        for name in NOT_BUILDABLE:
            service.get("depends_on", {}).pop(name, None)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose))
    return path


def test_compose_brings_up_kafka_and_the_bridge_end_to_end(image: Build, tmp_path: Path) -> None:
    """deploy/docker-compose.yml with tests/compose.override.yml: Apache Kafka built here from
    the jars the suite fetches, the topics job, the bridge waiting for both; a notification
    end to end, and `docker-compose stop` within the file's stop grace, exit 0."""
    cli = shutil.which("docker-compose")
    if cli is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the compose test, but docker-compose is missing")
        pytest.skip("compose test: no docker-compose (`make engine` installs it)")
    project = f"bridge-test-{uuid.uuid4().hex[:8]}"
    command = [
        cli,
        "--project-name",
        project,
        "--project-directory",
        str(DEPLOY),
        "-f",
        str(compose_file(tmp_path)),
    ]
    kafka_port, bridge_port = free_port(), free_port()
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {
        **os.environ,
        "KAFKA_IMAGE": engine("kafka"),
        "BRIDGE_IMAGE": image.tag,
        "KAFKA_PORT": str(kafka_port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "BRIDGE_PORT": str(bridge_port),
        "TOPIC_PREFIX": prefix,
        "BRIDGE_AUTH_TOKENS": TOKEN,
    }

    def compose(*args: str, timeout: float = 240) -> str:
        done = subprocess.run(
            [*command, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def state(service: str) -> dict[str, Any]:
        [container_id] = compose("ps", "-q", service).split()
        inspected: list[dict[str, Any]] = yaml.safe_load(docker("inspect", container_id).stdout)
        state: dict[str, Any] = inspected[0]["State"]
        return state

    try:
        started = time.monotonic()
        compose("up", "-d", "bridge")  # Kafka until healthy, the topics job done, then bridge
        bridge = Container(compose("ps", "-q", "bridge").strip(), bridge_port)
        ready(bridge)
        print(f"docker-compose up to /readyz 200: {time.monotonic() - started:.1f} s")
        assert state("topics")["ExitCode"] == 0
        assert post(bridge, notification("case-compose", 1)) == 200
        records = run_sync(consume(f"127.0.0.1:{kafka_port}", [f"{prefix}call"]))
        assert "call:case-compose/1" in {dict(r.headers)["event-id"].decode() for r in records}
        started = time.monotonic()
        compose("stop", "bridge")  # with the file's stop_grace_period
        print(f"docker-compose stop bridge: {time.monotonic() - started:.1f} s")
        assert state("bridge")["ExitCode"] == 0
    except BaseException:
        print(compose("logs", "--tail", "50"))
        raise
    finally:
        compose("down", "--volumes", "--timeout", "30", timeout=120)
