"""Twizzler's persist helpers (twz/persist.h): flush a range of an object, fence.

On Twizzler a store to NVM is durable once its cache line is written back (CLWB) and fenced.
Here an object is a shared file mapping: a store is in the host's page cache the moment it
retires, so it already survives the death of the program and of twzd; `flush` (msync MS_SYNC
on the pages of the range) is what makes it survive the machine's death as well. On a memfd
(volatile object) it has nowhere to go and costs only the call. `fence` orders this thread's
earlier stores before its later ones as seen by other processes (a locked RMW: a full barrier
on x86, where CLWB-style ordering is otherwise implied by TSO for ordinary stores).
"""

import ctypes
import os

from twzlinux.abi import constants as c

from . import runtime as rt

_MS_SYNC = 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_fence_word = rt.ffi.new("uint64_t *")


def flush_addr(addr: int, n: int) -> None:
    """Write [addr, addr + n) of object memory back to the object's store and wait for it."""
    if n <= 0:
        return
    start = addr & ~(c.PAGE_SIZE - 1)
    if _libc.msync(start, addr + n - start, _MS_SYNC):
        err = ctypes.get_errno()
        raise OSError(err, f"msync of [{addr:#x}, {addr + n:#x}): {os.strerror(err)}")


def flush(obj, offset: int, n: int) -> None:
    """Twizzler's _clwb_len for [offset, offset + n) of `obj` (slot offsets)."""
    flush_addr(obj.address + offset, n)


def fence() -> None:
    """Twizzler's _pfence."""
    rt.lib.twz_rt_fetch_add64(_fence_word, 0)
