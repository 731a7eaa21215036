"""The local durable spool: notifications Kafka did not acknowledge in time wait here.

One SQLite file (standard library) per process in `BRIDGE_SPOOL_DIR`, WAL journal with
`synchronous=FULL`: an `append` returns only once the entry is on disk, so the 200 that follows
survives a crash of the process or the machine (not the loss of the disk). Entries are kept in
arrival order (`seq`) with a CRC-32 each; a damaged entry is moved to the `quarantine` table and
reported, and a damaged file is moved aside and salvaged, never blocking the rest. The file also
holds the event ids recently stored, so duplicate suppression survives a restart (the spool is
the `bridge.state.dedup.EventIdStore`).

All SQLite work runs in one dedicated thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from bridge.errors import SpoolError, SpoolFull
from bridge.notifications.record import Headers, Record

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    created REAL NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER, topic TEXT, key BLOB, value BLOB, headers BLOB, created REAL, crc INTEGER,
    reason TEXT NOT NULL, moved REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, stored REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (stored, event_id);
"""
_COLUMNS = "seq, topic, key, value, headers, created, crc"
FULL_MARGIN = 64 * 1024  # readiness calls the spool full when less room than this is left
ENTRY_OVERHEAD = 64  # bytes counted per entry beyond its key and value (row, index, headers)


