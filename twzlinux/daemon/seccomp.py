"""The seccomp user-notification adapter: one listener per Twizzler process.

Each trapped call is received, decoded, handed to `Kernel.syscall` and answered; the kernel core
never sees an fd or an ioctl. Everything here must survive a hostile or dying caller: a
notification whose caller is gone is dropped, and no exception leaves `_on_readable` (it runs
inside the event loop, and an escaping error would stop twzd serving everyone).
"""

import errno
import fcntl
import logging
import os
import select
import struct

from twzlinux.abi.syscalls import BY_NAME, SYSCALL_BASE
from twzlinux.daemon import policy
from twzlinux.daemon.procmem import ProcMemory
from twzlinux.daemon.trace import format_call
from twzlinux.kernel.core import FdResult, SyscallError
from twzlinux.kernel.gates import Deferred

log = logging.getLogger("twzd.seccomp")


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


_IOW, _IOWR = 1, 3
NOTIF = struct.Struct("=QIIiIQ6Q")  # struct seccomp_notif: id, pid, flags, then seccomp_data
RESP = struct.Struct("=QqiI")  # struct seccomp_notif_resp: id, val, error, flags
ADDFD = struct.Struct("=QIIII")  # struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags
SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOWR, 0, NOTIF.size)
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOWR, 1, RESP.size)
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOW, 2, 8)
SECCOMP_IOCTL_NOTIF_ADDFD = _ioc(_IOW, 3, ADDFD.size)
SECCOMP_IOCTL_NOTIF_SET_FLAGS = _ioc(_IOW, 4, 8)  # 6.6+, missing from the 6.1 headers
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
SECCOMP_ADDFD_FLAG_SEND = 2
_LX_TRACE = BY_NAME["LX_TRACE"].linux_nr
_SERVED_IN_PROCESS = {BY_NAME["THRD_SYNC"].nr, BY_NAME["THRD_CTL"].nr}  # twz/thread.h serves them


class Listener:
    """Serves one process's listener on `loop` until the process (and its descendants) are gone.

    `proc` is the kernel's Process record; `trace`, if given, is called (tid, line) per call.
    """

    def __init__(self, loop, fd: int, kernel, proc, trace=None):
        self.loop, self.fd, self.kernel, self.proc = loop, fd, kernel, proc
        self.trace = trace
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self.exited = False  # set by the server after Kernel.process_exit(proc)
        try:
            # Wake the caller on the CPU twzd answers from: on this 2-CPU machine it is the
            # difference between ~10 µs and ~90 µs per call.
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        except OSError as e:
            log.warning("listener for pid %s: SYNC_WAKE_UP not available (%s); calls will be "
                        "slower when the caller sleeps on another CPU", proc.pid, e.strerror)
        loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        if self.fd is None:
            return
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = None

    def _on_readable(self) -> None:
        try:
            # RECV blocks when nothing is pending, which would freeze twzd: only call it when
            # poll says a notification is waiting. One per wake-up; the loop calls again.
            ready = self._poller.poll(0)
            events = ready[0][1] if ready else 0
            if events & select.POLLIN:
                self._serve_one()
            elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self.close()  # every process that could trap through this filter is gone
        except Exception:
            log.exception("seccomp listener for pid %s failed; closing it", self.proc.pid)
            self.close()

    def _recv(self):
        buf = bytearray(NOTIF.size)  # must be zero on every call or the kernel says EINVAL
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EAGAIN, errno.EINTR):
                return None  # the caller was killed between the wake-up and the RECV
            raise
        return NOTIF.unpack(buf)

    def _id_valid(self, notif_id: int) -> bool:
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
            return True
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    def _serve_one(self) -> None:
        notif = self._recv()
        if notif is None:
            return
        notif_id, tid, _flags, nr, _arch, _ip, *regs = notif
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
        if isinstance(result, Deferred):
            # Answered when the kernel completes it (a gate call, twzlinux/kernel/gates.py);
            # the caller stays in its syscall until then.
            result.attach(lambda value, writes: self._finish(notif_id, tid, nr, regs, value,
                                                             writes))
            return
        if isinstance(result, FdResult):
            installed = self._answer_fd(notif_id, result.fd)
            if self.trace:  # after: the caller's fd number exists only once installed
                self.trace(tid, format_call(tid, nr, regs, installed))
        else:
            if self.trace:  # before: the line then precedes anything the caller writes next
                self.trace(tid, format_call(tid, nr, regs, result))
            self._answer(notif_id, result)

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
        if not hosted or tid == self.proc.pid:
            return self.proc
        proc = hosted.get(tid)
        if proc is None:
            try:
                with open(f"/proc/{tid}/status", "rb") as f:
                    ids = dict(ln.split(b":", 1) for ln in f if ln.startswith((b"Tgid:",
                                                                                b"PPid:")))
                tgid, ppid = int(ids[b"Tgid"]), int(ids[b"PPid"])
            except (OSError, KeyError, ValueError):
                return self.proc
            proc = hosted.get(tgid) or (hosted.get(ppid, self.proc) if tgid != self.proc.pid
                                        else self.proc)
        return proc

    def _call(self, tid, nr, regs, mem):
        if nr < SYSCALL_BASE:
            return -policy.REFUSAL_ERRNO  # a refused Linux call, sent here only under --trace
        proc = self._process_of(tid)
        if self.exited and proc is self.proc:
            # A descendant outlived the process whose record the call would act on.
            log.info("pid %s exited; its descendant %s made syscall %#x: ESRCH",
                     self.proc.pid, tid, nr)
            return -errno.ESRCH
        try:
            result = self.kernel.syscall(proc, nr, regs, mem, tid=tid)
            if isinstance(result, (int, FdResult, Deferred)) and not isinstance(result, bool):
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
        if -4095 <= value < 0:
            resp = RESP.pack(notif_id, 0, value, 0)
        else:
            # rax is 64 bits: a u64 result (KCONF) with the top bit set travels as a negative val
            value &= 0xFFFFFFFFFFFFFFFF
            resp = RESP.pack(notif_id, value - (1 << 64) if value >> 63 else value, 0, 0)
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(resp), True)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the caller has gone
                raise

    def _answer_fd(self, notif_id: int, fd: int) -> int:
        """Install `fd` in the caller as the call's result; the caller's fd number or -errno."""
        req = ADDFD.pack(notif_id, SECCOMP_ADDFD_FLAG_SEND, fd, 0, os.O_CLOEXEC)
        try:
            return fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ADDFD, bytearray(req), True)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return -errno.ESRCH
            if e.errno == errno.EMFILE:
                self._answer(notif_id, -errno.EMFILE)  # the caller's fd table is full
                return -errno.EMFILE
            raise
        finally:
            os.close(fd)
