from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from bridge.errors import ConfigError, SpoolError, SpoolFull
from bridge.notifications.record import Record
from bridge.state.spool import Spool, SpoolEntry, directory_problem
from tests.helpers import fill_disk, tmpfs


async def opened(directory: Path, max_bytes: int = 10_000_000) -> Spool:
    spool = Spool(directory, max_bytes)
    await spool.open()
    return spool


async def test_entries_come_back_in_order_with_everything_kept(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for i in range(5):
        await spool.append(
            Record("t.call", b"case-%d" % (i % 2), b"value-%d" % i, [("h", b"%d" % i)])
        )
    await spool.append(Record("t.dlq", None, b"raw", []))
    entries = await spool.head(100)
    assert [e.record.value for e in entries] == [
        b"value-0",
        b"value-1",
        b"value-2",
        b"value-3",
        b"value-4",
        b"raw",
    ]
    assert entries[3].record.headers == [("h", b"3")]
    assert entries[5].record.key is None
    assert spool.depth == 6
    assert spool.keys == {b"case-0": 3, b"case-1": 2, None: 1}
    await spool.remove(entries[:4])
    assert spool.depth == 2
    assert spool.keys == {b"case-0": 1, None: 1}
    await spool.close()


async def test_entries_survive_a_restart(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.append(Record("t.call", b"k", b"v", []))
    await spool.close()
    again = await opened(tmp_path)
    assert again.depth == 1
    assert again.keys == {b"k": 1}
    assert again.oldest is not None
    assert [e.record.value for e in await again.head(10)] == [b"v"]
    await again.close()


async def test_a_full_spool_refuses(tmp_path: Path) -> None:
    spool = await opened(tmp_path, max_bytes=2 * 1024 * 1024)
    await spool.append(Record("t", b"k", b"x" * 1024 * 1024, []))
    with pytest.raises(SpoolFull):
        await spool.append(Record("t", b"k", b"x" * 1024 * 1024, []))
    assert spool.depth == 1
    assert await spool.check() is None
    await spool.append(Record("t", b"k", b"x" * (1024 * 1024 - 64 * 1024), []))
    assert await spool.check() == "full"
    await spool.close()


async def test_a_damaged_entry_is_quarantined_and_does_not_block_the_rest(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for i in range(3):
        await spool.append(Record("t", b"k", b"value-%d" % i, []))
    assert spool.path is not None
    with sqlite3.connect(spool.path) as db:  # a bit flips on disk
        db.execute("UPDATE spool SET value = ? WHERE value = ?", (b"valuE-1", b"value-1"))
    entries = await spool.head(10)
    assert [e.record.value for e in entries] == [b"value-0", b"value-2"]
    assert spool.quarantined == 1
    assert spool.depth == 2
    with sqlite3.connect(spool.path) as db:
        assert db.execute("SELECT value, reason FROM quarantine").fetchall() == [
            (b"valuE-1", "checksum mismatch")
        ]
    await spool.close()


async def test_each_process_takes_its_own_spool_file(tmp_path: Path) -> None:
    first, second = await opened(tmp_path), await opened(tmp_path)
    assert first.path != second.path
    await first.close()
    await second.close()
    third = await opened(tmp_path)
    assert third.path == first.path  # a freed slot is taken again, with what it holds
    await third.close()


async def remembered(spool: Spool, since: float, limit: int) -> list[tuple[str, float]]:
    return [row async for page in spool.remembered(since, limit) for row in page]


async def test_event_ids_are_remembered_on_disk(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.remember([("a", 100.0), ("b", 200.0)], expired_before=150.0)
    assert await remembered(spool, 0, 10) == [("b", 200.0)]
    await spool.close()


async def test_remembered_gives_the_newest_ids_oldest_first(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.remember([(f"e{i}", float(i)) for i in range(10)], expired_before=0)
    assert await remembered(spool, 2, 3) == [("e7", 7.0), ("e8", 8.0), ("e9", 9.0)]
    assert await remembered(spool, 8, 5) == [("e8", 8.0), ("e9", 9.0)]
    await spool.remember([(f"f{i:03}", 20.0) for i in range(250)], expired_before=0)  # one second
    pages = [page async for page in spool.remembered(0, 1000, page=100)]
    assert [len(p) for p in pages] == [100, 100, 60]
    assert [row for page in pages for row in page] == [
        *((f"e{i}", float(i)) for i in range(10)),
        *((f"f{i:03}", 20.0) for i in range(250)),
    ]
    await spool.close()


def readable(path: Path) -> list[int]:
    """The entries of a spool file that a lookup by seq reads whole (their checksum holds)."""
    found = []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for seq in range(1, 41):
            with contextlib.suppress(sqlite3.DatabaseError):
                row = db.execute(
                    "SELECT topic, key, value, headers, crc FROM spool WHERE seq = ?", (seq,)
                ).fetchone()
                if row is not None and row[4] == zlib.crc32(
                    row[3],
                    zlib.crc32(row[2], zlib.crc32(b"\x01" + row[1], zlib.crc32(row[0].encode()))),
                ):
                    found.append(int(row[2][:3]))
    return found


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.65, 0.8, 0.95])
async def test_a_damaged_file_is_moved_aside_and_what_is_readable_is_kept(
    tmp_path: Path, where: float
) -> None:
    spool = await opened(tmp_path)
    for i in range(40):
        await spool.append(Record("t", b"k%d" % i, b"%03d" % i + b"x" * 3000, []))
    path = spool.path
    assert path is not None
    await spool.close()
    size = path.stat().st_size
    with path.open("r+b") as file:  # a run of garbage over a few pages
        file.seek(int(size * where) // 4096 * 4096)
        file.write(b"\xde\xad\xbe\xef" * 2048)

    intact = readable(path)  # what can be read, entry by entry, before the spool moves it
    damaged = path.read_bytes()

    again = Spool(tmp_path, 10_000_000)
    report = await again.open()
    assert report.problems
    assert report.salvaged_from is not None
    assert report.salvaged_from.read_bytes() == damaged  # kept byte for byte
    assert 0 < report.entries == again.depth
    kept = await again.head(100)
    assert [int(e.record.value[:3]) for e in kept] == intact  # every one, in order
    assert report.lost == 40 - len(intact)  # here no entry was drained: the rest are lost
    await again.append(Record("t", b"new", b"still works", []))
    await again.close()


# --- its own disk's faults, on real filesystems ----------------------------------------------


def entry(i: int) -> Record:
    """An entry of about the size of the vendor's call notification in Avro (5 kB)."""
    return Record("t.call", b"case-%d" % (i % 7), b"%06d" % i + os.urandom(5000), [])


async def fill(spool: Spool, first: int = 0) -> int:
    """Append until the spool refuses; how many it took."""
    i = first
    while True:
        try:
            await spool.append(entry(i))
        except SpoolError:
            return i - first
        i += 1


def number(e: SpoolEntry) -> int:
    return int(e.record.value[:6])


@pytest.mark.mount
async def test_a_full_disk_drains_to_the_end_without_sending_an_entry_twice(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        spool = await opened(disk, max_bytes=1024**3)  # the disk fills long before the limit
        stored = await fill(spool)
        assert stored > 100
        assert spool.problem is not None
        assert "disk full" in (await spool.check() or "")
        assert spool.faults["disk_full"] >= 1
        sent: list[int] = []
        while spool.depth:
            batch = await spool.head(500)  # the drain's batch, one key each or not
            assert batch
            sent += [number(e) for e in batch]
            await spool.remove(batch)
        assert sent == list(range(stored))  # each once, in order
        assert spool.pending == set()
        assert await spool.check() is None  # its reserve taken again: it takes writes
        assert spool.writable
        assert await fill(spool, stored) > 50
        await spool.close()


@pytest.mark.mount
async def test_sent_entries_the_full_disk_keeps_are_not_sent_again_even_after_a_restart(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        spool = await opened(disk, max_bytes=1024**3)
        stored = await fill(spool)
        assert spool.reserve is not None
        spool.reserve.release()  # someone else takes even the reserve's room
        filler = disk / "filler"
        fill_disk(filler)
        first = await spool.head(30)
        await spool.remove(first)  # in Kafka, but the delete cannot be written
        assert len(spool.pending) == 30
        assert "30 sent entries not deleted yet" in (spool.problem or "")
        assert spool.depth == stored - 30
        again = await spool.head(30)
        assert [number(e) for e in again] == list(range(30, 60))  # not the first 30 again
        await spool.close()  # (as a crash: the delete never happened)
        with sqlite3.connect(disk / "spool-0.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM spool").fetchone()[0] == stored

        filler.unlink()
        restarted = await opened(disk, max_bytes=1024**3)
        assert restarted.depth == stored - 30
        assert [number(e) for e in await restarted.head(3)] == [30, 31, 32]
        assert restarted.pending == set()  # the recorded ones are deleted at start
        await restarted.close()
        with sqlite3.connect(disk / "spool-0.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM spool").fetchone()[0] == stored - 30


async def test_a_deleted_spool_file_is_rebuilt_before_the_write_is_acknowledged(
    tmp_path: Path,
) -> None:
    spool = await opened(tmp_path)
    for i in range(3):
        await spool.append(entry(i))
    assert spool.path is not None
    before = spool.path.stat().st_ino
    for file in tmp_path.glob("spool-0*"):  # an operator's rm, a tmp cleaner
        file.unlink()
    await spool.append(entry(3))  # acknowledged: it is in the file at the path
    assert spool.path.stat().st_ino != before
    assert spool.faults["file_deleted"] == 1
    assert await spool.check() is None
    await spool.append(entry(4))
    await spool.close()
    again = await opened(tmp_path)  # what a crash would find
    assert [number(e) for e in await again.head(10)] == [0, 1, 2, 3, 4]
    await again.close()


async def test_a_deletion_is_noticed_by_readiness_while_nothing_is_written(
    tmp_path: Path,
) -> None:
    spool = await opened(tmp_path)
    await spool.append(entry(0))
    assert spool.path is not None
    spool.path.with_name(spool.path.name + "-wal").unlink()
    assert await spool.check() is None  # rebuilt
    assert spool.faults["file_deleted"] == 1
    await spool.close()
    again = await opened(tmp_path)
    assert again.depth == 1
    await again.close()


async def test_a_replaced_spool_file_is_left_alone_and_writes_are_refused(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for i in range(3):
        await spool.append(entry(i))
    assert spool.path is not None
    stranger = tmp_path / "stranger.sqlite3"
    with sqlite3.connect(stranger) as db:
        db.execute("CREATE TABLE t (x)")
    stranger.replace(spool.path)
    with pytest.raises(SpoolError, match="replaced"):
        await spool.append(entry(3))
    assert spool.depth == 3  # the refused write is not waiting
    assert "replaced" in (await spool.check() or "")
    assert spool.faults["file_replaced"] == 1
    assert [number(e) for e in await spool.head(10)] == [0, 1, 2]  # still drained
    await spool.close()


@pytest.mark.mount
@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        ("read-only", "is on a read-only filesystem"),
        ("file", "is not a directory"),
        ("full", "is full"),
        ("under-a-file", "cannot be created"),
    ],
)
async def test_a_spool_directory_that_cannot_hold_a_spool_is_named_at_start(
    tmp_path: Path, setup: str, problem: str
) -> None:
    directory = tmp_path / "spool"
    with contextlib.ExitStack() as stack:
        if setup == "read-only":
            stack.enter_context(tmpfs(directory, "1m", read_only=True))
        elif setup == "full":
            stack.enter_context(tmpfs(directory, "256k"))
        elif setup == "file":
            directory.write_text("")
        else:
            (tmp_path / "file").write_text("")
            directory = tmp_path / "file" / "spool"
        assert problem in (directory_problem(directory) or "")
        if setup != "full":  # a full disk: the spool opens, drains, refuses appends
            with pytest.raises(ConfigError, match=f"BRIDGE_SPOOL_DIR={directory} {problem}"):
                await opened(directory)


def test_a_filesystem_without_locking_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(*_: object) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)  # as an NFS mount without its lock daemon
    assert directory_problem(tmp_path) == (
        "is on a filesystem without file locking (flock: No locks available)"
    )


async def test_the_file_check_costs_little_beside_the_fsync(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.append(entry(0))
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        spool._verify_files()
    check = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for i in range(50):
        await spool.append(entry(i))
    append = (time.perf_counter() - started) / 50
    print(f"file check {check * 1e6:.1f} us, append {append * 1e6:.0f} us")
    assert check < append / 10
    await spool.close()


async def test_an_empty_file_of_an_older_bridge_learns_to_give_pages_back(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "spool-0.sqlite3") as db:  # as the spool made them before
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE seen (event_id TEXT PRIMARY KEY, stored REAL NOT NULL)")
        db.execute("INSERT INTO seen VALUES ('e1', 1.0)")
    spool = await opened(tmp_path)
    assert spool._conn().execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert await remembered(spool, 0, 10) == [("e1", 1.0)]
    await spool.close()


@pytest.mark.mount
async def test_deleted_files_that_cannot_be_rebuilt_yet_refuse_writes_until_they_are(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        spool = await opened(disk)
        for i in range(100):
            await spool.append(entry(i))
        filler = disk / "filler"
        fill_disk(filler)
        os.truncate(filler, filler.stat().st_size - 64 * 1024)  # room for a write, not a copy
        for file in disk.glob("spool-0*"):
            file.unlink()
        with pytest.raises(SpoolError, match="not rebuilt yet"):
            await spool.append(entry(100))
        assert "not rebuilt yet" in (await spool.check() or "")
        assert spool.faults["file_deleted"] == 1  # one deletion, however often it is retried
        assert spool.depth == 100
        filler.unlink()
        assert await spool.check() is None  # rebuilt now
        await spool.append(entry(101))
        await spool.close()
        again = await opened(disk)
        # 100 was answered 503, and taken back: not drained beside the vendor's retry
        assert [number(e) for e in await again.head(200)] == [*range(100), 101]
        await again.close()
