"""`bridge dev --broker kafka`: the development loop on Apache Kafka's own broker (Tansu's, the
default, is tested in tests/test_cli.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx2
import orjson
import pytest

from bridge.devbrokers.launcher import kafka_missing
from bridge.http.ports import free_port
from tests.helpers import DevBanner, sample, wait_for_port


@pytest.mark.kafka
@pytest.mark.timeout(300)  # the broker's jars may be fetched first
def test_dev_on_apache_kafka_serves_a_notification_and_stops_both_on_ctrl_c() -> None:
    missing = kafka_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (CI must run the Apache Kafka tests)")
        pytest.skip(missing)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_PORT=str(port), BRIDGE_LOG_LEVEL="warning")
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "dev", "--broker", "kafka"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner: DevBanner | None = None
    try:
        banner = DevBanner.read(process, timeout=240)
        assert "Apache Kafka 4." in banner.text
        wait_for_port(port, timeout=60, process=process)  # it listens just after the banner
        response = httpx2.post(banner.url, content=banner.example.read_bytes(), timeout=20)
        assert response.status_code == 200
        tail_env = {**env, "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": banner.bootstrap_servers}
        tailed = subprocess.run(
            [sys.executable, "-m", "bridge", "tail", "--from-beginning", "--until-idle", "3"],
            env=tail_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert orjson.loads(tailed.stdout)["notification"] == sample("call")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
        process.communicate()
    assert code == 0
    assert banner is not None
    banner.assert_broker_gone()
