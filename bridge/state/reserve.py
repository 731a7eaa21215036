"""Room the spool keeps back on its own disk, so that its drain can always make progress.

Removing a sent entry from SQLite is itself a write (WAL frames, then a checkpoint): on a full
disk it fails, and a drain that cannot remove what it sent sends it again. So each spool file
has a companion, `spool-N.reserve`, allocated when the spool opens:

    [ sent ledger: two slots of LEDGER_SLOT bytes ][ reserve: `size` bytes ]

- The **reserve** is allocated space the spool never writes. Appends are refused while it is
  not whole; when a removal finds the disk full, the reserve is released (the file truncated to
  the ledger) and the removal tried again in the room it gave back. It is allocated again once
  the disk has room (after the spool compacted its file).
- The **sent ledger** records, before the rows are deleted, the entries Kafka acknowledged: on
  space written once at creation, so recording needs no new blocks. A removal that fails still
  leaves them recorded, and they are neither sent again nor counted as waiting — after a
  restart too. Two slots, written in turn, each with a generation and a CRC: a torn write
  leaves the other slot, the previous record, readable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from pathlib import Path

LEDGER_SLOT = 32 * 1024
_HEADER = struct.Struct("<8sQII")  # magic, generation, count, crc of the seqs
_MAGIC = b"bridgeS1"
CAPACITY = (LEDGER_SLOT - _HEADER.size) // 8  # seqs one slot holds


class Reserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self.whole = False
        self._fd: int | None = None
        self._generation = 0

    def open(self) -> set[int]:
        """Open (or create) the file; the seqs it recorded as sent. Tries to make the reserve
        whole; `whole` says whether it is."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd = fd
        if os.fstat(fd).st_size < 2 * LEDGER_SLOT:
            # Written, not only allocated: a later record rewrites blocks that already exist.
            os.pwrite(fd, bytes(2 * LEDGER_SLOT), 0)
            os.fsync(fd)
        recorded = self._read()
        self.restore()
        return recorded

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> set[int]:
        best: tuple[int, set[int]] = (0, set())
        for slot in range(2):
            data = os.pread(self._descriptor(), LEDGER_SLOT, slot * LEDGER_SLOT)
            magic, generation, count, crc = _HEADER.unpack_from(data)
            body = data[_HEADER.size : _HEADER.size + 8 * count]
            if magic != _MAGIC or count > CAPACITY or zlib.crc32(body) != crc:
                continue
            if generation > best[0]:
                best = (generation, set(struct.unpack(f"<{count}q", body)))
        self._generation = best[0]
        return best[1]

    def record(self, seqs: set[int]) -> None:
        """Record `seqs` as sent (replacing the previous record) and fsync: no new space."""
        if len(seqs) > CAPACITY:
            raise ValueError(f"{len(seqs)} seqs do not fit in the sent ledger ({CAPACITY})")
        self._generation += 1
        body = struct.pack(f"<{len(seqs)}q", *sorted(seqs))
        header = _HEADER.pack(_MAGIC, self._generation, len(seqs), zlib.crc32(body))
        fd = self._descriptor()
        os.pwrite(fd, header + body, (self._generation % 2) * LEDGER_SLOT)
        os.fdatasync(fd)

    def release(self) -> None:
        """Give the reserve back to the disk (the ledger stays)."""
        os.ftruncate(self._descriptor(), 2 * LEDGER_SLOT)
        self.whole = False

    def restore(self) -> bool:
        """Allocate the reserve again if the disk has room; whether it is whole."""
        fd = self._descriptor()
        if self.whole:
            return True
        try:
            os.posix_fallocate(fd, 2 * LEDGER_SLOT, self.size)
        except OSError as exc:
            if exc.errno not in {errno.ENOSPC, errno.EDQUOT}:
                raise
            # Whatever part it did allocate goes back: half a reserve is no reserve.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 2 * LEDGER_SLOT)
            return False
        os.fsync(fd)
        self.whole = True
        return True

    def _descriptor(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, "the spool's reserve is closed")
        return self._fd
