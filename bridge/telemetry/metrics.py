"""Prometheus metrics. Label values are bounded sets: never case ids, event ids or tokens.

With several workers (BRIDGE_WORKERS > 1) `bridge serve` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory and prometheus-client's multiprocess mode adds up the workers: counters and
histograms as they happen, gauges as each worker last set them (every second, and at scrape).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from bridge import __version__

# From a fast local ack (~1 ms) to the ack budget and the vendor's 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SPOOL_FAULTS = ("disk_full", "write_error", "file_deleted", "file_replaced")


class SpoolState(Protocol):
    """What the gauges read from the spool."""

    @property
    def depth(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def oldest(self) -> float | None: ...
    @property
    def quarantined(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    @property
    def pending(self) -> set[int]: ...
    @property
    def faults(self) -> Mapping[str, int]: ...


class State(Protocol):
    """What the gauges read from the service (the pipeline): read-only, and nothing more."""

    @property
    def in_flight(self) -> int: ...
    @property
    def kafka_up(self) -> bool: ...
    @property
    def remembered(self) -> int: ...
    @property
    def unavailable_topics(self) -> int: ...
    @property
    def spool(self) -> SpoolState | None: ...


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
            "Requests not stored, by reason: answered with an error status, or abandoned "
            "by the client (client_disconnected).",
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
        self.connections_closed = Counter(
            "bridge_connections_closed",
            "HTTP connections bridge closed, by reason: a deadline (header_timeout, "
            "body_timeout, idle_timeout), a limit (header_too_large, body_too_large, "
            "address_limit, connection_limit), or an answer that ends the connection "
            "(early_answer: sent before the body arrived; bad_request: not HTTP).",
            ["reason"],
            registry=r,
        )
        self.kafka_errors = Counter(
            "bridge_kafka_errors",
            "Kafka publishes that failed or timed out, by operation (publish, drain, event_ids).",
            ["operation"],
            registry=r,
        )
        self.dedup_unshared = Counter(
            "bridge_dedup_unshared",
            "Event ids stored that the event-ids topic did not take: only this process drops "
            "their retries (a retry reaching another process may be stored twice).",
            registry=r,
        )
        self.dedup_learned = Counter(
            "bridge_dedup_learned",
            "Event ids learned from the event-ids topic: stored by another process.",
            registry=r,
        )
        self.dedup_lag = Histogram(
            "bridge_dedup_share_lag_seconds",
            "From an event id's storing at another process to this process learning it.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10),
            registry=r,
        )
        self.kafka_refused = Counter(
            "bridge_kafka_refused",
            "Writes the broker refused, answered 503 and not spooled (or left in the spool), "
            "by reason: topic_authorization, cluster_authorization, topic_missing, too_large, "
            "policy, other.",
            ["reason"],
            registry=r,
        )
        Gauge(
            "bridge_build_info",
            "Version of bridge and of Python.",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        ).labels(__version__, platform.python_version()).set(1)

        def gauge(name: str, text: str, mode: str = "livesum") -> Gauge:
            return Gauge(name, text, registry=r, multiprocess_mode=mode)  # type: ignore[arg-type]

        self.connections = gauge("bridge_connections", "Open HTTP connections.")
        self.in_flight = gauge("bridge_in_flight", "Notifications being handled now.")
        self.kafka_up = gauge(
            "bridge_kafka_up", "1 while the last publish to Kafka succeeded, 0 after a failure.",
            "livemin",
        )  # fmt: skip
        self.dedup = gauge(
            "bridge_dedup_event_ids",
            "Event ids remembered for duplicates (the most any live worker holds: with shared ids "
            "each holds them all).",
            "livemax",
        )
        self.dedup_shared = gauge(
            "bridge_dedup_shared",
            "1 while event ids are shared through the event-ids topic, 0 while this process "
            "falls back to its own memory (or sharing is off).",
            "livemin",
        )
        self.topics_unavailable = gauge(
            "bridge_kafka_topics_unavailable",
            "Topics bridge writes that are missing or refused its last write (see /readyz).",
            "livemax",
        )
        self.spool_depth = gauge("bridge_spool_depth", "Notifications waiting in the spool.")
        self.spool_bytes = gauge("bridge_spool_bytes", "Bytes held by the spool.")
        self.spool_max_bytes = gauge("bridge_spool_max_bytes", "Size limit of the spool.")
        self.spool_age = gauge(
            "bridge_spool_oldest_age_seconds",
            "Age of the oldest notification waiting in the spool (0 when empty).",
            "livemax",
        )
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.spool_quarantined = gauge(
            "bridge_spool_quarantined", "Damaged spool entries moved to quarantine since start."
        )
        self.spool_writable = gauge(
            "bridge_spool_writable",
            "1 while the spool can take a write, 0 while it cannot (disk full, a write failed, "
            "its file replaced): /readyz says why under checks.spool.",
            "livemin",
        )
        self.spool_unremoved = gauge(
            "bridge_spool_sent_unremoved",
            "Spool entries Kafka acknowledged that the full disk has not let the spool delete "
            "yet: recorded as sent, never sent again.",
        )
        self.spool_faults = Gauge(
            "bridge_spool_disk_faults",
            "Faults of the spool's disk since start, by fault: disk_full (a write or delete "
            "found no room), write_error, file_deleted (rebuilt from the open file), "
            "file_replaced (writes refused until restart).",
            ["fault"],
            registry=r,
            multiprocess_mode="livesum",
        )
        for fault in SPOOL_FAULTS:  # each shown from the start, at 0
            self.spool_faults.labels(fault)

    def count(self, kind: str, outcome: str, seconds: float) -> None:
        """One notification handled (label children cached: this is on every request)."""
        key = (kind, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.notifications.labels(kind, outcome),
                self.latency.labels(outcome),
            )
        children[0].inc()
        if outcome != "duplicate":
            children[1].observe(seconds)

    def refresh(self, state: State) -> None:
        """Set the gauges from the service's state."""
        self.in_flight.set(state.in_flight)
        self.kafka_up.set(1 if state.kafka_up else 0)
        self.dedup.set(state.remembered)
        self.topics_unavailable.set(state.unavailable_topics)
        spool = state.spool
        if spool is not None:
            self.spool_depth.set(spool.depth)
            self.spool_bytes.set(spool.bytes)
            self.spool_max_bytes.set(spool.max_bytes)
            age = 0.0 if spool.oldest is None else max(0.0, time.time() - spool.oldest)
            self.spool_age.set(age)
            self.spool_quarantined.set(spool.quarantined)
            self.spool_writable.set(1 if spool.writable else 0)
            self.spool_unremoved.set(len(spool.pending))
            for fault in SPOOL_FAULTS:
                self.spool_faults.labels(fault).set(spool.faults.get(fault, 0))

    def exposition(self, state: State) -> tuple[bytes, str]:
        self.refresh(state)
        if MULTIPROCESS_DIR in os.environ:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
