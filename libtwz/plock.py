"""Locks in shared object memory that a kill -9 of their holder does not wedge.

A lock is a bit of a u64 word in an object; the holder's pid sits in a field of the same word,
set by the same CAS that takes the lock. A waiter that finds the holder dead takes the lock
over: whatever the dead holder left half done must be harmless, which is how the namespace and
the allocator order their stores (a record is published last, by a single store). Pids are
those of twzd's pid namespace, where every Twizzler program runs.
"""

import os

from . import runtime as rt

_PID_BITS = 31  # above pid_max (2**22) on Linux


def _alive(pid: int) -> bool:
    """A zombie counts as dead: an orphan's may wait for a reaper that never comes."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class PidLock:
    """The lock at `addr`: `bit` set while held, the holder's pid at `pid_shift`."""

    def __init__(self, addr: int, bit: int, pid_shift: int):
        self.addr, self.bit, self.shift = addr, bit, pid_shift
        self.mask = bit | ((1 << _PID_BITS) - 1) << pid_shift

    def __enter__(self):
        mine = os.getpid() << self.shift | self.bit
        while True:
            old = rt.load64(self.addr)
            holder = (old >> self.shift) & ((1 << _PID_BITS) - 1)
            if (not old & self.bit or holder and not _alive(holder)) and \
                    rt.cas64(self.addr, old, old & ~self.mask | mine) == old:
                return self
            os.sched_yield()

    def __exit__(self, *exc):
        rt.fetch_and64(self.addr, ~self.mask & (2**64 - 1))
