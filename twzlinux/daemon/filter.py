"""The seccomp filter that sends Twizzler system calls to twzd.

Installed by the new process itself (twzlinux.launch) before the program runs; the listener fd
it returns is handed to twzd, which answers every trapped call. Linux calls that the policy
refuses (twzlinux.daemon.policy) fail with EPERM; everything else runs natively.
"""

import ctypes
import errno
import os
import struct

from twzlinux.abi.syscalls import SYSCALL_BASE, SYSCALL_LIMIT
from twzlinux.daemon import policy

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
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16  # struct seccomp_data


def _insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def _assemble(lines) -> bytes:
    """Instructions (code, jt, jf, k) with jump targets given as label names; a label is a str
    item standing before the instruction it names."""
    labels, insns = {}, []
    for item in lines:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def rel(target, at):
        return target if isinstance(target, int) else labels[target] - at - 1

    return b"".join(_insn(code, rel(jt, i), rel(jf, i), k)
                    for i, (code, jt, jf, k) in enumerate(insns))


def program(trace: bool = False) -> bytes:
    """The BPF program as struct sock_filter[].

    Refused Linux calls (twzlinux.daemon.policy) fail with EPERM in the kernel; with `trace`
    they go to twzd instead, which answers EPERM and writes the trace line.
    """
    refuse = SECCOMP_RET_USER_NOTIF if trace else SECCOMP_RET_ERRNO | policy.REFUSAL_ERRNO
    return _assemble([
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        # Another architecture's numbers mean other calls; a process switching ABI is hostile.
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
        # x32 numbers alias ours with the bit set; without this check they would bypass twzd.
        (BPF_JSET_K, 0, 1, X32_SYSCALL_BIT),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        (BPF_JGE_K, "twizzler", 0, SYSCALL_BASE),
        *[(BPF_JEQ_K, "refuse", 0, nr) for nr in sorted(policy.REFUSED)],
        (BPF_JEQ_K, "clone", 0, policy.NR_CLONE),
        (BPF_JEQ_K, 0, "allow", policy.NR_CLONE3),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        "clone",
        (BPF_LD_W_ABS, 0, 0, OFF_ARG0),  # the low half of the flags: every CLONE_NEW* is there
        (BPF_JSET_K, "refuse", "allow", policy.CLONE_NAMESPACE_FLAGS),
        "twizzler",
        (BPF_JGE_K, "allow", 0, SYSCALL_LIMIT),
        (BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
        "refuse",
        (BPF_RET_K, 0, 0, refuse),
        "allow",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])


def install(trace: bool = False) -> int:
    """Install the filter on the calling thread; return the user-notification listener fd.

    Call it while the process has one thread: threads created later inherit the filter.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    code = program(trace)
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
