"""Duplicate suppression: the vendor's retries of a notification carry the same event id.

An event id is remembered only once its notification is stored (acknowledged by Kafka or in
the spool), so a failed first attempt never hides the retry. The ids live in memory for the hot
path (insertion-ordered, so the oldest expire from the front) and are written to an
`EventIdStore` (the spool's SQLite file) in batches, so the window survives a restart. A crash
can lose the last batch (at most `flush` interval); those retries are then stored twice, each
with the same `event-id`.

With several processes (workers, replicas) the ids are shared: each batch goes first to the
`SharedIds` (the `<prefix>event-ids` topic, `kafka.event_ids`), which every process follows and
`learn`s from, so a retry that reaches another process is dropped there too. The spool's table
then keeps only what the topic did not take (it was unavailable, or slower than its budget):
the topic already holds the window for every process and outlives any one of them, and a
second copy on disk would cost a SQLite write per id for nothing; what the topic could not
take is this process's alone, and the table keeps it dropped across a restart, as before.

Memory is what bounds the window under load (at 2,000 notifications/s the default 170,000 ids
cover 85 s), so each id costs little: memory keeps a 128-bit digest of it (an id of 37
characters takes 86 bytes, its digest 49), and the ids remembered in the same second share one
time stamp: about 120 bytes an id in all, the dict's table included. The file holds no more
ids than memory, so a flush and a restart cost the same after an hour of load as after a
minute.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

STAMP_EVERY = 1.0  # seconds: the time stamps' resolution (the window is minutes)
TRIM_TABLE_EVERY = 60.0  # seconds: with a topic, the table is only cleared of expired ids


class SharedIds(Protocol):
    """Where the ids are shared with the other processes: the event-ids topic."""

    async def share(self, events: list[tuple[bytes, float]]) -> bool:
        """Publish these (digest, stored at) pairs; True once acknowledged, False when they
        could not be (then this process alone remembers them)."""
        ...


class EventIdStore(Protocol):
    """Where remembered event ids outlive the process: the spool's file (`state.spool.Spool`)."""

    async def remember(self, events: list[tuple[str, float]], expired_before: float) -> None:
        """Keep these (event id, stored at) pairs; forget those stored before `expired_before`."""
        ...

    def remembered(self, since: float, limit: int) -> AsyncIterator[list[tuple[str, float]]]:
        """The newest `limit` ids stored since `since`, oldest first, a page at a time."""
        ...


def digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=16).digest()


class Deduplicator:
    def __init__(
        self,
        window: float,
        max_entries: int,
        store: EventIdStore | None = None,
        shared: SharedIds | None = None,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._store = store
        self._shared = shared
        self._table_trimmed = 0.0  # when the table last forgot its expired ids
        self._seen: dict[bytes, float] = {}  # digest -> its stamp
        # The order of expiry: each stamp with the digests remembered under it, oldest first.
        # (Not the dict's own order: the first live entry of a dict that ids leave from the
        # front lies past all the deleted ones, and finding it cost up to 150 us an id.)
        self._order: deque[tuple[float, deque[bytes]]] = deque()
        self._pending: list[tuple[str, bytes, float]] = []  # to share or keep, then forget

    def __len__(self) -> int:
        return len(self._seen)

    async def load(self) -> int:
        if self._store is None or self.window <= 0:
            return 0
        since = time.time() - self.window
        async for rows in self._store.remembered(since, self.max_entries):
            for event_id, stored in rows:  # oldest first
                self._add(digest(event_id), stored)
        self._trim(time.time())
        return len(self._seen)

    def seen(self, event_id: str) -> bool:
        stored = self._seen.get(digest(event_id))
        return stored is not None and stored >= time.time() - self.window

    def remember(self, event_id: str) -> None:
        if self.window <= 0:
            return
        now = time.time()
        key = digest(event_id)
        self._add(key, now)
        if self._store is not None or self._shared is not None:
            self._pending.append((event_id, key, now))
        self._trim(now)

    def learn(self, key: bytes, stored: float) -> bool:
        """Remember an id another process stored at `stored` (or this one, read back from the
        shared topic); False when it was known already or is out of the window."""
        now = time.time()
        if self.window <= 0 or stored < now - self.window:
            return False
        known = self._seen.get(key)
        # Known about as new (its stamp is up to a second older than when it was stored): this
        # process's own ids come back this way; adding them again would double their cost.
        if known is not None and known > stored - STAMP_EVERY:
            return False
        order = self._order
        # Never a stamp older than the newest (the topic's lag, interleaved batches at start, or
        # another replica's clock behind ours) nor one in the future (its clock ahead): joined
        # to the newest, it lives a little longer and costs no new stamp. Without this, a
        # replica's skew of a few seconds gave every learned and every own id a stamp of its
        # own: one (float, deque) per id instead of one per second.
        stored = min(stored, now)
        if order and stored < order[-1][0]:
            stored = order[-1][0]
        self._add(key, stored)
        self._trim(now)
        return True

    def _add(self, key: bytes, now: float) -> float:
        """Remember a digest under the current stamp (a new one each second, or when the clock
        was set back); the stamp it got."""
        order = self._order
        if not order or not 0 <= now - order[-1][0] < STAMP_EVERY:
            order.append((now, deque()))
        stamp, keys = order[-1]
        self._seen[key] = stamp  # a newer stamp for an id remembered before: kept longer
        keys.append(key)
        return stamp

    async def flush(self) -> None:
        """Share the ids remembered since the last flush; keep in the store what the topic
        could not take (or all, without a topic)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            shared = self._shared is not None and await self._shared.share(
                [(key, when) for _, key, when in pending]
            )
        except BaseException:
            # Cancelled (stopping) while sharing: the batch is neither in the topic nor in the
            # file yet; kept for the next flush, the one at stop, which writes it to the file.
            self._pending[:0] = pending
            raise
        if self._store is None:
            return
        now = time.time()
        if shared:
            if now - self._table_trimmed < TRIM_TABLE_EVERY:
                return
            pending = []  # only forget the expired (ids kept while the topic was away)
        self._table_trimmed = now
        # The file keeps what memory keeps: older ids than the oldest still in memory (expired,
        # or beyond max_entries) go from both, so the table stays as bounded as the dict.
        expired_before = now - self.window
        oldest_kept = self._order[0][0] if self._order else expired_before
        await self._store.remember(
            [(event_id, when) for event_id, _, when in pending],
            expired_before=max(expired_before, oldest_kept),
        )

    def _trim(self, now: float) -> None:
        """Forget the oldest: every id of an expired stamp, then single ids while over the
        limit. An id remembered again since holds a newer stamp and stays."""
        oldest_kept = now - self.window
        seen, order = self._seen, self._order
        while order:
            stamp, keys = order[0]
            expired = stamp < oldest_kept
            while keys and (expired or len(seen) > self.max_entries):
                key = keys.popleft()
                if seen.get(key) is stamp:
                    del seen[key]
            if keys:
                return
            order.popleft()
