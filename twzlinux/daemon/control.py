"""The kernel core's hands on Linux threads (Kernel.control): FAULT_SIGNAL and BECOME.

A Twizzler thread is named by its repr object; the daemon knows which Linux thread runs it. A
FAULT_SIGNAL travels as TWZ_SIGNAL_SIGNUM sent with rt_tgsigqueueinfo and si_code SI_QUEUE,
which carries the siginfo's 32 bytes of fields unchanged: the four longs, where the runtime's
handler (twz/fault.h) reads them.

BECOME replaces the caller's registers through ptrace (reference/linux-mechanisms.md §4): twzd
is root and the programs' parent. The caller sits in its seccomp notification, where no ptrace
stop can reach it, so: PTRACE_SEIZE and PTRACE_INTERRUPT it, let the loop answer the call, and
once the thread stops on its way out of the syscall, GETREGS, put in the new rip and registers
with orig_rax = -1 (no syscall restart fix-up), SETREGS and detach.
"""

import ctypes
import errno
import logging
import os
import struct
import time

from twzlinux.abi import constants as c
from twzlinux.abi.structs import id_str
from twzlinux.kernel.errors import SyscallError

log = logging.getLogger("twzd.control")

NR_RT_TGSIGQUEUEINFO = 297
SI_QUEUE = -1
SIGINFO = struct.Struct("<iii4x4q80x")  # signo, errno, code, then the union: args[4]
assert SIGINFO.size == 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_DETACH = 12, 13, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000
BECOME_STOP_WAIT = 2.0  # seconds: the thread stops as soon as its answer reaches it
# struct user_regs_struct, <sys/user.h>
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
             "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
             "gs_base", "ds", "es", "fs", "gs")


class _Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in USER_REGS]


def _ptrace(op, tid, addr=None, data=None) -> None:
    if _libc.ptrace(op, tid, addr, data) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace({op:#x}, {tid}): {os.strerror(e)}")


class Control:
    def __init__(self, daemon):
        self.daemon = daemon

    def linux_thread(self, thread_id: int) -> tuple[int, int]:
        """(tgid, tid) of the Linux thread running Twizzler thread `thread_id`: the main thread
        of the process whose first thread it is (a program's TWZ_THREAD, or a thread spawned
        into another view, whose host process runs it), or the Linux thread that said it runs
        it (LX_THRD_START: a thread spawned into its creator's process). ENOENT for a thread
        that has exited or not started yet.
        """
        t = self.daemon.kernel.threads.live.get(thread_id)
        proc = t.proc if t is not None else None
        if proc is None or proc.pid is None:
            raise SyscallError(errno.ENOENT, f"no running thread {id_str(thread_id)}")
        if proc.thread_id == thread_id:
            return proc.pid, proc.pid
        if t.linux_tid is None:
            raise SyscallError(errno.ENOENT, f"thread {id_str(thread_id)} has not started (its "
                                             "runtime calls LX_THRD_START as it starts)")
        return proc.pid, t.linux_tid

    def signal(self, thread_id: int, args: list[int]) -> None:
        tgid, tid = self.linux_thread(thread_id)
        info = SIGINFO.pack(c.TWZ_SIGNAL_SIGNUM, 0, SI_QUEUE, *args)
        buf = ctypes.create_string_buffer(info, len(info))
        r = _libc.syscall(ctypes.c_long(NR_RT_TGSIGQUEUEINFO), ctypes.c_long(tgid),
                          ctypes.c_long(tid), ctypes.c_long(c.TWZ_SIGNAL_SIGNUM), buf)
        if r < 0:
            e = ctypes.get_errno()
            if e == errno.ESRCH:  # it exited between the lookup and the signal
                raise SyscallError(errno.ENOENT, f"thread {id_str(thread_id)} exited")
            log.warning("rt_tgsigqueueinfo(%d, %d) failed: %s", tgid, tid, errno.errorcode.get(e))
            raise SyscallError(errno.EAGAIN if e == errno.EAGAIN else errno.EINVAL,
                               "the signal could not be queued")

    def become(self, mem, rip: int, regs: dict) -> None:
        """Make the calling thread (mem.tid) continue at `rip` with `regs` once its call is
        answered. Raises SyscallError if the thread cannot be traced."""
        tid = mem.tid
        try:
            _ptrace(PTRACE_SEIZE, tid)
        except OSError as e:
            raise SyscallError(errno.EPERM if e.errno == errno.EPERM else errno.ESRCH,
                               f"cannot trace thread {tid}: {e.strerror}") from None
        try:
            _ptrace(PTRACE_INTERRUPT, tid)
        except OSError as e:
            self._detach(tid)
            raise SyscallError(errno.ESRCH, f"thread {tid}: {e.strerror}") from None
        deadline = time.monotonic() + BECOME_STOP_WAIT
        self.daemon.loop.call_soon(self._finish, tid, rip, regs, deadline)

    def _finish(self, tid: int, rip: int, regs: dict, deadline: float) -> None:
        """Once the thread has stopped: the registers. Polled from the loop, never waited for:
        a thread that dies instead of stopping must not hold twzd up."""
        try:
            if not self._stopped(tid):
                if time.monotonic() < deadline:
                    self.daemon.loop.call_later(0.0002, self._finish, tid, rip, regs, deadline)
                else:
                    log.warning("BECOME: thread %d did not stop within %.0f s; left as it was",
                                tid, BECOME_STOP_WAIT)
                    self._detach(tid)
                return
        except ChildProcessError:
            return  # gone: nothing to become
        except Exception:
            log.exception("BECOME of thread %d", tid)
            self._detach(tid)
            return
        r = _Regs()
        try:
            _ptrace(PTRACE_GETREGS, tid, None, ctypes.byref(r))
            for name, value in regs.items():
                setattr(r, name, value)
            r.rip = rip
            r.orig_rax = (1 << 64) - 1
            _ptrace(PTRACE_SETREGS, tid, None, ctypes.byref(r))
        except OSError as e:
            log.warning("BECOME of thread %d failed: %s", tid, e)
        finally:
            self._detach(tid)

    def _stopped(self, tid: int) -> bool:
        """True once tid is in its ptrace stop (consumed); ChildProcessError if it died."""
        # WNOWAIT first: a program's main thread is twzd's child, for the pidfd watcher to reap
        seen = os.waitid(os.P_PID, tid, os.WSTOPPED | os.WEXITED | os.WNOWAIT | os.WNOHANG | WALL)
        if seen is None:
            return False
        if seen.si_code in (os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED):
            if tid not in self.daemon.programs:
                # a tracee that is not our child: the wait hands it back to its parent
                os.waitid(os.P_PID, tid, os.WEXITED | os.WNOHANG | WALL)
            raise ChildProcessError(tid)
        os.waitid(os.P_PID, tid, os.WSTOPPED | os.WNOHANG | WALL)
        return True

    @staticmethod
    def _detach(tid: int) -> None:
        try:
            _ptrace(PTRACE_DETACH, tid, None, None)
        except OSError:
            pass  # it died meanwhile
