"""libtwz's exceptions: a TwzError carries the errno or the Twizzler fault it stands for."""

import os

from twzlinux.abi import constants as c


class TwzError(Exception):
    """Base of everything libtwz raises. `errno` is set for a failed call, `fault` for a fault."""

    errno = None
    fault = None

    def __init__(self, message: str, *, errno: int | None = None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno


def syscall_error(errno: int, what: str) -> TwzError:
    desc = os.strerror(errno) if errno < c.EGENERIC else c.errno_name(errno)
    return TwzError(f"{what}: {c.errno_name(errno)} ({desc})", errno=errno)


class TwzFault(TwzError):
    """A Twizzler fault. `addr`, `ip`, `objid`, `slot` and `flags` are those of the fault-info."""

    def __init__(self, message: str, *, addr=0, ip=0, objid=0, slot=0, flags=0):
        super().__init__(message)
        self.addr, self.ip, self.objid, self.slot, self.flags = addr, ip, objid, slot, flags


class FaultObject(TwzFault):
    fault = c.FAULT_OBJECT


class FaultNull(TwzFault):
    fault = c.FAULT_NULL


class FaultException(TwzFault):
    fault = c.FAULT_EXCEPTION


class FaultSctx(TwzFault):
    fault = c.FAULT_SCTX


class FaultPage(TwzFault):
    fault = c.FAULT_PAGE


class FaultPptr(TwzFault):
    fault = c.FAULT_PPTR


class FaultSignal(TwzFault):
    fault = c.FAULT_SIGNAL


FAULT_CLASSES = {cls.fault: cls for cls in (FaultObject, FaultNull, FaultException, FaultSctx,
                                            FaultPage, FaultPptr, FaultSignal)}

_OBJECT_FLAG_NAMES = {c.FAULT_OBJECT_READ: "READ", c.FAULT_OBJECT_WRITE: "WRITE",
                      c.FAULT_OBJECT_EXEC: "EXEC", c.FAULT_OBJECT_NOMAP: "NOMAP",
                      c.FAULT_OBJECT_EXIST: "EXIST", c.FAULT_OBJECT_INVALID: "INVALID"}


def make_fault(fault: int, *, addr=0, ip=0, objid=0, slot=0, flags=0, detail="") -> TwzFault:
    """Build the exception for a fault record, with a message naming the fault, address, object
    and slot."""
    from .ids import ObjID

    name = c.FAULT_NAMES[fault] if 0 <= fault < len(c.FAULT_NAMES) else f"fault {fault}"
    parts = [f"{name} at {addr:#x}"]
    if fault == c.FAULT_OBJECT and flags:
        parts.append("(" + "|".join(n for b, n in _OBJECT_FLAG_NAMES.items() if flags & b) + ")")
    if fault == c.FAULT_SCTX and flags:  # flags: the access that the context refused
        parts.append("(the security context does not grant "
                     + "|".join(n for b, n in list(_OBJECT_FLAG_NAMES.items())[:3] if flags & b)
                     + ")")
    if objid:
        parts.append(f"object {ObjID(objid)}")
    parts.append(f"slot {slot:#x}")
    if detail:
        parts.append("- " + detail)
    cls = FAULT_CLASSES.get(fault, TwzFault)
    return cls(" ".join(parts), addr=addr, ip=ip, objid=objid, slot=slot, flags=flags)
