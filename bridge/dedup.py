"""Duplicate suppression: the vendor's retries of a notification carry the same event id.

An event id is remembered only once its notification is stored (acknowledged by Kafka or in
the spool), so a failed first attempt never hides the retry. The ids live in memory for the hot
path (insertion-ordered, so the oldest expire from the front) and are written to the spool's
SQLite file in batches, so the window survives a restart. A crash can lose the last batch (at
most `flush` interval); those retries are then stored twice, each with the same `event-id`.

Memory is what bounds the window under load (at 2,000 notifications/s the default 200,000 ids
cover 100 s), so each id costs little: memory keeps a 128-bit digest of it (an id of 37
characters takes 86 bytes, its digest 49), and the ids remembered in the same second share one
time stamp. The file holds no more ids than memory, so a flush and a restart cost the same after
an hour of load as after a minute.
"""

from __future__ import annotations

import hashlib
import time

from bridge.spool import Spool

STAMP_EVERY = 1.0  # seconds: the time stamps' resolution (the window is minutes)


def _digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=16).digest()


class Deduplicator:
    def __init__(self, window: float, max_entries: int, store: Spool | None = None) -> None:
        self.window = window
        self.max_entries = max_entries
        self._store = store
        self._seen: dict[bytes, float] = {}
        self._pending: list[tuple[str, float]] = []
        self._stamp = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    async def load(self) -> int:
        if self._store is None or self.window <= 0:
            return 0
        since = time.time() - self.window
        stamps: dict[float, float] = {}  # one object per stamp, as when they were remembered
        async for rows in self._store.remembered(since, self.max_entries):
            for event_id, stored in rows:
                self._seen[_digest(event_id)] = stamps.setdefault(stored, stored)
        self._trim(time.time())
        return len(self._seen)

    def seen(self, event_id: str) -> bool:
        stored = self._seen.get(_digest(event_id))
        return stored is not None and stored >= time.time() - self.window

    def remember(self, event_id: str) -> None:
        if self.window <= 0:
            return
        now = time.time()
        if not 0 <= now - self._stamp < STAMP_EVERY:  # (a clock set back starts a new stamp)
            self._stamp = now
        stamp, key = self._stamp, _digest(event_id)
        self._seen.pop(key, None)  # move to the end: the order is the order of expiry
        self._seen[key] = stamp
        if self._store is not None:
            self._pending.append((event_id, stamp))
        self._trim(now)

    async def flush(self) -> None:
        if self._store is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        # The file keeps what memory keeps: older ids than the oldest still in memory (expired,
        # or beyond max_entries) go from both, so the table stays as bounded as the dict.
        expired_before = time.time() - self.window
        oldest_kept = next(iter(self._seen.values()), expired_before)
        await self._store.remember(pending, expired_before=max(expired_before, oldest_kept))

    def _trim(self, now: float) -> None:
        oldest_kept = now - self.window
        seen = self._seen
        while seen:
            first = next(iter(seen))
            if len(seen) <= self.max_entries and seen[first] >= oldest_kept:
                break
            del seen[first]
