"""thread_sync and what is built on it: sleep and wake on object words, Twizzler's
crash-resetting mutex, events over several words (reference §1.3, §4.4, §4.5).

Everything runs in this process through the native runtime (twz/thread.h): a sleep is a shared
futex on the word, keyed by (object, offset) like Twizzler's sync points, so a wake through any
mapping of the object in any process reaches it. twzd is never asked. The GIL is released while
a call sleeps.

Words are named by (object, offset): an `Object` handle and a slot offset.
"""

from twzlinux.abi import constants as c

from .errors import TwzError, syscall_error
from .runtime import ffi, lib

SLEEP, WAKE = c.THREAD_SYNC_SLEEP, c.THREAD_SYNC_WAKE
_ETIMEDOUT = 110
_U64 = (1 << 64) - 1
# integer addresses straight to C: a cast to a pointer per call would cost more than the futex
_sleep64, _wake = lib.twz_sync_sleep64, lib.twz_sync_wake
_load, _store = lib.twz_rt_load64, lib.twz_rt_store64


def _word(obj, offset: int, align: int = 8) -> int:
    if offset < c.OBJ_NULLPAGE_SIZE or offset + align > c.OBJ_MAXSIZE or offset % align:
        raise ValueError(f"offset {offset:#x}: a sync word must be {align}-byte aligned, past "
                         "the null page and inside the object")
    return obj.address + offset


def _timespec(timeout):
    if timeout is None:
        return ffi.NULL
    if timeout < 0:
        raise ValueError("timeout must be >= 0 seconds")
    sec = int(timeout)
    return ffi.new("struct timespec *", {"tv_sec": sec, "tv_nsec": int((timeout - sec) * 1e9)})


def thread_sync(ops, timeout=None) -> list[int]:
    """Twizzler's THRD_SYNC: ops are (SLEEP|WAKE, obj, offset, arg[, bits]) with bits 64 or 32.

    Wakes happen first-to-last; the call sleeps only if every SLEEP's word equals its arg, until
    a wake on any of them or the timeout (seconds). Returns each op's res (1 or -errno); raises
    TwzError if no op succeeded. A timeout is not an error: re-check the words."""
    n = len(ops)
    args = ffi.new("struct sys_thread_sync_args[]", max(n, 1))
    for i, (op, obj, offset, arg, *bits) in enumerate(ops):
        is32 = bits == [32]
        if bits not in ([], [32], [64]):
            raise ValueError(f"op {i}: bits must be 32 or 64, not {bits[0]}")
        a = args[i]
        a.addr = ffi.cast("uint64_t *", _word(obj, offset, 4 if is32 else 8))
        a.arg = arg & (0xFFFFFFFF if is32 else 0xFFFFFFFFFFFFFFFF)
        a.op, a.flags = op, c.THREAD_SYNC_32BIT if is32 else 0
    r = lib.twz_thread_sync_multiple(n, args, _timespec(timeout))
    if r < 0 and r != -_ETIMEDOUT:
        raise syscall_error(-r, "thread_sync")
    return [args[i].res - (1 << 64) if args[i].res >> 63 else args[i].res for i in range(n)]


def sleep(obj, offset: int, expected: int, timeout=None) -> bool:
    """Sleep while the 64-bit word at `offset` holds `expected`, until woken or `timeout`
    seconds pass. False if the timeout expired; True otherwise (woken, or the word differed)."""
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0 seconds")
    r = _sleep64(_word(obj, offset), expected & _U64, -1 if timeout is None else int(timeout * 1e9))
    if r < 0 and r != -_ETIMEDOUT:
        raise syscall_error(-r, "thread_sync sleep")
    return r != -_ETIMEDOUT


def wake(obj, offset: int, count: int = -1) -> None:
    """Wake up to `count` sleepers on the word (-1: all)."""
    r = _wake(_word(obj, offset), count)
    if r < 0:
        raise syscall_error(-r, "thread_sync wake")


class Word:
    """A 64-bit sync word at `offset` of `obj`, checked once: the fast way to sleep and wake on
    the same word again and again (a ping-pong, a queue's head)."""

    __slots__ = ("addr", "_p")

    def __init__(self, obj, offset: int):
        self.addr = _word(obj, offset)
        self._p = ffi.cast("uint64_t *", self.addr)

    def load(self) -> int:
        return _load(self._p)

    def store(self, value: int) -> None:
        _store(self._p, value)

    def sleep(self, expected: int, timeout=None) -> bool:
        """As `sleep`: False if the timeout expired."""
        r = _sleep64(self.addr, expected, -1 if timeout is None else int(timeout * 1e9))
        if r < 0:
            if r == -_ETIMEDOUT:
                return False
            raise syscall_error(-r, "thread_sync sleep")
        return True

    def wake(self, count: int = -1) -> None:
        r = _wake(self.addr, count)
        if r < 0:
            raise syscall_error(-r, "thread_sync wake")


class Mutex:
    """Twizzler's `struct mutex` {sleep, resetcode} (16 bytes) at `offset` of `obj`.

    Zeroed memory is a free mutex. A mutex held by a thread that died under an earlier twzd boot
    is free again: its resetcode is not this boot's KCONF_RDRESET. One held by a thread that died
    under this boot stays held, as in Twizzler."""

    SIZE = 16

    def __init__(self, obj, offset: int):
        if not obj.writable:
            raise TwzError(f"a mutex needs a writable handle of {obj.id}; open it with write=True")
        self._m = ffi.cast("struct mutex *", _word(obj, offset))

    def init(self) -> None:
        lib.mutex_init(self._m)

    def acquire(self) -> None:
        lib.mutex_acquire(self._m)

    def try_acquire(self) -> bool:
        return bool(lib.mutex_try_acquire(self._m))

    def release(self) -> None:
        lib.mutex_release(self._m)

    def __enter__(self):
        lib.mutex_acquire(self._m)
        return self

    def __exit__(self, *exc):
        lib.mutex_release(self._m)


def event_wait(events, timeout=None) -> list[int]:
    """Wait until any of `events`, (obj, offset, mask) triples naming a 64-bit event header and
    the event bits wanted from it, has a bit set. Returns the ready bits of each (all zero on
    timeout); may return early with nothing ready, as Twizzler's event_wait may."""
    n = len(events)
    evs = ffi.new("struct event[]", max(n, 1))
    for i, (obj, offset, mask) in enumerate(events):
        lib.event_init(evs + i, ffi.cast("struct evhdr *", _word(obj, offset)), mask & _U64)
    r = lib.event_wait(n, evs, _timespec(timeout))
    if r < 0:
        raise syscall_error(-r, "event_wait")
    return [evs[i].result for i in range(n)]


def event_wake(obj, offset: int, events: int, count: int = -1) -> None:
    """Set `events` in the header and wake up to `count` waiters (-1: all) if any was new."""
    r = lib.event_wake(ffi.cast("struct evhdr *", _word(obj, offset)), events & _U64, count)
    if r < 0:
        raise syscall_error(-r, "event_wake")


def event_clear(obj, offset: int, events: int) -> int:
    """Clear `events`; returns which of them were set."""
    return lib.event_clear(ffi.cast("struct evhdr *", _word(obj, offset)), events & _U64)


def event_poll(obj, offset: int, events: int) -> int:
    return lib.event_poll(ffi.cast("struct evhdr *", _word(obj, offset)), events & _U64)