def _size(key: bytes | None, value_size: int) -> int:
    """What an entry counts against BRIDGE_SPOOL_MAX_BYTES."""
    return value_size + len(key or b"") + ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A record waiting in the spool: its place in line and when it arrived."""

    seq: int
    record: Record
    created: float

    @property
    def size(self) -> int:
        return _size(self.record.key, len(self.record.value))


@dataclass
class SpoolReport:
    """What `open` found: the operator reads this in the log at start."""

    entries: int = 0
    quarantined: int = 0
    salvaged_from: Path | None = None
    lost: int = 0
    problems: list[str] = field(default_factory=list)


def _checksum(topic: str, key: bytes | None, value: bytes, headers: bytes) -> int:
    crc = zlib.crc32(topic.encode())
    crc = zlib.crc32(b"\x00" if key is None else b"\x01" + key, crc)
    crc = zlib.crc32(value, crc)
    return zlib.crc32(headers, crc)


def _pack_headers(headers: Headers) -> bytes:
    return orjson.dumps([[name, base64.b64encode(value).decode()] for name, value in headers])


def _unpack_headers(packed: bytes) -> Headers:
    return [(name, base64.b64decode(value)) for name, value in orjson.loads(packed)]


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.path: Path | None = None
        self.keys: Counter[bytes | None] = Counter()  # keys with entries waiting, for ordering
        self.depth = 0
        self.bytes = 0
        self.oldest: float | None = None
        self.quarantined = 0
        self.last_error: str | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._db: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        self._closed = False
        self.appended = asyncio.Event()

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> SpoolReport:
        return await self._run(self._open)

    async def close(self) -> None:
        if self._closed:
            return
        await self._run(self._close)
        self._closed = True
        self._executor.shutdown(wait=True)

    def _open(self) -> SpoolReport:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self._claim_slot()
        report = SpoolReport()
        try:
            self._db = self._connect(self.path, check=True)
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"spool file {self.path} is damaged: {exc}")
            report.salvaged_from = self._move_aside(self.path)
            self._db = self._connect(self.path, check=False)
            report.entries, report.lost = self._salvage(report.salvaged_from)
        rows = self._db.execute("SELECT seq, key, length(value), created FROM spool ORDER BY seq")
        for _, key, size, created in rows:
            self.keys[key] += 1
            self.depth += 1
            self.bytes += _size(key, size)
            self.oldest = created if self.oldest is None else self.oldest
        report.entries = self.depth
        report.quarantined = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return report

    def _claim_slot(self) -> Path:
        # One spool file per process; several workers take the first free slot each.
        for slot in range(64):
            lock = (self.directory / f"spool-{slot}.lock").open("wb")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._lock = lock
            return self.directory / f"spool-{slot}.sqlite3"
        raise SpoolError(f"no free spool slot in {self.directory}")

    @staticmethod
    def _connect(path: Path, *, check: bool) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if check:
                result = db.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(result)  # noqa: TRY301 - same handling as sqlite's own
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _move_aside(path: Path) -> Path:
        aside = path.with_name(f"{path.stem}.damaged-{int(time.time())}.sqlite3")
        path.rename(aside)
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                companion.rename(aside.with_name(aside.name + suffix))
        return aside

    def _salvage(self, damaged: Path) -> tuple[int, int]:
        """Copy every readable, intact entry of a damaged file; return (kept, lost)."""
        db = self._conn()
        try:
            source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        except sqlite3.DatabaseError:
            return 0, 0
        expected = last = 0
        with contextlib.suppress(sqlite3.DatabaseError):
            expected = source.execute("SELECT count(*) FROM spool").fetchone()[0]
        with contextlib.suppress(sqlite3.DatabaseError, TypeError):
            last = source.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'spool'"
            ).fetchone()[0]
        seqs: set[int] = set()
        for order in ("ASC", "DESC"):  # reach the entries on both sides of a damaged page
            with contextlib.suppress(sqlite3.DatabaseError):
                for (seq,) in source.execute(f"SELECT seq FROM spool ORDER BY seq {order}"):
                    seqs.add(seq)
        kept = lost = 0
        for seq in sorted(seqs):
            try:
                row = source.execute(
                    f"SELECT {_COLUMNS} FROM spool WHERE seq = ?", (seq,)
                ).fetchone()
            except sqlite3.DatabaseError:
                lost += 1
                continue
            if row is None or row[6] != _checksum(row[1], row[2], row[3], row[4]):
                lost += 1
                continue
            db.execute(f"INSERT INTO spool ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            kept += 1
        with contextlib.suppress(sqlite3.DatabaseError):
            db.executemany(
                "INSERT OR IGNORE INTO seen VALUES (?, ?)",
                source.execute("SELECT event_id, stored FROM seen").fetchall(),
            )
        source.close()
        # Entries on unreadable pages leave gaps in `seq` (an upper bound: a gap can also be
        # an entry drained out of order after a failed wave).
        gaps = (max(*seqs, last) - min(seqs) + 1 - len(seqs)) if seqs else 0
        return kept, max(lost + gaps, expected - kept)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("spool is closed")
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- entries ------------------------------------------------------------------------------

    async def append(self, record: Record) -> int:
        """Store one record durably; raise SpoolFull or SpoolError when it cannot."""
        topic, key, value = record.topic, record.key, record.value
        size = _size(key, len(value))
        if self.bytes + size > self.max_bytes:
            raise SpoolFull(f"spool full ({self.bytes} of {self.max_bytes} bytes)")
        created = time.time()
        packed = _pack_headers(record.headers)
        crc = _checksum(topic, key, value, packed)
        self.bytes += size  # reserve before the await, so concurrent appends respect the limit
        try:
            seq = await self._run(self._insert, (topic, key, value, packed, created, crc))
        except BaseException:
            self.bytes -= size
            raise
        self.keys[key] += 1
        self.depth += 1
        self.oldest = created if self.oldest is None else self.oldest
        self.appended.set()
        return seq

    def _insert(self, row: tuple[Any, ...]) -> int:
        db = self._conn()
        cursor = db.execute(
            "INSERT INTO spool (topic, key, value, headers, created, crc) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )
        return int(cursor.lastrowid or 0)

    async def head(self, limit: int) -> list[SpoolEntry]:
        """The oldest entries, in order. Damaged ones are quarantined and skipped."""
        entries, damaged = await self._run(self._head, limit)
        for key, size in damaged:
            self._forget(key, size)
            self.quarantined += 1
        return entries

    def _head(self, limit: int) -> tuple[list[SpoolEntry], list[tuple[bytes | None, int]]]:
        db = self._conn()
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM spool ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        entries, damaged = [], []
        for seq, topic, key, value, headers, created, crc in rows:
            try:
                if crc != _checksum(topic, key, value, headers):
                    raise ValueError("checksum mismatch")  # noqa: TRY301
                record = Record(topic, key, value, _unpack_headers(headers))
                entries.append(SpoolEntry(seq, record, created))
            except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                logger.error("spool entry %d is damaged (%s): moved to quarantine", seq, exc)  # noqa: TRY400
                self._quarantine(seq, str(exc))
                damaged.append((key, _size(key, len(value or b""))))
        return entries, damaged

    async def quarantine(self, entry: SpoolEntry, reason: str) -> None:
        """Move an entry Kafka refuses for good out of the way, keeping it for the operator."""
        logger.error("spool entry %d refused by Kafka (%s): moved to quarantine", entry.seq, reason)
        await self._run(self._quarantine, entry.seq, reason)
        self._forget(entry.record.key, entry.size)
        self.quarantined += 1

    def _quarantine(self, seq: int, reason: str) -> None:
        db = self._conn()
        db.execute("BEGIN")
        db.execute(
            f"INSERT INTO quarantine SELECT {_COLUMNS}, ?, ? FROM spool WHERE seq = ?",
            (reason, time.time(), seq),
        )
        db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
        db.execute("COMMIT")

    async def remove(self, entries: Iterable[SpoolEntry]) -> None:
        done = list(entries)
        if not done:
            return
        await self._run(self._delete, [e.seq for e in done])
        for entry in done:
            self._forget(entry.record.key, entry.size)
        if self.depth == 0:
            self.oldest = None
        else:
            self.oldest = await self._run(self._oldest)

    def _delete(self, seqs: list[int]) -> None:
        db = self._conn()
        db.execute("BEGIN")
        db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
        db.execute("COMMIT")

    def _oldest(self) -> float | None:
        db = self._conn()
        row = db.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def _forget(self, key: bytes | None, size: int) -> None:
        self.keys[key] -= 1
        if self.keys[key] <= 0:
            del self.keys[key]
        self.depth -= 1
        self.bytes -= size

    # -- event ids (duplicate suppression) ----------------------------------------------------

    async def remember(self, events: list[tuple[str, float]], expired_before: float) -> None:
        await self._run(self._remember, events, expired_before)

    def _remember(self, events: list[tuple[str, float]], expired_before: float) -> None:
        db = self._conn()
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", events)
        db.execute("DELETE FROM seen WHERE stored < ?", (expired_before,))
        db.execute("COMMIT")

    async def remembered(
        self, since: float, limit: int, page: int = 5000
    ) -> AsyncIterator[list[tuple[str, float]]]:
        """The newest `limit` ids stored since `since`, oldest first, `page` rows at a time
        (all at once, 200,000 rows left 100 MB of freed memory that the process kept)."""
        last = (await self._run(self._cutoff, since, limit), "")
        while rows := await self._run(self._page, last, page):
            yield rows
            last = (rows[-1][1], rows[-1][0])

    def _cutoff(self, since: float, limit: int) -> float:
        row = (
            self._conn()
            .execute("SELECT stored FROM seen ORDER BY stored DESC LIMIT 1 OFFSET ?", (limit - 1,))
            .fetchone()
        )
        return since if row is None else max(since, float(row[0]))

    def _page(self, after: tuple[float, str], size: int) -> list[tuple[str, float]]:
        return (
            self._conn()
            .execute(
                "SELECT event_id, stored FROM seen WHERE (stored, event_id) > (?, ?) "
                "ORDER BY stored, event_id LIMIT ?",
                (*after, size),
            )
            .fetchall()
        )

    # -- health -------------------------------------------------------------------------------

    async def check(self) -> str | None:
        """None when the spool can take entries, else why not."""
        if self.max_bytes - self.bytes < FULL_MARGIN:
            return "full"
        try:
            await self._run(self._probe)
        except SpoolError as exc:
            return str(exc)
        return None

    def _probe(self) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise SpoolError("spool is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except (sqlite3.Error, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise SpoolError(f"spool: {self.last_error}") from exc
