"""`bridge dev --broker kafka`: the development loop on Apache Kafka's own broker (Tansu's, the
default, is tested in tests/test_cli.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import orjson
import pytest

from bridge.broker import free_port, kafka_missing
from tests.helpers import sample


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
    bootstrap = None
    try:
        assert process.stdout is not None
        banner = ""
        deadline = time.monotonic() + 240
        while "bridge tail" not in banner:
            line = process.stdout.readline()
            assert line or process.poll() is None, banner
            assert time.monotonic() < deadline, banner
            banner += line
        assert "Apache Kafka 4." in banner
        curl = re.search(r"--data-binary @(\S+) (\S+)", banner)
        bootstrap = re.search(r"BRIDGE_KAFKA_BOOTSTRAP_SERVERS=(\S+)", banner)
        assert curl is not None
        assert bootstrap is not None
        while True:  # the banner comes just before the server listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.1)
        response = httpx2.post(curl.group(2), content=Path(curl.group(1)).read_bytes(), timeout=20)
        assert response.status_code == 200
        tail_env = {**env, "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap.group(1)}
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
    broker_port = int(bootstrap.group(1).rpartition(":")[2])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker_port), timeout=0.5).close()
