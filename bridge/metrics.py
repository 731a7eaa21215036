"""Prometheus metrics. Label values are bounded sets: never case ids, event ids or tokens."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import __version__

if TYPE_CHECKING:
    from bridge.pipeline import Pipeline

# From a fast local ack (~1 ms) to the ack budget and the vendor's 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "bridge_notifications",
            "Notifications handled, by type (call, waba_template, chatbot, dlq) and outcome "
            "(stored: acknowledged by Kafka; spooled; duplicate: dropped as a retry).",
            ["type", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "bridge_rejected",
            "Requests answered with an error status, by reason.",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "bridge_store_latency_seconds",
            "From the request's arrival to Kafka's acknowledgement (or the spool's fsync).",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.kafka_errors = Counter(
            "bridge_kafka_errors",
            "Kafka publishes that failed or timed out, by operation (publish, drain).",
            ["operation"],
            registry=r,
        )
        Info("bridge_build", "Version of bridge and of Python.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )

    def watch(self, pipeline: Pipeline) -> None:
        """Gauges read from the pipeline at scrape time."""
        self.registry.register(_PipelineCollector(pipeline))


class _PipelineCollector(Collector):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        p = self._pipeline
        yield GaugeMetricFamily(
            "bridge_in_flight", "Notifications being handled now.", value=p.in_flight
        )
        yield GaugeMetricFamily(
            "bridge_kafka_up",
            "1 while the last publish to Kafka succeeded, 0 after a failure.",
            value=1 if p.kafka_up else 0,
        )
        yield GaugeMetricFamily(
            "bridge_dedup_event_ids", "Event ids remembered for duplicates.", value=len(p.dedup)
        )
        spool = p.spool
        if spool is None:
            return
        yield GaugeMetricFamily(
            "bridge_spool_depth", "Notifications waiting in the spool.", value=spool.depth
        )
        yield GaugeMetricFamily("bridge_spool_bytes", "Bytes held by the spool.", value=spool.bytes)
        yield GaugeMetricFamily(
            "bridge_spool_max_bytes", "Size limit of the spool.", value=spool.max_bytes
        )
        age = 0.0 if spool.oldest is None else max(0.0, time.time() - spool.oldest)
        yield GaugeMetricFamily(
            "bridge_spool_oldest_age_seconds",
            "Age of the oldest notification waiting in the spool (0 when empty).",
            value=age,
        )
        yield GaugeMetricFamily(
            "bridge_spool_quarantined",
            "Damaged spool entries moved to quarantine since start.",
            value=spool.quarantined,
        )
