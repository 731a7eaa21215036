"""The local durable spool: notifications Kafka did not acknowledge in time wait here.

One SQLite file (standard library) per process in `BRIDGE_SPOOL_DIR`, WAL journal with
`synchronous=FULL`: an `append` returns only once the entry is on disk, so the 200 that follows
survives a crash of the process or the machine (not the loss of the disk). Entries are kept in
arrival order (`seq`) with a CRC-32 each; a damaged entry is moved to the `quarantine` table and
reported, and a damaged file is moved aside and salvaged, never blocking the rest. The file also
holds the event ids recently stored, so duplicate suppression survives a restart (the spool is
the `bridge.state.dedup.EventIdStore`).

Its own disk's faults (see the README's delivery guarantees):
- full: a reserve (`bridge.state.reserve`) keeps room for the drain's deletes, and a ledger in it
  records what was sent before it is deleted, so a drain never sends an entry twice; appends
  are refused (503) while the reserve is not whole;
- its files deleted or replaced while serving: each write checks, after its commit, that the
  files it wrote are still the ones at their paths (four `stat` calls, 1-3 % of the fsync); a
  deleted file is rebuilt from the open one (`VACUUM INTO`, fsync, rename) before the write
  is acknowledged; a replaced one is left alone and writes are refused;
- a write that fails is answered 503, and readiness says why until a real write succeeds.

All SQLite work runs in one dedicated thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import logging
import os
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

from bridge.errors import ConfigError, SpoolError, SpoolFull
from bridge.notifications.record import Headers, Record
from bridge.state.reserve import CAPACITY, LEDGER_SLOT, Reserve

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
# Room kept back for the drain: deleting a batch of entries and compacting the file (measured:
# 500 entries of 5 kB need about 40 pages of WAL, a compaction of a 4 MB file about 60).
RESERVE_BYTES = 512 * 1024
# The WAL is checkpointed into the file every this many pages (SQLite's default, 1000, lets a
# small disk fill with WAL that can then never be checkpointed: the checkpoint needs as much room
# again in the main file). Measured with strace over 300 appends of 5 kB: 315 fdatasyncs with
# the default, 334 with 256 pages, 352 with 128.
WAL_PAGES = 256
DELETE_CHUNK = 50  # sent entries deleted per transaction (about 15 pages of WAL)
# Below this much free room on its disk, the spool gives deleted entries' pages back to it after
# each drain batch (the pages it keeps for later appends would leave the WAL no room to grow).
TIGHT = RESERVE_BYTES + 2 * WAL_PAGES * 4096
CHECK_TIMEOUT = 2.0  # seconds readiness waits for the spool's thread
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


def directory_problem(directory: Path) -> str | None:
    """What keeps `directory` from holding a spool, or None; creates it when missing. For the
    one line at start: the spool itself checks again as it opens."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "is not a directory"
    except OSError as exc:
        return f"cannot be created: {exc.strerror}"
    if not directory.is_dir():
        return "is not a directory"
    probe = directory / f".probe-{os.getpid()}"
    try:
        with probe.open("wb") as file:
            file.write(b"\0")
            file.flush()
            os.fsync(file.fileno())
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return _os_problem(exc)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    needed = RESERVE_BYTES + 2 * LEDGER_SLOT + FULL_MARGIN
    held = max((r.stat().st_size for r in directory.glob("spool-*.reserve")), default=0)
    free = _free_bytes(directory)
    if free + held < needed:
        return f"is full: {free} bytes free, the spool needs {needed}"
    return None


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "is on a read-only filesystem"
    if exc.errno in {errno.EACCES, errno.EPERM}:
        return "is not writable (permission denied)"
    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        return "is full"
    if exc.errno in {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}:
        return f"is on a filesystem without file locking (flock: {exc.strerror})"
    return f"cannot be written: {exc.strerror}"


