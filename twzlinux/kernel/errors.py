"""The boundary between the kernel core and its I/O adapter: errors, fd results, caller memory."""

from dataclasses import dataclass
from typing import Protocol

from twzlinux.abi.constants import errno_name


class SyscallError(Exception):
    """A syscall failure; the adapter answers with -errno in rax."""

    def __init__(self, errno: int, detail: str = ""):
        super().__init__(f"{errno_name(errno)}{': ' + detail if detail else ''}")
        self.errno = errno


@dataclass(frozen=True)
class FdResult:
    """A syscall result that is a new file descriptor for the caller.

    The fd is open in twzd; the adapter installs it in the caller with ADDFD, which returns the
    caller's number, and then closes twzd's copy.
    """

    fd: int


class MemoryAccess(Protocol):
    """The caller's memory. Both methods raise SyscallError(EFAULT) for a bad address."""

    def read(self, addr: int, n: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...
