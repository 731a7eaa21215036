from __future__ import annotations

from pathlib import Path

import pytest

from bridge.state.reserve import CAPACITY, LEDGER_SLOT, Reserve
from tests.helpers import fill_disk, tmpfs


def test_the_sent_ledger_is_read_back_after_a_restart(tmp_path: Path) -> None:
    reserve = Reserve(tmp_path / "r", 64 * 1024)
    assert reserve.open() == set()
    assert reserve.whole
    reserve.record({5, 3, 9})
    reserve.record({9, 11})  # the latest record replaces the one before
    reserve.close()
    again = Reserve(tmp_path / "r", 64 * 1024)
    assert again.open() == {9, 11}
    again.close()


def test_a_torn_record_leaves_the_previous_one(tmp_path: Path) -> None:
    reserve = Reserve(tmp_path / "r", 4096)
    reserve.open()
    reserve.record({1, 2})
    reserve.record({3})  # generation 2: the first slot
    reserve.close()
    with (tmp_path / "r").open("r+b") as file:  # the crash tore the last write
        file.seek(24)  # the seqs of the first slot
        file.write(b"\xff" * 8)
    again = Reserve(tmp_path / "r", 4096)
    assert again.open() == {1, 2}
    again.close()


def test_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    reserve = Reserve(tmp_path / "r", 4096)
    reserve.open()
    with pytest.raises(ValueError, match="do not fit"):
        reserve.record(set(range(CAPACITY + 1)))
    reserve.close()


@pytest.mark.mount
def test_the_reserve_is_given_back_and_taken_again_on_a_real_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        reserve = Reserve(disk / "r", 512 * 1024)
        reserve.open()
        assert reserve.whole
        filler = disk / "filler"
        fill_disk(filler)  # the disk is full: the reserve held its room
        reserve.record({7})  # recording needs no new space, even now
        reserve.release()
        assert (disk / "r").stat().st_size == 2 * LEDGER_SLOT
        fill_disk(filler)
        assert not reserve.restore()  # the filler took the room
        assert (disk / "r").stat().st_size == 2 * LEDGER_SLOT
        filler.unlink()
        assert reserve.restore()
        assert reserve.whole
        reserve.close()
        again = Reserve(disk / "r", 512 * 1024)
        assert again.open() == {7}
        again.close()
