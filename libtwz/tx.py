"""Undo-log transactions inside an object, after Twizzler's twz/tx.h.

The log lives in the object it protects, at a slot offset the program chooses, laid out as
Twizzler's `struct twz_tx`:

    u32 logsz @0, u32 tmpend @4 (unused here), u32 end @64, log[logsz] @128
    entry: u64 ptr (slot offset), u16 len, u16 next (bytes to the next entry, 8-aligned),
           value[len] @12 (the old bytes)

`record` appends the old bytes of a range and only then makes `end` cover the entry; the
program writes the range after `record` returns. Commit clears `end`; abort, and the check on
every start (Twizzler's TXCHECK, done by TXSTART too), restore the old values newest first and
then clear `end`. A kill -9 at any point therefore leaves either the whole transaction (end was
cleared) or none of it (the next start rolls back). Restoring is idempotent, so a kill during a
rollback is rolled back again. With `durable=True` each of those steps is also flushed to the
object's store before the next one (Twizzler's _clwb + _pfence), so the same holds across a
machine crash; without it, across the death of any process (the page cache keeps every store).

Like Twizzler's, a transaction is single-threaded: serialise writers yourself.
"""

import struct

from twzlinux.abi import constants as c

from .errors import TwzError
from .persist import fence, flush

LOGSZ, TMPEND, END, LOG = 0, 4, 64, 128
_HDR = struct.Struct("<QHH")  # ptr, len, next
_U32 = struct.Struct("<I")
_MAX_LEN = 0xFFFF - 16        # an entry's total length must fit `next`


class TxError(Exception):
    """A transaction cannot go on (the log is full); it has been rolled back."""


class Abort(Exception):
    """Raise inside `with tx:` to roll back without an error escaping (Twizzler's TXABORT)."""


class Tx:
    """The undo log at `offset` in `obj`. `Tx.create` sets one up; `Tx(obj, offset)` opens an
    existing one and rolls back whatever a crashed transaction left (TXCHECK)."""

    def __init__(self, obj, offset: int, *, durable: bool = True):
        self.obj, self.offset, self.durable = obj, offset, durable
        self.logsz = self._u32(LOGSZ)
        if not self.logsz:
            raise ValueError(f"no transaction log at {offset:#x} in object {obj.id} "
                             "(set one up with Tx.create)")
        self._ranges: list[tuple[int, int]] = []
        self.check()

    @classmethod
    def create(cls, obj, offset: int, logsz: int, **kw) -> "Tx":
        """Twizzler's tx_init: a log of `logsz` bytes at `offset` (which must hold 128 + logsz)."""
        if offset % 8 or logsz < 64 or offset + LOG + logsz > c.OBJ_TOPDATA:
            raise ValueError(f"bad transaction log placement {offset:#x}+{logsz:#x}")
        obj.write(offset, _U32.pack(logsz) + bytes(4))
        obj.write(offset + END, bytes(4))
        flush(obj, offset, LOG)
        return cls(obj, offset, **kw)

    def _u32(self, at: int) -> int:
        return _U32.unpack_from(self.obj.view(), self.offset + at)[0]

    def _set_end(self, end: int) -> None:
        fence()
        self.obj.write(self.offset + END, _U32.pack(end))
        self._persist(self.offset + END, 4)

    def _persist(self, off: int, n: int) -> None:
        if self.durable:
            flush(self.obj, off, n)

    # --- recording ----------------------------------------------------------------------------
    def record(self, off: int, n: int) -> None:
        """Save the current bytes of [off, off + n) so that an abort or crash restores them."""
        while n > _MAX_LEN:
            self.record(off, _MAX_LEN)
            off, n = off + _MAX_LEN, n - _MAX_LEN
        end = self._u32(END)
        size = (_HDR.size + n + 7) & ~7
        if end + size > self.logsz:
            self.abort()
            raise TxError(f"transaction log at {self.offset:#x} in object {self.obj.id} is full "
                          f"({self.logsz} bytes); the transaction was rolled back — give it a "
                          "bigger log or make it smaller")
        at = self.offset + LOG + end
        self.obj.write(at, _HDR.pack(off, n, size) + self.obj.read(off, n))
        self._persist(at, size)
        self._set_end(end + size)
        self._ranges.append((off, n))

    def write(self, off: int, data: bytes) -> None:
        """record, then write: the common case in one call."""
        self.record(off, len(data))
        self.obj.write(off, data)

    # --- ending -------------------------------------------------------------------------------
    def commit(self) -> None:
        """Make the transaction's writes permanent (flushed first when durable)."""
        if self.durable:
            for off, n in self._ranges:
                flush(self.obj, off, n)
        self._ranges.clear()
        self._set_end(0)

    def abort(self) -> None:
        self.check()

    def check(self) -> bool:
        """Roll back a transaction left pending (by a crash or an abort); True if there was one."""
        end = self._u32(END)
        if not end:
            self._ranges.clear()
            return False
        entries, pos = [], 0
        view = self.obj.view()
        while pos < end:
            ptr, n, step = _HDR.unpack_from(view, self.offset + LOG + pos)
            if step < _HDR.size + n or pos + step > end:
                raise TwzError(f"transaction log at {self.offset:#x} in object {self.obj.id} "
                               f"is corrupt (entry at {pos:#x}); it cannot be rolled back")
            entries.append((ptr, self.offset + LOG + pos + _HDR.size, n))
            pos += step
        for ptr, at, n in reversed(entries):
            self.obj.write(ptr, self.obj.read(at, n))
            self._persist(ptr, n)
        self._ranges.clear()
        self._set_end(0)
        return True

    # --- TXSTART ... TXEND ----------------------------------------------------------------------
    def __enter__(self) -> "Tx":
        self.check()
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            self.commit()
            return False
        self.abort()
        return kind is Abort
