"""Twizzler threads in the kernel core: THRD_SPAWN, thread exit, hosting processes (§1.3, §3.5).

twzd cannot create a thread inside another process, so THRD_SPAWN here only makes the repr a
live thread (KSO_THREAD, reprid, root KSO attachment, its view recorded); the caller's runtime
then starts the Linux thread (same view) or forks a process that calls LX_THRD_HOST to become the
host of the thread's view (another view). docs/threads.md has the whole story.

A thread started in its creator's process tells twzd its Linux thread with LX_THRD_START, so
that SIGNAL can reach it. A thread ends with LX_THRD_EXIT, or when its process dies: either way its repr gets the exit code
in syncinfos[EXIT], syncs[EXIT] = 1 and a futex wake on that word, so `join` works from any
process, and it leaves the root KSO.
"""

import ctypes
import errno
import mmap
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s

from . import kso
from .errors import SyscallError
from .objects import Obj
from .syscalls import handles

if TYPE_CHECKING:
    from .core import Kernel, Process

# struct sys_thrd_spawn_args: target_view, start_func, arg, stack_base, stack_size, tls_base,
# thrd_ctrl (64 bytes, §1.4)
SPAWN_ARGS = struct.Struct("<16sQQQQQQ")
_U64 = 8
_NR_FUTEX = 202
_FUTEX_WAKE = 1
_INT_MAX = (1 << 31) - 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(eq=False)
class Thread:
    id: int
    view_id: int
    proc: "Process | None"      # the process running it; None until its host registers
    spawner: "Process"
    linux_tid: int | None = None  # the Linux thread running it, once it says (LX_THRD_START)


def _sync_offset(point: int) -> int:
    return c.OBJ_NULLPAGE_SIZE + s.THRD_SYNCS + _U64 * point


def _syncinfo_offset(point: int) -> int:
    return c.OBJ_NULLPAGE_SIZE + s.THRD_SYNCINFOS + _U64 * point


def futex_wake_all(obj: Obj, offset: int) -> None:
    """Wake every sleeper on the word at slot offset `offset` of `obj`, whoever mapped it where.

    A shared futex is keyed by (inode, offset), so a mapping of our own reaches sleepers in
    every process."""
    page = offset & ~(mmap.PAGESIZE - 1)
    m = mmap.mmap(obj.backing.fd, mmap.PAGESIZE, mmap.MAP_SHARED, offset=page)
    word = ctypes.c_char.from_buffer(m, offset - page)
    try:
        _libc.syscall(ctypes.c_long(_NR_FUTEX), ctypes.c_void_p(ctypes.addressof(word)),
                      ctypes.c_long(_FUTEX_WAKE), ctypes.c_long(_INT_MAX), None, None,
                      ctypes.c_long(0))
    finally:
        del word  # the mmap cannot close while a ctypes object exports its buffer
        m.close()


class Threads:
    """The live threads (repr ID -> Thread)."""

    def __init__(self, kernel: "Kernel"):
        self.k = kernel
        self.live: dict[int, Thread] = {}

    def add(self, repr_obj: Obj, view_id: int, proc: "Process | None", spawner: "Process") -> None:
        kso.write_reprid(repr_obj)
        kso.root_attach(self.k.root, repr_obj)
        self.live[repr_obj.id] = Thread(repr_obj.id, view_id, proc, spawner)

    def exit(self, tid: int, code: int) -> None:
        """End thread `tid`: exit code, EXIT word, wake, detach. Idempotent."""
        if self.live.pop(tid, None) is None:
            return
        kso.root_detach(self.k.root, tid)
        obj = self.k.objects.lookup(tid, hidden=True)
        if obj is None:
            return
        obj.backing.pwrite(_syncinfo_offset(s.THRD_SYNC_EXIT),
                           (code & (2**64 - 1)).to_bytes(8, "little"))
        obj.backing.pwrite(_sync_offset(s.THRD_SYNC_EXIT), (1).to_bytes(8, "little"))
        futex_wake_all(obj, _sync_offset(s.THRD_SYNC_EXIT))

    def process_exit(self, proc: "Process") -> None:
        """Its process is gone: every thread it ran, or spawned and nobody hosted, is lost."""
        for t in list(self.live.values()):
            if t.proc is proc or (t.proc is None and t.spawner is proc):
                self.exit(t.id, c.THRD_EXIT_LOST)

    def listing(self) -> list[dict]:
        """The threads attached to the root KSO, in its order: ID, name, view, Linux pid."""
        out = []
        for oid in kso.attachment_ids(self.k.root):
            t = self.live.get(oid)
            obj = self.k.objects.lookup(oid, hidden=True)
            if t is None or obj is None:
                continue
            name = obj.backing.pread(c.OBJ_NULLPAGE_SIZE, c.KSO_NAME_MAXLEN).split(b"\0")[0]
            out.append({"id": s.id_str(oid), "name": name.decode("utf-8", "replace"),
                        "view": s.id_str(t.view_id), "pid": t.proc.pid if t.proc else None})
        return out


