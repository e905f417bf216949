"""The bridge to the native runtime (twzlinux._twzrt): start-up, guarded memory access, atomics,
and the delivery of faults taken by raw accesses.

A fault inside a guarded call (`read`, `write`) comes back as a record and is raised at once. A
fault taken by a raw access through a memoryview cannot unwind CPython's C code, so the runtime
completes the access on a scratch page and trips `FAULT_SIGNUM`; the handler below restores the
slot and raises the fault at the next point where Python checks for signals.
"""

import os
import signal

from twzlinux._twzrt import ffi, lib

from .errors import TwzError, make_fault, syscall_error
from .ids import ObjID

FAULT_SIGNUM = signal.SIGRTMIN + 6

_record = ffi.new("struct twz_fault_record *")


def _raise_record(rec) -> None:
    raise make_fault(rec.fault, addr=rec.addr, ip=rec.ip,
                     objid=(rec.objid_hi << 64) | rec.objid_lo, slot=rec.slot, flags=rec.flags)


def _on_fault_signal(signum, frame):
    rec = ffi.new("struct twz_fault_record *")
    first = None
    while lib.twz_rt_take_pending(rec):
        if first is None:
            first = ffi.new("struct twz_fault_record *", rec[0])
    if first is not None:
        _raise_record(first)


def read(addr: int, n: int) -> bytes:
    """Copy n bytes out of object memory, raising the fault precisely if the access faults."""
    buf = ffi.new("char[]", n)
    if lib.twz_rt_copy(buf, ffi.cast("void *", addr), n, _record) != 0:
        _raise_record(_record)
    return ffi.unpack(buf, n)


def write(addr: int, data: bytes) -> None:
    """Copy bytes into object memory, raising the fault precisely if the access faults."""
    if lib.twz_rt_copy(ffi.cast("void *", addr), ffi.from_buffer(data), len(data), _record) != 0:
        _raise_record(_record)


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
    signal.signal(FAULT_SIGNUM, _on_fault_signal)
    lib.twz_rt_set_fault_signal(FAULT_SIGNUM)
    _initialised = True
    return True


def require() -> None:
    if not init_from_env():
        raise TwzError("this is not a Twizzler process: run the program with `twzrun`, which "
                       "starts it under twzd (TWZ_VIEW is not set)")
