"""The seccomp user-notification adapter: one listener per Twizzler process.

Each trapped call is received, decoded, handed to `Kernel.syscall` and answered; the kernel core
never sees an fd or an ioctl. Everything here must survive a hostile or dying caller: a
notification whose caller is gone is dropped, and no exception leaves `_on_readable` (it runs
inside the event loop, and an escaping error would stop twzd serving everyone).
"""

import errno
import logging
import os
import signal
import struct

from twzlinux._twznotif import ffi, lib
from twzlinux.abi.syscalls import BY_NAME, SYSCALL_BASE
from twzlinux.daemon import policy
from twzlinux.daemon.procmem import ProcMemory, task_ids
from twzlinux.daemon.trace import format_call
from twzlinux.kernel.core import FdResult, SyscallError
from twzlinux.kernel.gates import Deferred

log = logging.getLogger("twzd.seccomp")

_U64 = (1 << 64) - 1
# Calls served per wake-up while more are pending: a caller woken by SEND usually traps again
# before twzd is back in its loop, and serving it at once saves the loop's round. The bound
# keeps every other fd (other programs, exits, requests) from waiting behind a busy caller.
_BURST = 64
# twz_notif_recv's out: id, tid, nr, then the registers (struct reads it faster than ffi.unpack)
_HEAD, _REGS = struct.Struct("=3Q"), struct.Struct("=6Q")
_LX_TRACE = BY_NAME["LX_TRACE"].linux_nr
_SERVED_IN_PROCESS = {BY_NAME["THRD_SYNC"].nr, BY_NAME["THRD_CTL"].nr}  # twz/thread.h serves them


_PIDFD_THREAD = os.O_EXCL  # pidfd_open: the pidfd of a thread, not only of a leader (6.9+)
_TGIDS_KEPT = 256  # bounds the pidfds a listener holds for callers' thread groups


def _raise_errno(err: int):
    raise OSError(-err, os.strerror(-err))


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
        return True
    except OSError:
        return False


class _ThreadGroups:
    """tid -> Tgid of the threads that trapped, so a thread's calls do not each read /proc.

    A thread's group never changes while it lives, but its tid is reused once it has exited:
    each entry keeps a pidfd of the thread it was read for and is used only while that thread
    is alive, so a reused tid is read again. Where the kernel has no thread pidfds (before
    6.9) nothing is kept and every lookup reads /proc.
    """

    def __init__(self):
        self._known: dict[int, tuple[int, int]] = {}  # tid -> (pidfd, tgid)

    def tgid(self, tid: int) -> int | None:
        known = self._known.get(tid)
        if known is not None:
            if _alive(known[0]):
                return known[1]
            self._forget(tid)
        try:
            pidfd = os.pidfd_open(tid, _PIDFD_THREAD)
        except OSError:
            pidfd = None
        ids = task_ids(tid)
        if pidfd is not None:
            # alive after the read: the tid was not reused in between, the status is its own
            if ids is not None and _alive(pidfd):
                self._keep(tid, pidfd, ids[0])
            else:
                os.close(pidfd)
        return ids[0] if ids else None

    def _keep(self, tid: int, pidfd: int, tgid: int) -> None:
        if len(self._known) >= _TGIDS_KEPT:
            for old in [t for t, (fd, _) in self._known.items() if not _alive(fd)]:
                self._forget(old)
            if len(self._known) >= _TGIDS_KEPT:
                self._forget(next(iter(self._known)))  # the oldest, all being alive
        self._known[tid] = (pidfd, tgid)

    def _forget(self, tid: int) -> None:
        os.close(self._known.pop(tid)[0])

    def close(self) -> None:
        for tid in list(self._known):
            self._forget(tid)


