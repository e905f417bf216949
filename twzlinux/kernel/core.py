"""class Kernel: the object table, the root KSO, processes and syscall dispatch (sans-I/O)."""

import errno
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from twzlinux.abi import constants as c
from twzlinux.abi import structs as st
from twzlinux.abi.namespace import namespace_bytes
from twzlinux.abi.structs import id_str
from twzlinux.abi.syscalls import JOINERS, TABLE

from . import control, kso  # control: SIGNAL, which needs Kernel.control
from . import gates  # LX_GATE
from .access import Access, Contexts
from .dirty import DirtyPages
from .errors import FdResult, MemoryAccess, SyscallError
from .objects import Obj, ObjectTable
from .quota import Quota
from .store import Store
from .syscalls import HANDLERS
from .threads import Threads

__all__ = ["Kernel", "Process", "FdResult", "MemoryAccess", "SyscallError"]

_KSO_FLAGS = c.MIP_DFL_READ | c.MIP_DFL_WRITE | c.MIP_DFL_USE
_STATE = "state.json"
_RESOURCE_ERRNOS = (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT, errno.EFBIG, errno.EMFILE,
                    errno.ENFILE)


@dataclass(eq=False)
class Process:
    view_id: int
    thread_id: int
    root_namespace: int
    pid: int | None = None  # set by the daemon once the Linux process exists
    owned: tuple[int, ...] = ()  # objects the kernel made for it alone, freed with it
    ctx: Contexts = field(default_factory=Contexts)  # attached security contexts (access.py)
    # The record of the program this process belongs to, if it is not that record itself: a
    # thread host, a fork or a started program counts against its program's limits (quota.py).
    program: "Process | None" = None

    def env(self) -> dict[str, str]:
        return {"TWZ_VIEW": id_str(self.view_id), "TWZ_THREAD": id_str(self.thread_id),
                "TWZNAME": id_str(self.root_namespace)}


def _reset_code() -> int:
    # Non-zero and below 2**63: as a signed rax value it is positive, so never mistaken for
    # -errno, and it packs as a plain s64 in the seccomp response.
    return secrets.randbelow((1 << 63) - 1) + 1


def _kso_flags(kso_type: int, dfl: int) -> int:
    return dfl | kso_type << c.OC_KSO_SHIFT


def _parse_id(text: str) -> int:
    hi, lo = text.split(":")
    return int(hi, 16) << 64 | int(lo, 16)