def _free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _disk_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


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
        # Why the spool cannot take a write now (None: it can); set by a failed write, cleared
        # by the next that succeeds. `faults` counts the disk's faults since start, by kind.
        self.problem: str | None = None
        self.faults: Counter[str] = Counter()
        self.pending: set[int] = set()  # sent to Kafka, not yet deleted (see bridge.state.reserve)
        self.reserve: Reserve | None = None
        self._replaced = False  # a file at our path that is not ours: never touched
        self._identity: dict[Path, tuple[int, int]] = {}
        self._names: list[tuple[Path, str]] = []
        self._noticed: dict[Path, tuple[int, int]] | None = None  # the deletion last logged
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._db: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        self._closed = False
        self.appended = asyncio.Event()

    @property
    def writable(self) -> bool:
        return self.problem is None

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
        try:
            return self._open_files()
        except BaseException:
            self._close()
            raise

    def _open_files(self) -> SpoolReport:
        problem = directory_problem(self.directory)
        if problem is not None and not problem.startswith("is full"):
            # (a full disk is a state the spool can serve in: it drains, and refuses appends)
            raise ConfigError(f"BRIDGE_SPOOL_DIR={self.directory} {problem}")
        self.path = self._claim_slot()
        report = SpoolReport()
        self.reserve = Reserve(self.path.with_suffix(".reserve"), RESERVE_BYTES)
        self._db = self._connect_or_salvage(self.path, report)
        self.pending = self.reserve.open()
        if not self.reserve.whole:
            self._set_problem("disk full: no room for the spool's reserve", "disk_full")
        if self.pending:
            with contextlib.suppress(sqlite3.Error, OSError):
                self._delete_pending()
        rows = self._db.execute("SELECT seq, key, length(value), created FROM spool ORDER BY seq")
        for seq, key, size, created in rows:
            if seq in self.pending:
                continue
            self.keys[key] += 1
            self.depth += 1
            self.bytes += _size(key, size)
            self.oldest = created if self.oldest is None else self.oldest
        report.entries = self.depth
        report.quarantined = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        if self.depth == 0 and self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0:
            # A file from before the spool gave pages back: converted while it is empty (only
            # VACUUM can), or left as it is when the disk has no room for that.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._db.execute("VACUUM")
        self._identity = self._stat()
        return report

    def _connect_or_salvage(self, path: Path, report: SpoolReport) -> sqlite3.Connection:
        try:
            try:
                return self._connect(path, check=True)
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc) or not path.with_suffix(".reserve").exists():
                    raise
                # Opening takes room too (the WAL and its index): the reserve is for this.
                os.truncate(path.with_suffix(".reserve"), 2 * LEDGER_SLOT)
                return self._connect(path, check=True)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # not the file's content: its disk
                raise ConfigError(f"BRIDGE_SPOOL_DIR={self.directory}: {exc}") from None
            report.problems.append(f"spool file {path} is damaged: {exc}")
            report.salvaged_from = self._move_aside(path)
            self._db = self._connect(path, check=False)
            report.entries, report.lost = self._salvage(report.salvaged_from)
            return self._db

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
        new = not path.exists() or path.stat().st_size == 0
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            if new:  # (it must precede the first table; on an old file it would write to it)
                # Deleted entries give their pages back to the disk, which a full disk needs
                # (see `_compact`).
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
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
        """Copy every entry of a damaged file whose checksum verifies, wherever it sits, in
        spool order; return (kept, lost)."""
        db = self._conn()
        try:
            source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        except sqlite3.DatabaseError:
            return 0, 0
        last = 0
        with contextlib.suppress(sqlite3.DatabaseError, TypeError):
            last = source.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'spool'"
            ).fetchone()[0]
        seqs: set[int] = set()
        for order in ("ASC", "DESC"):  # the ends, as far as a scan reaches
            with contextlib.suppress(sqlite3.DatabaseError):
                for (seq,) in source.execute(f"SELECT seq FROM spool ORDER BY seq {order}"):
                    seqs.add(seq)
        kept = lost = 0
        if not seqs and last:
            logger.error(
                "no entry of %s could be reached by a scan: its entries up to seq %d are looked "
                "up one by one, and those that fail counted lost (some may have been drained)",
                damaged,
                last,
            )
        if seqs or last:
            # Then every seq in between by its own lookup: a scan stops at the first damaged
            # page, a lookup reaches each intact leaf through the tree. A seq whose lookup
            # fails was on a damaged page: lost (the spool drains in order, so the seqs
            # between its oldest and newest entries are all entries).
            first = min(seqs) if seqs else 1
            for seq in range(first, max(*seqs, last, first) + 1):
                try:
                    row = source.execute(
                        f"SELECT {_COLUMNS} FROM spool WHERE seq = ?", (seq,)
                    ).fetchone()
                except sqlite3.DatabaseError:
                    lost += 1
                    continue
                if row is None:
                    continue  # drained before (out of order, behind a refused entry)
                if row[6] != _checksum(row[1], row[2], row[3], row[4]):
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
        return kept, lost

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("spool is closed")
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.reserve is not None:
            self.reserve.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- its files, still at their paths ------------------------------------------------------

    def _files(self) -> list[Path]:
        assert self.path is not None  # noqa: S101 - only called once open
        return [
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_suffix(".lock"),
            self.path.with_suffix(".reserve"),
        ]

    def _stat(self) -> dict[Path, tuple[int, int]]:
        # On every write: plain os.stat of names built once (pathlib's cost twice the stats).
        if not self._names:
            self._names = [(path, str(path)) for path in self._files()]
        found = {}
        for path, name in self._names:
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(name)  # noqa: PTH116 - see above
                found[path] = (stat.st_dev, stat.st_ino)
        return found

    def _verify_files(self) -> None:
        """Make sure the entries written are in the files at the spool's paths: rebuild what
        was deleted (before the write is acknowledged); refuse when a file was replaced."""
        if self._replaced:
            raise SpoolError(self.problem or "spool file replaced")
        now = self._stat()
        changed = [p.name for p in self._identity if now.get(p) != self._identity[p]]
        if not changed:
            return
        database, wal, lock, reserve = self._files()
        if database in now and now[database] != self._identity[database]:
            self._replaced = True
            self.faults["file_replaced"] += 1
            self._set_problem(
                f"spool file {database} was replaced by another file while serving: writes "
                "refused (the entries this process holds are still drained from the file it has "
                "open); restart to use the new file",
                None,
            )
            raise SpoolError(self.problem or "")
        if now != self._noticed:  # once per deletion, not at each retry of a rebuild
            self._noticed = now
            self.faults["file_deleted"] += 1
            logger.error(
                "spool files deleted while serving (%s): rebuilding %s from the open file",
                ", ".join(changed),
                database,
            )
        try:
            if database not in now or wal not in now:
                self._rebuild(database)
            if lock not in now or now[lock] != self._identity[lock]:
                self._relock(lock)
            if reserve not in now or now[reserve] != self._identity[reserve]:
                assert self.reserve is not None  # noqa: S101
                self.reserve.close()
                self.reserve = Reserve(reserve, RESERVE_BYTES)
                self.reserve.open()
                self.reserve.record(self.pending)
        except (sqlite3.Error, OSError) as exc:
            # Tried again at the next write or check; meanwhile nothing is acknowledged.
            self._set_problem(f"spool files deleted, not rebuilt yet: {exc}", "write_error")
            raise SpoolError(f"spool: {self.problem}") from exc
        self._identity = self._stat()
        logger.warning("spool %s rebuilt: %d entries waiting", database, self.depth)

    def _rebuild(self, database: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fresh = database.with_name(database.name + ".rebuilt")
        fresh.unlink(missing_ok=True)
        db = self._conn()
        db.execute("VACUUM INTO ?", (str(fresh),))  # everything committed, as this process sees it
        with fresh.open("rb+") as file:
            os.fsync(file.fileno())
        # Closing checkpoints into the deleted file and removes the WAL by name: done before
        # the new file takes the name, so that no stale WAL is ever read beside it.
        db.close()
        self._db = None
        try:
            for suffix in ("-wal", "-shm"):
                database.with_name(database.name + suffix).unlink(missing_ok=True)
            fresh.replace(database)
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        finally:
            # The entries are in one of the two, fsynced: never left without a connection.
            self._db = self._connect(database if database.exists() else fresh, check=False)

    def _relock(self, lock: Path) -> None:
        if self._lock is not None:
            self._lock.close()
        self._lock = lock.open("wb")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._replaced = True
            self._set_problem(f"another process took {lock} while it was deleted", None)
            raise SpoolError(self.problem or "") from None

    def _set_problem(self, problem: str | None, fault: str | None) -> None:
        """Change the spool's state, logged once per change."""
        if problem == self.problem:
            return
        if problem is None:
            logger.warning("spool writable again (was: %s)", self.problem)
        else:
            logger.error("spool cannot take writes: %s", problem)
            if fault is not None:
                self.faults[fault] += 1
        self.problem = problem

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
        if self._replaced:
            raise SpoolError(self.problem or "spool file replaced")
        assert self.reserve is not None  # noqa: S101 - open
        if not self.reserve.restore():
            # Appends never eat into the room the drain needs to delete what it sent.
            self._set_problem("disk full: the spool keeps its reserve for the drain", "disk_full")
            raise SpoolError(f"spool: {self.problem}")
        db = self._conn()
        try:
            cursor = db.execute(
                "INSERT INTO spool (topic, key, value, headers, created, crc) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
        except sqlite3.Error as exc:
            if _disk_full(exc):
                self._set_problem(f"disk full: {exc}", "disk_full")
            else:
                self._set_problem(f"write failed: {exc}", "write_error")
            raise
        seq = int(cursor.lastrowid or 0)
        try:
            self._verify_files()
        except SpoolError:
            # Committed only to a file no longer at its path: answered 503, so taken back
            # (else the drain would send it from the open file beside the vendor's retry).
            with contextlib.suppress(sqlite3.Error):
                db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            raise
        self._set_problem(None, None)
        return seq

    async def head(self, limit: int) -> list[SpoolEntry]:
        """The oldest entries, in order, leaving out those sent and not yet deleted. Damaged
        ones are quarantined and skipped."""
        entries, damaged = await self._run(self._head, limit)
        for key, size in damaged:
            self._forget(key, size)
            self.quarantined += 1
        return entries

    def _head(self, limit: int) -> tuple[list[SpoolEntry], list[tuple[bytes | None, int]]]:
        db = self._conn()
        if self.pending:  # deletes that failed (a full disk): tried again first
            with contextlib.suppress(sqlite3.Error, OSError):
                self._delete_pending()
        room = CAPACITY - len(self.pending)
        if room <= 0:
            raise SpoolError(
                f"{len(self.pending)} entries sent to Kafka cannot be deleted from the spool "
                f"({self.problem or 'disk error'}): nothing more is sent until they are"
            )
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM spool ORDER BY seq LIMIT ?",
            (min(limit, room) + len(self.pending),),
        ).fetchall()
        entries: list[SpoolEntry] = []
        damaged: list[tuple[bytes | None, int]] = []
        for seq, topic, key, value, headers, created, crc in rows:
            if seq in self.pending:
                continue
            if len(entries) >= min(limit, room):
                break
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
        """Entries Kafka acknowledged: recorded as sent, then deleted. When the delete fails
        they stay recorded (`pending`): never sent again, nor counted as waiting, and deleted
        later. SpoolError only when they could not be recorded (then this process alone
        remembers them)."""
        done = list(entries)
        if not done:
            return
        for entry in done:
            self._forget(entry.record.key, entry.size)
        try:
            await self._run(self._remove, [e.seq for e in done])
        finally:
            if self.depth == 0:
                self.oldest = None
            else:
                with contextlib.suppress(SpoolError):
                    self.oldest = await self._run(self._oldest)

    def _remove(self, seqs: list[int]) -> None:
        assert self.reserve is not None  # noqa: S101 - open
        self.pending.update(seqs)
        self.reserve.record(self.pending)  # from here on, never sent again
        try:
            self._delete_pending()
        except sqlite3.Error as exc:
            # Recorded: the drain goes on (until the ledger is full), the delete is tried again
            # at the next batch and at each check.
            fault = "disk_full" if _disk_full(exc) else "write_error"
            self._set_problem(f"{len(self.pending)} sent entries not deleted yet: {exc}", fault)

    def _delete_pending(self) -> None:
        """Delete the entries recorded as sent, a chunk per transaction: on a full disk each
        chunk's WAL is checkpointed and truncated before the next, so the room a delete needs
        is bounded by a chunk (500 entries of 5 kB in one transaction needed more than the
        whole reserve)."""
        assert self.reserve is not None  # noqa: S101 - open
        seqs = sorted(self.pending)
        for start in range(0, len(seqs), DELETE_CHUNK):
            chunk = seqs[start : start + DELETE_CHUNK]
            try:
                self._delete(chunk)
            except sqlite3.Error as exc:
                if not _disk_full(exc) or not self.reserve.whole:
                    raise
                self._set_problem(f"disk full: {exc}", "disk_full")
                logger.warning(
                    "disk full: the spool releases its reserve to delete %d sent entries",
                    len(seqs) - start,
                )
                self.reserve.release()
                self._delete(chunk)
            # (The ledger keeps these seqs until the next record: deleting them again is
            # harmless, seqs are never reused.)
            self.pending.difference_update(chunk)
            if not self.reserve.whole:
                with contextlib.suppress(sqlite3.Error):
                    self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if not self.reserve.whole or _free_bytes(self.directory) < TIGHT:
            self._compact()

    def _compact(self) -> None:
        """Give the deleted entries' pages back to the disk and take the reserve again."""
        assert self.reserve is not None  # noqa: S101 - open
        db = self._conn()
        with contextlib.suppress(sqlite3.Error):
            # (executescript: each step of this pragma frees one page, and execute takes one)
            db.executescript("PRAGMA incremental_vacuum;")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if self.reserve.restore():
            logger.warning("the spool's reserve is whole again")

    def _delete(self, seqs: list[int]) -> None:
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
            db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _oldest(self) -> float | None:
        db = self._conn()
        row = db.execute(
            "SELECT seq, created FROM spool ORDER BY seq LIMIT ?", (len(self.pending) + 1,)
        ).fetchall()
        for seq, created in row:
            if seq not in self.pending:
                return float(created)
        return None

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
        try:
            db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", events)
            db.execute("DELETE FROM seen WHERE stored < ?", (expired_before,))
            db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

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
        """None when the spool can take entries, else why not. Bounded in time."""
        if self.max_bytes - self.bytes < FULL_MARGIN:
            return "full"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                return await self._run(self._health)
        except TimeoutError:
            return f"the spool did not answer within {CHECK_TIMEOUT:g}s"
        except SpoolError as exc:
            return str(exc)

    def _health(self) -> str | None:
        assert self.reserve is not None  # noqa: S101 - open
        self._verify_files()  # (raises while a file is replaced, or deleted and not rebuilt)
        if self.pending:
            with contextlib.suppress(sqlite3.Error, OSError):
                self._delete_pending()
        if not self.reserve.restore():
            self._set_problem("disk full: the spool keeps its reserve for the drain", "disk_full")
            return self.problem
        free = _free_bytes(self.directory)
        if free < FULL_MARGIN:
            self._set_problem(f"disk full: {free} bytes free", "disk_full")
            return self.problem
        if self.problem is not None:
            # The last write failed: only a real write says whether the next one will not.
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO seen VALUES ('', 0)")
                db.execute("DELETE FROM seen WHERE event_id = ''")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                return f"{self.problem} (a test write failed: {exc})"
            self._set_problem(None, None)
        return None

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise SpoolError("spool is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except (sqlite3.Error, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise SpoolError(f"spool: {self.last_error}") from exc
