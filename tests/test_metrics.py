from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pytest
from prometheus_client import generate_latest

from bridge.telemetry.metrics import MULTIPROCESS_DIR, Metrics


@dataclass
class SpoolNow:
    depth: int = 0
    bytes: int = 0
    max_bytes: int = 1000
    oldest: float | None = None
    quarantined: int = 0
    writable: bool = True
    pending: set[int] = field(default_factory=set)
    faults: dict[str, int] = field(default_factory=dict)


@dataclass
class StateNow:
    in_flight: int = 0
    kafka_up: bool = True
    remembered: int = 0
    unavailable_topics: int = 0
    spool: SpoolNow | None = None


def value(metrics: Metrics, name: str) -> float:
    text = _text(metrics)
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()  # as set, not refreshed


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)


def test_the_gauges_show_the_state_they_are_given() -> None:
    metrics = Metrics()
    spool = SpoolNow(depth=3, bytes=300, max_bytes=1000, oldest=time.time() - 60, quarantined=1)
    metrics.refresh(StateNow(in_flight=2, kafka_up=False, remembered=42, spool=spool))
    assert value(metrics, "bridge_in_flight") == 2
    assert value(metrics, "bridge_kafka_up") == 0
    assert value(metrics, "bridge_dedup_event_ids") == 42
    assert value(metrics, "bridge_spool_depth") == 3
    assert value(metrics, "bridge_spool_bytes") == 300
    assert value(metrics, "bridge_spool_max_bytes") == 1000
    assert value(metrics, "bridge_spool_quarantined") == 1
    assert 59 <= value(metrics, "bridge_spool_oldest_age_seconds") < 120
    assert value(metrics, "bridge_spool_writable") == 1


def test_the_spool_disk_gauges_show_its_faults() -> None:
    metrics = Metrics()
    text = _text(metrics)
    assert 'bridge_spool_disk_faults{fault="file_deleted"} 0.0' in text  # shown from the start
    spool = SpoolNow(writable=False, pending={4, 5}, faults={"disk_full": 2, "file_deleted": 1})
    metrics.refresh(StateNow(spool=spool))
    assert value(metrics, "bridge_spool_writable") == 0
    assert value(metrics, "bridge_spool_sent_unremoved") == 2
    text = _text(metrics)
    assert 'bridge_spool_disk_faults{fault="disk_full"} 2.0' in text
    assert 'bridge_spool_disk_faults{fault="file_deleted"} 1.0' in text
    assert 'bridge_spool_disk_faults{fault="file_replaced"} 0.0' in text


def test_an_empty_spool_has_no_age_and_no_spool_leaves_its_gauges_alone() -> None:
    metrics = Metrics()
    metrics.refresh(StateNow(spool=SpoolNow(oldest=None)))
    assert value(metrics, "bridge_spool_oldest_age_seconds") == 0
    metrics.refresh(StateNow(kafka_up=True, spool=None))
    assert value(metrics, "bridge_kafka_up") == 1
    assert value(metrics, "bridge_spool_max_bytes") == 1000  # as last set


def test_each_notification_is_counted_and_timed_except_duplicates() -> None:
    metrics = Metrics()
    metrics.count("call", "stored", 0.003)
    metrics.count("call", "stored", 0.2)
    metrics.count("call", "duplicate", 0.001)
    metrics.count("dlq", "spooled", 0.01)
    text = _text(metrics)
    assert 'bridge_notifications_total{outcome="stored",type="call"} 2.0' in text
    assert 'bridge_notifications_total{outcome="duplicate",type="call"} 1.0' in text
    assert 'bridge_store_latency_seconds_count{outcome="stored"} 2.0' in text
    assert 'bridge_store_latency_seconds_count{outcome="duplicate"} 0.0' in text
    assert 'bridge_store_latency_seconds_bucket{le="0.005",outcome="stored"} 1.0' in text


def test_the_exposition_refreshes_the_gauges_first() -> None:
    metrics = Metrics()
    content, media_type = metrics.exposition(StateNow(in_flight=5))
    assert media_type.startswith("text/plain")
    assert re.search(rb"^bridge_in_flight 5\.0$", content, re.MULTILINE)
    assert b'bridge_build_info{python="' in content
