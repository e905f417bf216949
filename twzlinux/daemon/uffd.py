"""The userfaultfd adapter: each Twizzler process's uffd, served on twzd's loop.

The runtime makes a userfaultfd in its own mm right after exec (it must: exec replaces the mm)
and hands its number over with LX_UFFD; twzd takes a copy with pidfd_getfd, runs UFFDIO_API
itself, and from then on registers, write-protects and resolves faults in that mm without the
process's help (registration acts on the mm the uffd belongs to, not the caller's). Faults are
served here, never in a thread of the faulting process: a Python thread serving its own
process's faults deadlocks as soon as a fault is taken with the GIL held.

The kernel core (kernel/cow.py) decides; this module only speaks ioctl. A process that died
meanwhile makes every ioctl fail, which is fine: its records go at process_exit.
"""

import ctypes
import errno
import fcntl
import logging
import os
import signal
import struct

from twzlinux.abi import constants as c
from twzlinux.daemon.procmem import task_ids
from twzlinux.kernel.errors import SyscallError

log = logging.getLogger("twzd.uffd")

_SYS_PIDFD_GETFD = 438
_UFFDIO = 0xAA
_API = 0xAA


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (_UFFDIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (_UFFDIO << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)
UFFDIO_REGISTER = _iowr(0x00, 32)
UFFDIO_UNREGISTER = _ior(0x01, 16)
UFFDIO_WAKE = _ior(0x02, 16)
UFFDIO_ZEROPAGE = _iowr(0x04, 32)
UFFDIO_WRITEPROTECT = _iowr(0x06, 24)
MODE_MISSING, MODE_WP = 1, 2
WP_MODE_WP = 1
FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
FEATURE_MISSING_SHMEM = 1 << 5
FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
FEATURE_WP_UNPOPULATED = 1 << 13
FEATURE_WP_ASYNC = 1 << 15
FEATURES = FEATURE_PAGEFAULT_FLAG_WP | FEATURE_MISSING_SHMEM | FEATURE_WP_HUGETLBFS_SHMEM
ASYNC_FEATURES = FEATURE_WP_ASYNC | FEATURE_WP_HUGETLBFS_SHMEM | FEATURE_WP_UNPOPULATED
# PAGEMAP_SCAN (6.7+, missing from the 6.1 headers): _IOWR('f', 16, struct pm_scan_arg)
PM_SCAN_ARG = struct.Struct("=12Q")  # size, flags, start, end, walk_end, vec, vec_len,
#   max_pages, category_inverted, category_mask, category_anyof_mask, return_mask
PAGEMAP_SCAN = (3 << 30) | (PM_SCAN_ARG.size << 16) | (ord("f") << 8) | 16
PM_SCAN_WP_MATCHING, PM_SCAN_CHECK_WPASYNC = 1, 2
PAGE_IS_WRITTEN = 1 << 1
_SCAN_REGIONS = 512
EVENT_PAGEFAULT = 0x12
PAGEFAULT_FLAG_WP = 2
MSG = struct.Struct("=B7xQQI4x")  # struct uffd_msg, pagefault arm: event, flags, address, ptid
_READ_BATCH = 64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def pidfd_getfd(pidfd: int, fd: int) -> int:
    got = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return got


def _mapped(base: int) -> tuple[int, int]:
    """(start, length) of what the runtime maps of the slot at `base`: all but the null page."""
    return base + c.OBJ_NULLPAGE_SIZE, c.OBJ_MAXSIZE - c.OBJ_NULLPAGE_SIZE


class UffdPort:
    """kernel.cow.Port over real userfaultfds; `lazy` is the kernel's LazyCopies."""

    def __init__(self, loop, lazy):
        self.loop, self.lazy = loop, lazy
        self._fds: dict = {}  # proc -> our copy of its uffd
        self._wfds: dict = {}  # proc -> our copy of its WP_ASYNC uffd

    # --- Port ---------------------------------------------------------------------------------

    def can_trap(self, proc) -> bool:
        return proc in self._fds

    def tgid(self, tid: int) -> int:
        """The process of Linux thread `tid` (itself if it is gone: it answers nothing then)."""
        ids = task_ids(tid)
        return ids[0] if ids else tid

    def adopt(self, proc, fd: int, wfd: int) -> None:
        if proc in self._fds:
            raise SyscallError(errno.EBUSY, "this process already handed over a userfaultfd")
        ours = self._take(proc, fd, FEATURES)
        if wfd >= 0:
            try:
                self._wfds[proc] = self._take(proc, wfd, ASYNC_FEATURES)
            except SyscallError:
                os.close(ours)
                raise
        self._fds[proc] = ours
        self.loop.add_reader(ours, self._on_readable, proc, ours)

    def _take(self, proc, fd: int, features: int) -> int:
        """Our copy of the caller's fd, after UFFDIO_API with `features`."""
        try:
            pidfd = os.pidfd_open(proc.pid)
            try:
                ours = pidfd_getfd(pidfd, fd)
            finally:
                os.close(pidfd)
        except OSError as e:
            raise SyscallError(errno.EBADF if e.errno == errno.EBADF else errno.EINVAL,
                               f"cannot take fd {fd}: {e.strerror}") from None
        try:
            api = bytearray(struct.pack("=QQQ", _API, features, 0))
            fcntl.ioctl(ours, UFFDIO_API, api, True)
            os.set_blocking(ours, False)
        except OSError as e:
            os.close(ours)
            raise SyscallError(errno.EINVAL, f"fd {fd} is not a fresh userfaultfd with "
                                             f"features {features:#x} ({e.strerror})") from None
        return ours

    def register(self, proc, base: int, wp: bool) -> int:
        return self._ioctl(proc, UFFDIO_REGISTER, struct.pack(
            "=QQQQ", *_mapped(base), MODE_MISSING | (MODE_WP if wp else 0), 0),
            quiet=(errno.EPERM,))

    def unregister(self, proc, base: int) -> None:
        self._ioctl(proc, UFFDIO_UNREGISTER, struct.pack("=QQ", *_mapped(base)))

    def protect(self, proc, addr: int, n: int, on: bool) -> None:
        self._ioctl(proc, UFFDIO_WRITEPROTECT, struct.pack("=QQQ", addr, n,
                                                           WP_MODE_WP if on else 0))

    def zero(self, proc, addr: int) -> None:
        self._ioctl(proc, UFFDIO_ZEROPAGE, struct.pack("=QQQq", addr, c.PAGE_SIZE, 0, 0),
                    quiet=(errno.EEXIST,))

    def forget(self, proc) -> None:
        fd = self._fds.pop(proc, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)
        wfd = self._wfds.pop(proc, None)
        if wfd is not None:
            os.close(wfd)

    # --- write tracking (kernel/dirty.py) -----------------------------------------------------

    def can_track(self, proc) -> bool:
        return proc in self._wfds

    def track(self, proc, base: int) -> int:
        """Write-protect proc's slot at `base` asynchronously: a write un-protects the page
        without a trap, and PAGEMAP_SCAN then reports it. 0 or errno."""
        fd = self._wfds.get(proc)
        if fd is None:
            return errno.ESRCH
        start, n = _mapped(base)
        try:
            fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(struct.pack("=QQQQ", start, n, MODE_WP,
                                                                   0)), True)
            fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("=QQQ", start, n,
                                                                       WP_MODE_WP)), True)
        except OSError as e:
            return e.errno
        return 0

    def written(self, proc, base: int) -> list[tuple[int, int]] | None:
        """Slot offset ranges proc wrote at `base` since the last call (protecting them again),
        or None if its page map cannot be read."""
        start, n = _mapped(base)
        out, vec = [], (ctypes.c_uint64 * (3 * _SCAN_REGIONS))()
        try:
            pm = os.open(f"/proc/{proc.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            while start < base + c.OBJ_MAXSIZE:
                arg = bytearray(PM_SCAN_ARG.pack(
                    PM_SCAN_ARG.size, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, start,
                    base + c.OBJ_MAXSIZE, 0, ctypes.addressof(vec), _SCAN_REGIONS, 0, 0,
                    PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN))
                got = fcntl.ioctl(pm, PAGEMAP_SCAN, arg, True)
                out += [(vec[3 * i] - base, vec[3 * i + 1] - base) for i in range(got)]
                walk_end = PM_SCAN_ARG.unpack(arg)[4]
                if walk_end <= start:
                    break
                start = walk_end
        except OSError as e:
            log.info("pid %s: PAGEMAP_SCAN: %s", proc.pid, e.strerror)
            return None
        finally:
            os.close(pm)
        return out

    # --- faults -------------------------------------------------------------------------------

    def _ioctl(self, proc, req: int, arg: bytes, quiet=()) -> int:
        """0, or the errno the ioctl failed with (ESRCH if proc has no uffd)."""
        fd = self._fds.get(proc)
        if fd is None:
            return errno.ESRCH
        try:
            fcntl.ioctl(fd, req, bytearray(arg), True)
            return 0
        except OSError as e:
            if e.errno not in quiet:
                log.debug("pid %s: uffd ioctl %#x: %s", proc.pid, req, e.strerror)
            return e.errno

    def _on_readable(self, proc, fd: int) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, MSG.size * _READ_BATCH)
                except BlockingIOError:
                    return
                if not data:
                    return
                for i in range(0, len(data) - MSG.size + 1, MSG.size):
                    event, flags, addr, _ = MSG.unpack_from(data, i)
                    if event == EVENT_PAGEFAULT:
                        self._resolve(proc, addr & ~(c.PAGE_SIZE - 1), flags)
        except Exception:
            # Unanswered, the fault hangs the process; with its uffd closed it would read owed
            # pages as zeros. Neither is acceptable, so the process goes.
            log.exception("pid %s: serving a userfault failed; killing the process", proc.pid)
            self.forget(proc)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _resolve(self, proc, page: int, flags: int) -> None:
        action = self.lazy.fault(proc, page, wp=bool(flags & PAGEFAULT_FLAG_WP))
        if action == "unprotect":
            self.protect(proc, page, c.PAGE_SIZE, False)  # wakes the faulting thread too
        elif action == "zero":
            if self._ioctl(proc, UFFDIO_ZEROPAGE, struct.pack("=QQQq", page, c.PAGE_SIZE, 0, 0),
                           quiet=(errno.EEXIST,)):
                self._wake(proc, page)  # EEXIST: someone filled it meanwhile
        else:
            self._wake(proc, page)

    def _wake(self, proc, page: int) -> None:
        self._ioctl(proc, UFFDIO_WAKE, struct.pack("=QQ", page, c.PAGE_SIZE))


PAGER_PERIOD = 0.1  # seconds between checks of the memory budget


def start_pager(loop, kernel, home) -> None:
    """With TWZ_MEMORY_BUDGET (MiB; `twzd --memory-budget`) set, keep volatile objects within it
    (kernel/pager.py), checking every PAGER_PERIOD."""
    from twzlinux.kernel.pager import Pager  # noqa: PLC0415 (only with a budget)

    text = os.environ.get("TWZ_MEMORY_BUDGET")
    if not text:
        return
    try:
        budget = int(text)
    except ValueError:
        log.error("TWZ_MEMORY_BUDGET=%r is not a number of MiB; no memory budget", text)
        return
    pager = Pager(kernel.objects, budget * (1 << 20) // c.PAGE_SIZE, home / "swap")
    log.info("memory budget: %d MiB of volatile objects; the rest is paged to %s", budget,
             pager.swap_dir)

    def tick():
        try:
            evicted = pager.balance()
            if evicted:
                log.info("pager: evicted %d pages to stay within %d MiB", evicted, budget)
        except Exception:
            log.exception("pager: balancing failed")
        loop.call_later(PAGER_PERIOD, tick)

    loop.call_later(PAGER_PERIOD, tick)
