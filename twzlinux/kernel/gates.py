"""Secure gates (reference §3.4) on Linux: a call through a gate runs under the gate owner's
security context and returns to the caller in its own.

A Linux process cannot switch its own rights mid-call the way a Twizzler thread switches its
active context at a fault, since the rights are the fds twzd gave it. So a gate object is
served by a process started under the owner's context (`twzrun --sctx OWNER service`), and a
gate call is a trip through twzd: LX_GATE CALL checks the caller's rights, hands the request
to the service's pending WAIT, and holds the caller's syscall until the service's RETURN. The
callee's work happens in the service's process, with the service's context; the caller's
process never holds the owner's rights, so it is back "in its own context" by construction.

The checks are Twizzler's (`secctx_fault_resolve`, `__in_gate`): the caller's context must
grant EXEC on the gate object, and the offset must be a gate: inside the capability's gate
range, aligned to its 2^align, when the capability names one; else one of the gates the
service declared, at TWZ_GATE_OFFSET + g * TWZ_GATE_SIZE (Twizzler's `.gates` table).

Calls carry four u64 arguments and return one u64 (bulk data goes through objects both sides
may map). A deferred syscall result (`Deferred`) is the seccomp adapter's to finish.
"""

import struct
from collections import deque
from dataclasses import dataclass, field
from errno import EACCES, EAGAIN, EBUSY, EINVAL, ENOENT, EPIPE
from typing import Callable

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s

from .access import refusal
from .errors import SyscallError
from .syscalls import _object, handles

REQUEST = struct.Struct("<QQ4Q")  # ticket, gate offset, args[4]: what WAIT writes


class Deferred:
    """A syscall answered later: the adapter attaches `finish(value, writes)`, and whoever
    completes it gives the value and (addr, bytes) writes into the caller's memory first."""

    def __init__(self, on_cancel: Callable[[], None] = lambda: None):
        self._finish = None
        self._done = None
        self.on_cancel = on_cancel

    def attach(self, finish) -> None:
        self._finish = finish
        if self._done is not None:
            finish(*self._done)

    def complete(self, value: int, writes=()) -> None:
        if self._done is not None:
            return
        self._done = (value, tuple(writes))
        if self._finish is not None:
            self._finish(value, self._done[1])


@dataclass(eq=False)
class Call:
    ticket: int
    caller: object
    offset: int
    args: tuple
    answer: Deferred


@dataclass(eq=False)
class Service:
    proc: object
    gate: int
    ngates: int
    waiting: tuple | None = None          # (Deferred, request address)
    queue: deque = field(default_factory=deque)
    serving: dict = field(default_factory=dict)   # ticket -> Call being run


class GateTable:
    def __init__(self):
        self.services: dict[int, Service] = {}   # gate object -> service
        self._next = 1

    def ticket(self) -> int:
        self._next += 1
        return self._next

    def _of(self, proc) -> Service | None:
        return next((sv for sv in self.services.values() if sv.proc is proc), None)

    def dispatch(self, sv: Service) -> None:
        if sv.waiting is None or not sv.queue:
            return
        call = sv.queue.popleft()
        answer, addr = sv.waiting
        sv.waiting = None
        sv.serving[call.ticket] = call
        answer.complete(call.ticket, [(addr, REQUEST.pack(call.ticket, call.offset,
                                                          *call.args))])

    def process_exit(self, proc) -> None:
        """A service's callers get EPIPE; a caller's queued call is dropped."""
        sv = self._of(proc)
        if sv is not None:
            del self.services[sv.gate]
            for call in [*sv.queue, *sv.serving.values()]:
                call.answer.complete(-EPIPE)
        for sv in self.services.values():
            sv.queue = deque(cl for cl in sv.queue if cl.caller is not proc)


def table(k) -> GateTable:
    gt = getattr(k, "gate_table", None)
    if gt is None:
        gt = k.gate_table = GateTable()
    return gt


def in_declared_gate(offset: int, ngates: int) -> bool:
    rel = offset - c.TWZ_GATE_OFFSET
    return 0 <= rel < ngates * c.TWZ_GATE_SIZE and rel % c.TWZ_GATE_SIZE == 0


@handles("LX_GATE")
def sys_lx_gate(k, proc, mem, op, gate, a1, a2, a3):
    """SERVE (gate, a1 = number of gates): the caller serves `gate`; needs USE on it.
    WAIT (a1 = struct lx_gate_request *): the next call, written there; returns its ticket.
    RETURN (a1 = ticket, a2 = value): the call's caller gets `value`.
    CALL (gate, a1 = slot offset of the gate, a2 = u64 args[4] or NULL): returns the callee's
    value; EACCES when the context lacks EXEC on the gate object or the offset is no gate."""
    gt = table(k)
    if op == c.LX_GATE_SERVE:
        obj = _object(k, gate)
        k.access.check(proc.ctx, obj, c.MIP_DFL_USE, "LX_GATE SERVE")
        if not 0 < a1 <= (c.OBJ_NULLPAGE_SIZE - (c.TWZ_GATE_OFFSET & 0xFFF)) // c.TWZ_GATE_SIZE:
            raise SyscallError(EINVAL, f"bad number of gates {a1}")
        old = gt.services.get(obj.id)
        if old is not None and old.proc is not proc:
            raise SyscallError(EBUSY, f"object {s.id_str(obj.id)} is served already")
        gt.services[obj.id] = Service(proc, obj.id, a1)
        return 0
    if op == c.LX_GATE_WAIT:
        sv = gt._of(proc)
        if sv is None or sv.waiting is not None:
            raise SyscallError(EINVAL, "not serving a gate object (or already waiting)")
        mem.write(a1, bytes(REQUEST.size))  # fail now (EFAULT), not when the call comes
        answer = Deferred()
        sv.waiting = (answer, a1)
        gt.dispatch(sv)
        return answer
    if op == c.LX_GATE_RETURN:
        sv = gt._of(proc)
        call = sv.serving.pop(a1, None) if sv is not None else None
        if call is None:
            raise SyscallError(ENOENT, f"no call {a1} in progress")
        call.answer.complete(a2 & (1 << 64) - 1)
        return 0
    if op == c.LX_GATE_CALL:
        obj = _object(k, gate)
        have, why = k.access.perms(proc.ctx, obj)
        if not have & c.MIP_DFL_EXEC:
            raise SyscallError(EACCES, refusal(obj.id, c.MIP_DFL_EXEC, "gate call", why))
        sv = gt.services.get(obj.id)
        if sv is None:
            raise SyscallError(EAGAIN, f"nothing serves gate object {s.id_str(obj.id)} yet")
        limits = k.access.gates(proc.ctx, obj)
        if not in_declared_gate(a1, sv.ngates) or (limits is not None and not
                                                   limits.contains(a1)):
            raise SyscallError(EACCES, f"gate call: offset {a1:#x} is not a gate of object "
                                       f"{s.id_str(obj.id)} open to this context")
        args = struct.unpack("<4Q", mem.read(a2, 32)) if a2 else (0, 0, 0, 0)
        call = Call(gt.ticket(), proc, a1, args, Deferred())
        sv.queue.append(call)
        gt.dispatch(sv)
        return call.answer
    raise SyscallError(EINVAL, f"unknown LX_GATE op {op}")
