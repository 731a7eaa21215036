from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bridge.errors import SpoolFull
from bridge.notifications.record import Record
from bridge.state.spool import Spool


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


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.8, 0.95])
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

    again = Spool(tmp_path, 10_000_000)
    report = await again.open()
    assert report.problems
    assert report.salvaged_from is not None
    assert report.salvaged_from.exists()
    assert 0 < report.entries == again.depth
    assert report.entries + report.lost == 40  # here no entry was drained: gaps are losses
    kept = await again.head(100)
    assert [int(e.record.value[:3]) for e in kept] == sorted(int(e.record.value[:3]) for e in kept)
    await again.append(Record("t", b"new", b"still works", []))
    await again.close()
