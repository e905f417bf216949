"""`twzrun --trace`: one line per Twizzler system call and per refused Linux call, decoded
through the syscall table and the Linux-call policy, to the program's stderr or to one file per
thread (`--trace-dir`).

THRD_SYNC and THRD_CTL never reach twzd (the runtime serves them in its SIGSYS handler): a traced
program (TWZ_TRACE=1 at spawn) reports each with LX_TRACE, and `format_call` makes its line as if
twzd had served it (seccomp.Listener, docs/threads.md)."""

import logging
import os

from twzlinux.abi.constants import errno_name
from twzlinux.abi.structs import id_str
from twzlinux.abi.syscalls import SYSCALL_BASE, join_args, lookup_linux_nr
from twzlinux.daemon import policy

log = logging.getLogger("twzd.trace")
MAX_THREAD_FILES = 256  # per program: a thread storm must not take all of twzd's descriptors


def _flags(value: int, names) -> str:
    parts, rest = [], value
    for bit, name in sorted(names.items()):
        if value & bit:
            parts.append(name)
            rest &= ~bit
    if rest or not parts:
        parts.append(hex(rest))  # bits the table has no name for (a KSO type, a typo) stay visible
    return "|".join(parts)


def _arg(arg, value: int) -> str:
    if arg.kind == "id":
        return id_str(value)
    if arg.kind == "flags":
        return _flags(value, arg.names)
    if arg.kind == "enum":
        return arg.names.get(value, str(value))
    if arg.kind == "ptr":
        return hex(value)
    return str(value)


def format_call(tid: int, linux_nr: int, regs, result: int) -> str:
    """`[twz TID] NAME(arg=value, ...) = result` for the call and the value rax received."""
    if linux_nr < SYSCALL_BASE:
        name = policy.refused_name(linux_nr, regs) or f"syscall_{linux_nr}"
        args = ", ".join(hex(r) for r in regs)
        return (f"[twz {tid}] refused linux {name}({args}) = -1 {errno_name(-result)} "
                f"(it would reach {policy.reason(linux_nr)} past the personality; "
                "see docs/syscall-policy.md)\n")
    call = lookup_linux_nr(linux_nr)
    if call is None:
        text = f"syscall({linux_nr:#x})"
    else:
        args = ", ".join(f"{a.name}={_arg(a, v)}" for a, v in zip(call.args, join_args(call, regs)))
        text = f"{call.name}({args})"
    if -4095 <= result < 0:
        shown = f"-1 {errno_name(-result)}"
    elif call is not None and call.returns == "value":
        shown = hex(result)
    else:
        shown = str(result)
    return f"[twz {tid}] {text} = {shown}\n"


class TraceDir:
    """One append-only file per thread, `DIR/trace.TID`, opened on the thread's first line."""

    def __init__(self, path: str):
        self.path = path
        self.files: dict[int, int] = {}

    def write(self, tid: int, line: str) -> None:
        fd = self.files.get(tid)
        if fd is None:
            if len(self.files) >= MAX_THREAD_FILES:
                return
            try:
                fd = os.open(os.path.join(self.path, f"trace.{tid}"),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            except OSError as e:
                log.info("trace file for tid %d in %s: %s", tid, self.path, e.strerror)
                self.files[tid] = -1
                return
            self.files[tid] = fd
        if fd >= 0:
            try:
                os.write(fd, line.encode())
            except OSError as e:
                log.info("trace file for tid %d: %s", tid, e.strerror)

    def close(self) -> None:
        for fd in self.files.values():
            if fd >= 0:
                os.close(fd)
        self.files.clear()
