"""A trapped caller's memory, as the kernel core's MemoryAccess.

Reads go through /proc/TID/mem (one pread, no ctypes). Writes go through process_vm_writev,
which honours the target's page protections: /proc/TID/mem would write through them, letting a
hostile program point twzd at its own read-only memory (code, a read-only object) and have it
modified.
"""

import ctypes
import errno
import os

from twzlinux.kernel.core import SyscallError

ADDR_LIMIT = 1 << 47  # x86-64 user space; nothing above it is the caller's memory
MAX_TRANSFER = 64 << 20  # bounds what one call can make twzd allocate

_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_writev.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                                    ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]


def _check_range(addr: int, n: int) -> None:
    if n < 0 or n > MAX_TRANSFER:
        raise SyscallError(errno.EINVAL)
    if addr < 0 or addr + n > ADDR_LIMIT:
        raise SyscallError(errno.EFAULT)


class ProcMemory:
    """Memory of thread `tid` (a notification's pid is the calling thread's id).

    `still_valid` is called after /proc/TID/mem is opened: a TID can be reused once the caller
    dies, and only a check after the open proves the file belongs to the caller.
    """

    __slots__ = ("tid", "_still_valid", "_fd")  # one is made per trapped call

    def __init__(self, tid: int, still_valid):
        self.tid = tid
        self._still_valid = still_valid
        self._fd = None

    def _mem_fd(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(f"/proc/{self.tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise SyscallError(errno.EFAULT) from None
            if not self._still_valid():
                raise SyscallError(errno.EFAULT)
        return self._fd

    def read(self, addr: int, n: int) -> bytes:
        _check_range(addr, n)
        if n == 0:
            return b""
        try:
            data = os.pread(self._mem_fd(), n, addr)
        except OSError:
            raise SyscallError(errno.EFAULT) from None
        if len(data) != n:
            raise SyscallError(errno.EFAULT)
        return data

    def write(self, addr: int, data: bytes) -> None:
        n = len(data)
        _check_range(addr, n)
        if n == 0:
            return
        self._mem_fd()  # the same TID-reuse check as a read
        src = ctypes.create_string_buffer(bytes(data), n)
        local = _IoVec(ctypes.cast(src, ctypes.c_void_p), n)
        remote = _IoVec(addr, n)
        done = _libc.process_vm_writev(self.tid, ctypes.byref(local), 1, ctypes.byref(remote),
                                       1, 0)
        if done != n:
            raise SyscallError(errno.EFAULT)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def task_ids(tid: int) -> tuple[int, int] | None:
    """(Tgid, PPid) of Linux thread `tid` from /proc, or None if it cannot be read (gone)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            ids = dict(ln.split(b":", 1) for ln in f if ln.startswith((b"Tgid:", b"PPid:")))
        return int(ids[b"Tgid"]), int(ids[b"PPid"])
    except (OSError, KeyError, ValueError):
        return None
