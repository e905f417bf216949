"""The seccomp filter that sends Twizzler system calls to twzd.

Installed by the new process itself (twzlinux.launch) before the program runs; the listener fd
it returns is handed to twzd, which answers every trapped call. Everything else runs natively.
"""

import ctypes
import errno
import os
import struct

from twzlinux.abi.syscalls import SYSCALL_BASE, SYSCALL_LIMIT

# <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>: not exposed by Python's stdlib.
PR_SET_NO_NEW_PRIVS = 38
NR_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
OFF_NR, OFF_ARCH = 0, 4  # struct seccomp_data


def _insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def program() -> bytes:
    """The BPF program as struct sock_filter[]."""
    return b"".join([
        _insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        # Another architecture's numbers mean other calls; a process switching ABI is hostile.
        _insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
        # x32 numbers alias ours with the bit set; without this check they would bypass twzd.
        _insn(BPF_JSET_K, 0, 1, X32_SYSCALL_BIT),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        _insn(BPF_JGE_K, 0, 2, SYSCALL_BASE),
        _insn(BPF_JGE_K, 1, 0, SYSCALL_LIMIT),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])


def install() -> int:
    """Install the filter on the calling thread; return the user-notification listener fd.

    Call it while the process has one thread: threads created later inherit the filter.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(e)}")
    libc.syscall.restype = ctypes.c_long
    # WAIT_KILLABLE_RECV: once twzd has received a call, only a fatal signal may abandon it, so
    # a signal caught by the program never makes a call that twzd already carried out restart.
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    fd = libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(flags), ctypes.byref(prog))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SET_MODE_FILTER, NEW_LISTENER): {os.strerror(e)}")
    return fd