class Listener:
    """Serves one process's listener on `loop` until the process (and its descendants) are gone.

    `proc` is the kernel's Process record; `trace`, if given, is called (tid, line) per call.
    """

    def __init__(self, loop, fd: int, kernel, proc, trace=None):
        self.loop, self.fd, self.kernel, self.proc = loop, fd, kernel, proc
        self.trace = trace
        self._notif = ffi.new("uint64_t[9]")  # twz_notif_recv's out, reused call after call
        self._notif_bytes = ffi.buffer(self._notif)
        self.exited = False  # set by the server after Kernel.process_exit(proc)
        self._tgids = _ThreadGroups()
        # Wake the caller on the CPU twzd answers from: on this 2-CPU machine it is the
        # difference between ~10 µs and ~90 µs per call.
        err = lib.twz_notif_set_sync_wakeup(fd)
        if err:
            log.warning("listener for pid %s: SYNC_WAKE_UP not available (%s); calls will be "
                        "slower when the caller sleeps on another CPU", proc.pid,
                        os.strerror(-err))
        loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        if self.fd is None:
            return
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = None
        self._tgids.close()

    def _on_readable(self) -> None:
        try:
            for _ in range(_BURST):
                if self.fd is None:
                    return
                got = lib.twz_notif_recv(self.fd, self._notif)
                if got == lib.TWZ_NOTIF_READY:
                    self._serve_one()
                elif got == lib.TWZ_NOTIF_NONE:
                    return
                elif got == lib.TWZ_NOTIF_HUP:
                    self.close()  # every process that could trap through this filter is gone
                    return
                else:
                    _raise_errno(got)
        except Exception:
            log.exception("seccomp listener for pid %s failed; closing it", self.proc.pid)
            self.close()

    def _id_valid(self, notif_id: int) -> bool:
        valid = lib.twz_notif_id_valid(self.fd, notif_id)
        if valid < 0:
            _raise_errno(valid)
        return bool(valid)

    def _serve_one(self) -> None:
        notif_id, tid, nr = _HEAD.unpack_from(self._notif_bytes)
        regs = _REGS.unpack_from(self._notif_bytes, _HEAD.size)
        if nr == _LX_TRACE and self.trace:
            self._answer(notif_id, self._served_in_process(tid, regs))
            return
        mem = ProcMemory(tid, lambda: self._id_valid(notif_id))
        try:
            result = self._call(tid, nr, regs, mem)
        finally:
            mem.close()
        # No ID_VALID check here: ProcMemory checked it after opening the caller's memory (the
        # check that matters, against a recycled tid), and an answer to a caller that has gone
        # since fails with ENOENT, which both answer paths expect.
        if isinstance(result, int):
            if self.trace:  # before: the line then precedes anything the caller writes next
                self.trace(tid, format_call(tid, nr, regs, result))
            self._answer(notif_id, result)
        elif isinstance(result, Deferred):
            # Answered when the kernel completes it (a gate call, twzlinux/kernel/gates.py);
            # the caller stays in its syscall until then.
            result.attach(lambda value, writes: self._finish(notif_id, tid, nr, regs, value,
                                                             writes))
        else:
            installed = self._answer_fd(notif_id, result.fd)
            if self.trace:  # after: the caller's fd number exists only once installed
                self.trace(tid, format_call(tid, nr, regs, installed))

    def _served_in_process(self, tid: int, regs) -> int:
        """LX_TRACE: the line for a THRD_SYNC/THRD_CTL the runtime served in-process."""
        nr, result, *args = regs[:5]
        if nr not in _SERVED_IN_PROCESS:
            return -errno.EINVAL
        result = result - (1 << 64) if result >> 63 else result
        self.trace(tid, format_call(tid, SYSCALL_BASE + nr, [*args, 0, 0, 0], result))
        return 0

    def _process_of(self, tid: int):
        """The caller's kernel record: a forked process that hosts a thread in another view, or
        reported its fork (LX_FORKED), has its own (kernel.hosted); a fork not yet reported
        counts as its parent's; every other thread of the filter's family is the program's."""
        hosted = self.kernel.hosted
        if not hosted:
            return self.proc
        proc = hosted.get(tid)
        if proc is not None:
            return proc
        tgid = self._tgids.tgid(tid)
        if tgid is None:
            return self.proc
        proc = hosted.get(tgid)
        if proc is not None or tgid == self.proc.pid:
            return proc or self.proc
        ids = task_ids(tid)  # read now, never kept: a thread's parent can change
        return hosted.get(ids[1], self.proc) if ids else self.proc

    def _call(self, tid, nr, regs, mem):
        if nr < SYSCALL_BASE:
            return -policy.REFUSAL_ERRNO  # a refused Linux call, sent here only under --trace
        proc = self.proc if tid == self.proc.pid else self._process_of(tid)
        if self.exited and proc is self.proc:
            # A descendant outlived the process whose record the call would act on.
            log.info("pid %s exited; its descendant %s made syscall %#x: ESRCH",
                     self.proc.pid, tid, nr)
            return -errno.ESRCH
        try:
            result = self.kernel.syscall(proc, nr, regs, mem, tid=tid)
            if type(result) is int or (isinstance(result, (int, FdResult, Deferred))
                                       and not isinstance(result, bool)):
                return result
            raise TypeError(f"Kernel.syscall returned {result!r}, not an int or FdResult")
        except SyscallError as e:
            return -e.errno
        except Exception:
            log.exception("kernel bug: syscall %#x from pid %s (tid %s), regs %s; answering "
                          "EINVAL", nr, self.proc.pid, tid, [hex(r) for r in regs])
            return -errno.EINVAL

    def _finish(self, notif_id, tid, nr, regs, value: int, writes) -> None:
        """Complete a deferred call: write its results into the caller, then answer it."""
        if writes:
            mem = ProcMemory(tid, lambda: self._id_valid(notif_id))
            try:
                for addr, data in writes:
                    mem.write(addr, data)
            except SyscallError as e:
                value = -e.errno
            finally:
                mem.close()
        if self.trace:
            self.trace(tid, format_call(tid, nr, regs, value))
        self._answer(notif_id, value)

    def _answer(self, notif_id: int, value: int) -> None:
        # rax is 64 bits: a u64 result (KCONF) with the top bit set travels as a negative val
        err = lib.twz_notif_send(self.fd, notif_id, value & _U64)
        if err and err != -errno.ENOENT:  # ENOENT: the caller has gone
            _raise_errno(err)

    def _answer_fd(self, notif_id: int, fd: int) -> int:
        """Install `fd` in the caller as the call's result; the caller's fd number or -errno."""
        try:
            installed = lib.twz_notif_addfd_send(self.fd, notif_id, fd)
        finally:
            os.close(fd)
        if installed == -errno.ENOENT:
            return -errno.ESRCH
        if installed == -errno.EMFILE:
            self._answer(notif_id, -errno.EMFILE)  # the caller's fd table is full
        elif installed < 0:
            _raise_errno(installed)
        return installed