class Kernel:
    def __init__(self, home: Path, console: Callable[["Process", bytes], None]):
        self.home = Path(home)
        self.console = console
        self.objects = ObjectTable(Store(self.home))
        self.reset_code = _reset_code()
        self.root = self.objects.create(0, _kso_flags(c.KSO_ROOT, c.MIP_DFL_READ),
                                        fixed_id=c.KSO_ROOT_ID, kernel=True)
        kso.set_name(self.root, "root")
        self.root_namespace = self._root_namespace()
        # the daemon's adapter for acting on Linux threads (twzlinux.daemon.control)
        self.control = None
        self.access = Access(self.objects)
        self.dirty = DirtyPages(self.objects.lazy)
        self.quota = Quota(self.objects)
        self.threads = Threads(self)
        self.hosted: dict[int, Process] = {}  # pid -> a thread host, a fork, a started program
        self.on_host: Callable[[Process], None] = lambda proc: None  # the daemon watches it
        self.caller: int | None = None  # Linux tid of the current syscall's caller
        # Linux nr -> (Twizzler nr, handler, argument decoder), built once: every handler module
        # is imported by now, and a call then costs one lookup instead of a walk of its table
        # entry's arguments.
        self._dispatch = {call.linux_nr: (call.nr, HANDLERS[call.name], JOINERS[call.name])
                          for call in TABLE if call.name in HANDLERS}

    def _root_namespace(self) -> int:
        """The persistent root namespace, created on first start and found again after."""
        state = self.home / _STATE
        if state.exists():
            oid = _parse_id(json.loads(state.read_text())["root_namespace"])
            if self.objects.lookup(oid) is not None:
                return oid
        ns = self.objects.create(0, c.MIP_DFL_READ | c.MIP_DFL_WRITE | c.MIP_DFL_USE
                                 | c.TWZ_SYS_OC_PERSIST_)
        data = namespace_bytes(ns.id, ns.id)
        ns.backing.pwrite(c.OBJ_NULLPAGE_SIZE, data)
        mi = ns.meta()
        mi.sz, mi.flags = len(data), mi.flags | c.MIF_SZ
        ns.write_meta(mi)
        ns.backing.flush()
        tmp = state.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"root_namespace": id_str(ns.id)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state)
        return ns.id

    def new_process(self, sctxs=()) -> Process:
        """A view KSO and a thread repr attached to the root KSO, running under the security
        contexts `sctxs` (objects; the first is active), or the temporary context if none."""
        view = self.objects.create(0, _kso_flags(c.KSO_VIEW, _KSO_FLAGS), kernel=True)
        kso.set_name(view, "view")
        thread = self.objects.create(0, _kso_flags(c.KSO_THREAD, _KSO_FLAGS), kernel=True)
        kso.set_name(thread, "thread")
        proc = Process(view.id, thread.id, self.root_namespace, owned=(thread.id, view.id))
        for ctx in sctxs:
            self.access.attach(proc.ctx, ctx)
        self.threads.add(thread, view.id, proc, proc)
        return proc

    def clone_view(self, view_id: int) -> Obj:
        """A copy of view `view_id` (lazy where it can be, as twz_view_clone makes one) with its
        slot allocator's lock free: the copy may have caught it held by one of the source's
        threads, which go on in the source, not in the copy."""
        src = self.objects.lookup(view_id, hidden=True)
        if src is None or src.kso_type != c.KSO_VIEW:
            raise SyscallError(errno.ENOENT, f"no view {id_str(view_id)}")
        view = self.objects.create(0, _kso_flags(c.KSO_VIEW, _KSO_FLAGS), src, kernel=True)
        view.backing.pwrite(c.OBJ_NULLPAGE_SIZE + st.VIEW_LOCK, bytes(8))
        return view

    def host_process(self, view_id: int, thread_id: int, pid: int, spawner: Process) -> Process:
        """Process `pid`, forked (or started) by `spawner`, gets a record of its own: it runs
        thread_id in view_id, with the spawner's security contexts (as THRD_SPAWN gives a thread
        its creator's). Its exit ends it (on_host: the daemon watches its pidfd)."""
        proc = Process(view_id, thread_id, self.root_namespace, pid=pid,
                       ctx=spawner.ctx.inherit(), program=spawner.program or spawner)
        try:
            self.on_host(proc)  # first: a process that is gone, or a thread, gets no record
        except OSError as e:
            raise SyscallError(errno.ESRCH if e.errno == errno.ESRCH else errno.EINVAL,
                               f"{pid} is no live process: {e.strerror}") from None
        self.hosted[pid] = proc
        return proc

    def process_exit(self, proc: Process) -> None:
        """Drop the process's mappings and its thread's ties; free its view and repr."""
        self.objects.unmap_all(proc)
        gates.table(self).process_exit(proc)
        self.objects.lazy.process_exit(proc)
        self.threads.process_exit(proc)
        if self.hosted.get(proc.pid) is proc:
            del self.hosted[proc.pid]
        for oid in proc.owned:
            obj = self.objects.lookup(oid, hidden=True)
            if obj is not None:
                self.objects.drop_ties(obj)
                self.objects.delete(obj, immediate=True)

    def syscall(self, proc: Process, linux_nr: int, regs: list[int],
                mem: MemoryAccess, tid: int | None = None) -> int | FdResult:
        """Run one Twizzler syscall for thread `tid` of proc. Raises only SyscallError (ENOSYS
        for unknown numbers)."""
        self.caller = tid
        entry = self._dispatch.get(linux_nr)
        if entry is None:
            raise SyscallError(errno.ENOSYS)
        nr, handler, join = entry
        try:
            args = join(regs)
            mem = self.objects.lazy.guard(proc, mem)
            return self.access.around(proc.ctx, nr, handler, self, proc, mem, *args)
        except OSError as e:
            # Running out of memory or disk is the caller's error to see; anything else from
            # the store is a bug and propagates.
            if e.errno in _RESOURCE_ERRNOS:
                raise SyscallError(e.errno, "store exhausted") from e
            raise

    def close(self) -> None:
        self.objects.close()
