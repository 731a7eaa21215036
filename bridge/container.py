"""The composition root: every long-lived part of the service, built once and handed its
collaborators; started in order and stopped in reverse, each stop bounded in time.

    spool, event-ids topic  <- dedup (its event ids shared through the topic, and kept in the
                               spool's file when the topic cannot take them)
    codec  <- registry ids (resolved at start)
    topic watch (its own Kafka connection, only with the Kafka publisher)
    publisher, registry, spool, dedup, codec, metrics, topic watch -> pipeline
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bridge.codec.encode import Codec
from bridge.codec.registry import SchemaRegistry, resolve_ids
from bridge.codec.schemas import load_schemas
from bridge.errors import BridgeError
from bridge.kafka.event_ids import SHARE_EVERY, EventIdTopic
from bridge.kafka.publish import KafkaPublisher, Publisher
from bridge.kafka.topics import TopicWatch
from bridge.pipeline import Pipeline
from bridge.settings import Settings
from bridge.state.dedup import Deduplicator
from bridge.state.spool import Spool
from bridge.telemetry.metrics import Metrics

lifecycle = logging.getLogger("bridge.lifecycle")
FLUSH_EVERY = 1.0  # seconds between writes of the event ids to the spool's file, unshared


class Container:
    def __init__(
        self,
        settings: Settings,
        publisher: Publisher | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.schemas = load_schemas(settings.schema_dir)
        self.codec = Codec(self.schemas)
        self.spool = (
            Spool(settings.spool_dir, settings.spool_max_bytes)
            if settings.spool_dir is not None
            else None
        )
        self.metrics = Metrics() if metrics is None else metrics
        # Shared through the Kafka the records go to; a publisher handed in (tests, dry runs)
        # has no Kafka of bridge's own to share through.
        self.event_ids = (
            EventIdTopic(settings, self.metrics)
            if settings.dedup_shared and settings.dedup_window > 0 and publisher is None
            else None
        )
        self.dedup = Deduplicator(
            settings.dedup_window, settings.dedup_max_entries, self.spool, self.event_ids
        )
        self.publisher = publisher or KafkaPublisher(settings)
        self.registry = SchemaRegistry(settings) if settings.schema_registry_url else None
        self.topics = TopicWatch(settings, kafka=publisher is None)
        self.pipeline = Pipeline(
            settings,
            self.publisher,
            schemas=self.schemas,
            codec=self.codec,
            spool=self.spool,
            dedup=self.dedup,
            registry=self.registry,
            metrics=self.metrics,
            topics=self.topics,
        )
        self._drainer: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the spool and read back its event ids, resolve the schema ids, connect to
        Kafka, read back the shared event ids, start draining the spool and sharing the ids.
        On failure, what was opened is closed again."""
        try:
            if self.spool is not None:
                await self._open_spool(self.spool)
                remembered = await self.dedup.load()
                lifecycle.info("%d event ids remembered: their retries are dropped", remembered)
            if self.registry is not None:
                self.codec.use_ids(await resolve_ids(self.registry, self.settings, self.schemas))
            await self.publisher.start()
            if self.event_ids is not None:  # never fails: without it, this process alone
                await self.event_ids.start(self.dedup.learn)
        except BaseException:
            if self.event_ids is not None:
                await self.event_ids.stop()
            await self.publisher.stop(timeout=2.0)  # a no-op when it never started
            if self.registry is not None:
                await self.registry.close()
            if self.spool is not None:
                await self.spool.close()
            raise
        self._drainer = asyncio.create_task(self.pipeline.drain_forever(), name="spool-drain")
        self._flusher = asyncio.create_task(self._flush_forever(), name="event-id-flush")

    async def _flush_forever(self) -> None:
        every = SHARE_EVERY if self.event_ids is not None else FLUSH_EVERY
        while True:
            await asyncio.sleep(every)
            try:
                await self.dedup.flush()
            except BridgeError as exc:  # the spool's file: the ids stay in memory
                lifecycle.warning("event ids not written to the spool: %s", exc)

    @staticmethod
    async def _open_spool(spool: Spool) -> None:
        report = await spool.open()
        for problem in report.problems:
            lifecycle.error("%s", problem)
        if report.salvaged_from is not None:
            lifecycle.error(
                "damaged spool moved to %s: %d entries kept, %d lost",
                report.salvaged_from,
                report.entries,
                report.lost,
            )
        lifecycle.info(
            "spool %s: %d entries waiting, %d in quarantine",
            spool.path,
            spool.depth,
            report.quarantined,
        )

    async def stop(self) -> None:
        # uvicorn has already stopped taking requests and waited for those in flight; whatever
        # Kafka did not acknowledge is in the spool, so nothing here may wait without bound.
        budget = self.settings.shutdown_timeout
        for task in (self._drainer, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await task
        with contextlib.suppress(BridgeError):
            await self.dedup.flush()  # shared within its budget, else kept in the file
        if self.event_ids is not None:
            await self.event_ids.stop()
        await self.publisher.stop(timeout=budget / 2)
        await self.topics.close()
        if self.registry is not None:
            await self.registry.close()
        if self.spool is not None:
            lifecycle.info("stopping with %d entries in the spool", self.spool.depth)
            await self.spool.close()


def build_pipeline(
    settings: Settings, publisher: Publisher, spool: Spool | None = None
) -> Pipeline:
    """A pipeline of its own, with what the container would give it short of the parts that
    need a Kafka of bridge's own (the shared event ids, the topic watch's questions) and of a
    registry: for `bridge replay --kafka`, tests and the bench. `spool` is opened and closed
    by the caller."""
    schemas = load_schemas(settings.schema_dir)
    return Pipeline(
        settings,
        publisher,
        schemas=schemas,
        codec=Codec(schemas),
        spool=spool,
        dedup=Deduplicator(settings.dedup_window, settings.dedup_max_entries, spool),
        registry=None,
        metrics=Metrics(),
        topics=TopicWatch(settings, kafka=False),
    )