def _repr_object(k: "Kernel", tid: int) -> Obj:
    obj = k.objects.lookup(tid)
    if obj is None:
        raise SyscallError(errno.ENOENT, f"no thread object {s.id_str(tid)}")
    return obj


@handles("THRD_SPAWN")
def sys_thrd_spawn(k: "Kernel", proc: "Process", mem, tid, args, flags, tctrl):
    """Make `tid` a live thread of `target_view` (0: the caller's); the runtime starts it.

    Deviations: the kernel does not start the thread (docs/threads.md); `tctrl` is ignored.
    As in Twizzler the repr and the view need WRITE (in the caller's contexts). A repr that is
    a live thread already is EBUSY.
    """
    if flags:
        raise SyscallError(errno.EINVAL, "flags must be 0")
    target_view = s.id_unpack(SPAWN_ARGS.unpack(mem.read(args, SPAWN_ARGS.size))[0])
    obj = _repr_object(k, tid)
    if obj.kso_type not in (c.KSO_NONE, c.KSO_THREAD):
        raise SyscallError(errno.EINVAL, f"object is a {c.KSO_NAMES[obj.kso_type]} KSO")
    k.access.check(proc.ctx, obj, c.MIP_DFL_WRITE, "THRD_SPAWN thread object")
    if tid in k.threads.live:
        raise SyscallError(errno.EBUSY, "already a live thread")
    view_id = target_view or proc.view_id
    view = k.objects.lookup(view_id)
    if view is None:
        raise SyscallError(errno.ENOENT, f"no view {s.id_str(view_id)}")
    if view.kso_type != c.KSO_VIEW:
        raise SyscallError(errno.EINVAL, "target_view is not a view KSO")
    k.access.check(proc.ctx, view, c.MIP_DFL_WRITE, "THRD_SPAWN target view")
    if obj.kso_type == c.KSO_NONE:
        mi = obj.meta()
        mi.flags |= c.KSO_THREAD << c.OC_KSO_SHIFT
        obj.write_meta(mi)
        obj.kso_type = c.KSO_THREAD
    if not obj.backing.pread(c.OBJ_NULLPAGE_SIZE, 1).strip(b"\0"):
        kso.set_name(obj, "thread")
    for point in (s.THRD_SYNC_SPAWNED, s.THRD_SYNC_READY, s.THRD_SYNC_EXIT):
        obj.backing.pwrite(_sync_offset(point), bytes(8))
    # A thread of the caller's own view runs in the caller's process.
    k.threads.add(obj, view_id, proc if view_id == proc.view_id else None, proc)
    return 0


@handles("LX_THRD_EXIT")
def sys_lx_thrd_exit(k: "Kernel", proc: "Process", mem, tid, code):
    """End a thread the caller's process runs (ESRCH if it runs no such thread)."""
    t = k.threads.live.get(tid)
    if t is None or t.proc is not proc:
        raise SyscallError(errno.ESRCH, f"this process runs no thread {s.id_str(tid)}")
    k.threads.exit(tid, code)
    return 0


@handles("LX_THRD_START")
def sys_lx_thrd_start(k: "Kernel", proc: "Process", mem, tid):
    """The calling Linux thread runs thread `tid` of the caller's process (ESRCH if the process
    runs no such thread): SIGNAL then reaches it. The record goes with the thread's exit."""
    t = k.threads.live.get(tid)
    if t is None or t.proc is not proc:
        raise SyscallError(errno.ESRCH, f"this process runs no thread {s.id_str(tid)}")
    t.linux_tid = k.caller
    return 0


@handles("LX_THRD_HOST")
def sys_lx_thrd_host(k: "Kernel", proc: "Process", mem, tid):
    """The caller, forked by `proc` (the spawner), becomes the process of thread `tid`."""
    t = k.threads.live.get(tid)
    if t is None or t.proc is not None or t.spawner is not proc:
        raise SyscallError(errno.ESRCH, f"no thread {s.id_str(tid)} of this process waits for "
                                        "a host")
    if k.caller is None or k.caller == proc.pid:
        raise SyscallError(errno.EINVAL, "only a forked process can host a thread")
    t.proc = k.host_process(t.view_id, tid, k.caller, proc)
    # Twizzler's THRD_SPAWN copies the creator's contexts: a fresh (temporary) context here
    # would let a confined program escape its context by hosting a thread (issue 4).
    t.proc.ctx = proc.ctx.inherit()
    return 0
