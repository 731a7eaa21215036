"""Duplicate suppression: the vendor's retries of a notification carry the same event id.

An event id is remembered only once its notification is stored (acknowledged by Kafka or in
the spool), so a failed first attempt never hides the retry. The ids live in memory for the hot
path (insertion-ordered, so the oldest expire from the front) and are written to the spool's
SQLite file in batches, so the window survives a restart. A crash can lose the last batch (at
most `flush` interval); those retries are then stored twice, each with the same `event-id`.
"""

from __future__ import annotations

import time

from bridge.spool import Spool


class Deduplicator:
    def __init__(self, window: float, max_entries: int, store: Spool | None = None) -> None:
        self.window = window
        self.max_entries = max_entries
        self._store = store
        self._seen: dict[str, float] = {}
        self._pending: list[tuple[str, float]] = []

    def __len__(self) -> int:
        return len(self._seen)

    async def load(self) -> int:
        if self._store is None or self.window <= 0:
            return 0
        for event_id, stored in await self._store.remembered(time.time() - self.window):
            self._seen[event_id] = stored
        self._trim(time.time())
        return len(self._seen)

    def seen(self, event_id: str) -> bool:
        stored = self._seen.get(event_id)
        return stored is not None and stored >= time.time() - self.window

    def remember(self, event_id: str) -> None:
        if self.window <= 0:
            return
        now = time.time()
        self._seen.pop(event_id, None)  # move to the end: the order is the order of expiry
        self._seen[event_id] = now
        self._pending.append((event_id, now))
        self._trim(now)

    async def flush(self) -> None:
        if self._store is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        await self._store.remember(pending, expired_before=time.time() - self.window)

    def _trim(self, now: float) -> None:
        oldest_kept = now - self.window
        seen = self._seen
        while seen:
            first = next(iter(seen))
            if len(seen) <= self.max_entries and seen[first] >= oldest_kept:
                break
            del seen[first]
