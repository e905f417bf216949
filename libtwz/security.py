"""Security contexts and secure gates from a program (docs/security.md).

attach(ctx) / detach(ctx): ATTACH and DETACH on the calling program (detach around a syscall
with `sysc` and `flags`: TWZ_DETACH_ONENTRY 1, TWZ_DETACH_ONEXIT 2, 0 = off for that call only).

Gates: a service, started under the gate owner's context, runs `serve(obj, {1: fn, ...})`;
a caller runs `call(obj, 1, a, b)`, which returns fn(a, b) computed in the service, with the
service's rights. Arguments and the result are u64s; bulk data goes through objects.
"""

import errno
import struct

from twzlinux.abi import constants as c

from . import runtime as rt
from . import sys as tsys
from .errors import TwzError, syscall_error
from .ids import ObjID

TWZ_DETACH_ONENTRY, TWZ_DETACH_ONEXIT = 1, 2
_REQUEST = struct.Struct("<QQ4Q")  # ticket, gate offset, args[4]
_U64 = (1 << 64) - 1


def _id(obj) -> int:
    """An object, an ObjID or its "hi:lo" text."""
    if isinstance(obj, str):
        return int(ObjID.parse(obj))
    return int(getattr(obj, "id", obj))


def attach(ctx) -> None:
    tsys.sys_attach(0, _id(ctx), c.KSO_SECCTX)


def detach(ctx=0, *, sysc: int = 0, flags: int = 0) -> None:
    tsys.sys_detach(0, _id(ctx), c.KSO_SECCTX | sysc << 16 | flags << 32)


def gate_offset(gate: int) -> int:
    """The slot offset of gate number `gate` (Twizzler's TWZ_GATE_CALL)."""
    return c.TWZ_GATE_OFFSET + gate * c.TWZ_GATE_SIZE


def call(obj, gate: int, *args: int, offset: int | None = None) -> int:
    """Call `gate` of gate object `obj` with up to four u64 arguments; returns the callee's
    u64. `offset` calls an arbitrary slot offset instead (refused unless it is a gate)."""
    if len(args) > 4:
        raise ValueError("a gate takes at most four arguments")
    buf = rt.ffi.new("uint64_t[4]", [a & _U64 for a in args] + [0] * (4 - len(args)))
    off = gate_offset(gate) if offset is None else offset
    try:
        return tsys.sys_lx_gate(c.LX_GATE_CALL, _id(obj), off,
                                int(rt.ffi.cast("uintptr_t", buf)), 0) & _U64
    except TwzError as e:
        if e.errno != errno.EACCES:
            raise
        raise syscall_error(e.errno, f"gate call to object {ObjID(_id(obj))} at offset {off:#x}: "
                                     "this security context lacks EXEC on the object, or the "
                                     "offset is not a gate open to it") from None


def serve(obj, handlers: dict, *, calls: int | None = None, ready=None) -> None:
    """Serve gate object `obj`: gate g runs handlers[g](*args) and returns its int result.
    Stops after `calls` calls if given; `ready()` is called once serving has begun."""
    ngates = max(handlers) + 1
    tsys.sys_lx_gate(c.LX_GATE_SERVE, _id(obj), ngates, 0, 0)
    if ready is not None:
        ready()
    buf = rt.ffi.new("char[]", _REQUEST.size)
    addr = int(rt.ffi.cast("uintptr_t", buf))
    done = 0
    while calls is None or done < calls:
        tsys.sys_lx_gate(c.LX_GATE_WAIT, 0, addr, 0, 0)
        ticket, off, *args = _REQUEST.unpack(rt.ffi.buffer(buf)[:])
        fn = handlers.get((off - c.TWZ_GATE_OFFSET) // c.TWZ_GATE_SIZE)
        value = fn(*args) if fn is not None else 0
        tsys.sys_lx_gate(c.LX_GATE_RETURN, 0, ticket, int(value) & _U64, 0)
        done += 1


__all__ = ["attach", "detach", "call", "serve", "gate_offset", "ObjID"]
