"""Which Linux system calls a Twizzler program may make directly (docs/syscall-policy.md).

Everything not named here runs natively: the personality is a Linux process, and CPython, libc
and ordinary native code need files, sockets, threads, signals, mmap, futexes, userfaultfd and
seccomp for themselves. What is refused would let a program escape the personality: inspect or
change other processes (twzd included) behind twzd's back, change the machine for everyone, or
leave the x86-64 ABI that the filter checks. The filter (twzlinux.daemon.filter) enforces it;
a refused call fails with EPERM, and under `twzrun --trace` twzd answers it and says so.
"""

import errno

# x86-64 numbers (<asm/unistd_64.h>) of the calls refused outright, with the reason in a word.
REFUSED = {
    101: ("ptrace", "other processes"),
    310: ("process_vm_readv", "other processes"),
    311: ("process_vm_writev", "other processes"),
    438: ("pidfd_getfd", "other processes"),
    312: ("kcmp", "other processes"),
    321: ("bpf", "the kernel"),
    298: ("perf_event_open", "the kernel"),
    175: ("init_module", "the kernel"),
    313: ("finit_module", "the kernel"),
    176: ("delete_module", "the kernel"),
    246: ("kexec_load", "the machine"),
    320: ("kexec_file_load", "the machine"),
    169: ("reboot", "the machine"),
    167: ("swapon", "the machine"),
    168: ("swapoff", "the machine"),
    163: ("acct", "the machine"),
    164: ("settimeofday", "the machine"),
    227: ("clock_settime", "the machine"),
    305: ("clock_adjtime", "the machine"),
    159: ("adjtimex", "the machine"),
    170: ("sethostname", "the machine"),
    171: ("setdomainname", "the machine"),
    103: ("syslog", "the machine"),
    172: ("iopl", "the hardware"),
    173: ("ioperm", "the hardware"),
    154: ("modify_ldt", "the x86-64 ABI"),
    135: ("personality", "the x86-64 ABI"),
    165: ("mount", "the file system"),
    166: ("umount2", "the file system"),
    155: ("pivot_root", "the file system"),
    161: ("chroot", "the file system"),
    428: ("open_tree", "the file system"),
    429: ("move_mount", "the file system"),
    430: ("fsopen", "the file system"),
    431: ("fsconfig", "the file system"),
    432: ("fsmount", "the file system"),
    433: ("fspick", "the file system"),
    442: ("mount_setattr", "the file system"),
    304: ("open_by_handle_at", "the file system"),
    179: ("quotactl", "the file system"),
    272: ("unshare", "namespaces"),
    308: ("setns", "namespaces"),
    248: ("add_key", "the kernel keyrings"),
    249: ("request_key", "the kernel keyrings"),
    250: ("keyctl", "the kernel keyrings"),
}

# clone(2) with any of these flags makes new namespaces, which unshare(2) is refused for.
NR_CLONE = 56
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                         | 0x20000000 | 0x40000000 | 0x00000080)  # NEWNS..NEWNET, NEWTIME
# clone3(2) passes its flags in memory, where a filter cannot look: it answers ENOSYS, and libc
# (glibc 2.34+, musl, Rust std) then falls back to clone(2), whose flags the filter sees.
NR_CLONE3 = 435

REFUSAL_ERRNO = errno.EPERM


def refused_name(nr: int, regs=()) -> str | None:
    """The name of a refused Linux call (nr and its argument registers), or None if allowed."""
    if nr in REFUSED:
        return REFUSED[nr][0]
    if nr == NR_CLONE and regs and regs[0] & CLONE_NAMESPACE_FLAGS:
        return "clone"
    return None


def reason(nr: int) -> str:
    return REFUSED[nr][1] if nr in REFUSED else "namespaces"
