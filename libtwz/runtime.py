"""The bridge to the native runtime (twzlinux._twzrt): start-up, guarded memory access, atomics,
and the delivery of faults taken by raw accesses.

A fault inside a guarded call (`read`, `write`, `call`) comes back as a record and is raised
at once (or handled and retried, libtwz/fault.py). A fault taken by a raw access through a
memoryview cannot unwind CPython's C code, so the runtime completes the access on a scratch page
and signals `FAULT_SIGNUM` to the main thread; the handler below restores the slot and delivers
the fault there or to the thread that took it.
"""

import os
import signal

from twzlinux._twzrt import ffi, lib

from . import fault as _fault
from .errors import TwzError, syscall_error
from .ids import ObjID

FAULT_SIGNUM = signal.SIGRTMIN + 6

_delivering = False
_missed = False


def _on_fault_signal(signum, frame):
    # Not re-entrant: taking a record restores the faulting thread's page, so a thread still
    # looping on it faults again at once, and Python would run this handler again at the next
    # call inside it, recursing without end before any fault is delivered. A signal that comes
    # meanwhile is noted and its record taken by another pass of the running delivery.
    global _delivering, _missed
    if _delivering:
        _missed = True
        return
    _delivering = True
    try:
        while True:
            _missed = False
            _fault.deliver_queued(lib.twz_rt_take_pending)
            if not _missed:
                break
    finally:
        _delivering = False


def _copy(dst, src, n) -> None:
    rec = ffi.new("struct twz_fault_record *")  # per call: threads fault concurrently
    if lib.twz_rt_copy(dst, src, n, rec) != 0:
        raise _fault.from_record(rec)


def read(addr: int, n: int) -> bytes:
    """Copy n bytes out of object memory, raising the fault precisely if the access faults."""
    buf = ffi.new("char[]", n)
    if lib.twz_rt_copy(buf, ffi.cast("void *", addr), n, ffi.NULL) != 0:
        _fault.retrying(_copy, buf, ffi.cast("void *", addr), n)
    return ffi.unpack(buf, n)


def write(addr: int, data: bytes) -> None:
    """Copy bytes into object memory, raising the fault precisely if the access faults."""
    src = ffi.from_buffer(data)
    if lib.twz_rt_copy(ffi.cast("void *", addr), src, len(data), ffi.NULL) != 0:
        _fault.retrying(_copy, ffi.cast("void *", addr), src, len(data))


def _call_once(fn, arg: int) -> int:
    ret = ffi.new("long *")
    rec = ffi.new("struct twz_fault_record *")
    if lib.twz_rt_call(fn, arg, ret, rec) != 0:
        raise _fault.from_record(rec)
    return ret[0]


def call(addr: int, arg: int = 0) -> int:
    """Call the machine code at `addr` as `long fn(long arg)`, its faults (FAULT_EXCEPTION,
    FAULT_OBJECT, ...) raised here. The call is abandoned at a fault: code that takes locks
    must not fault."""
    return _fault.retrying(_call_once, ffi.cast("long (*)(long)", addr), arg)


def buffer(addr: int, size: int):
    """A writable memoryview over [addr, addr+size) of the slot window."""
    return memoryview(ffi.buffer(ffi.cast("char *", addr), size))


def _p(addr):
    return ffi.cast("uint64_t *", addr)


def cas64(addr: int, old: int, new: int) -> int:
    return lib.twz_rt_cas64(_p(addr), old, new)


def fetch_add64(addr: int, v: int) -> int:
    return lib.twz_rt_fetch_add64(_p(addr), v)


def fetch_or64(addr: int, v: int) -> int:
    return lib.twz_rt_fetch_or64(_p(addr), v)


def fetch_and64(addr: int, v: int) -> int:
    return lib.twz_rt_fetch_and64(_p(addr), v)


def store64(addr: int, v: int) -> None:
    lib.twz_rt_store64(_p(addr), v)


def load64(addr: int) -> int:
    return lib.twz_rt_load64(_p(addr))


def slot_alloc(oid: int, flags: int) -> int:
    slot = lib.twz_rt_slot_alloc(oid & 0xFFFFFFFFFFFFFFFF, oid >> 64, flags)
    if slot < 0:
        raise syscall_error(-slot, f"no free slot for object {ObjID(oid)}")
    return slot


def slot_release(slot: int) -> None:
    lib.twz_rt_slot_release(slot)


_initialised = False


def init_from_env() -> bool:
    """Set the process up as a Twizzler process if twzd started it (TWZ_VIEW is set)."""
    global _initialised
    if _initialised:
        return True
    text = os.environ.get("TWZ_VIEW")
    if not text:
        return False
    view = ObjID.parse(text)
    r = lib.twz_rt_init(view.lo, view.hi)
    if r < 0:
        raise syscall_error(-r, f"cannot set up the Twizzler address space (view {view})")
    r = lib.twz_thread_adopt_env()  # the first thread's repr, found through gs (twz/thread.h)
    if r < 0:
        raise syscall_error(-r, f"cannot map this thread's repr ({os.environ.get('TWZ_THREAD')})")
    signal.signal(FAULT_SIGNUM, _on_fault_signal)
    lib.twz_rt_set_fault_signal(FAULT_SIGNUM)
    _fault.install()
    _initialised = True
    return True


def require() -> None:
    if not init_from_env():
        raise TwzError("this is not a Twizzler process: run the program with `twzrun`, which "
                       "starts it under twzd (TWZ_VIEW is not set)")
