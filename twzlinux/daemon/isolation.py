"""Isolation of a program from the personality itself, applied by twzlinux.launch in the new
process before the seccomp filter (which refuses mount and unshare afterwards).

1. The store is out of reach by path: in a private mount namespace, an empty read-only tmpfs
   covers $TWZ_HOME (objects, twzd's socket, its log). Landlock cannot do this: it is
   allow-list only, and the home usually sits inside a tree the program must use (/tmp, ~).
2. No reach into twzd or other programs: a Landlock domain of its own, scoped for signals and
   abstract unix sockets (ABI 6+). Landlock also confines ptrace (and so /proc/PID/mem) to
   processes inside the domain. The program, and the children it starts, may still signal and
   trace each other; twzd and other programs are outside.
3. No capabilities (but CAP_SYS_PTRACE, see drop_capabilities): a root program would otherwise
   reopen a read-only object fd read-write through /proc/self/fd (CAP_DAC_OVERRIDE) or chown
   its inode back (twzlinux.kernel.lockdown).

Each step is required: a failure ends the launch with the reason.
"""

import ctypes
import os
import struct

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x4000, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
NR_LANDLOCK_CREATE_RULESET, NR_LANDLOCK_RESTRICT_SELF = 444, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 1, 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_SYS_PTRACE = 19

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)


class IsolationError(OSError):
    pass


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise IsolationError(e, f"{what}: {os.strerror(e)}")
    return ret


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def hide_home(home: str) -> None:
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        # An unprivileged user gets a mount namespace with a user namespace of its own.
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUSER), "unshare(CLONE_NEWNS|CLONE_NEWUSER)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    # Private first, or the cover would propagate back into twzd's namespace.
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(b"twz-hidden", os.fsencode(home), b"tmpfs",
                       MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"mode=000,size=4k"),
           f"cover {home}")
    try:
        cwd = os.getcwd()
    except OSError:
        return
    if cwd == home or cwd.startswith(home.rstrip("/") + "/"):
        os.chdir("/")  # a cwd inside the home would still reach the store by relative paths


def landlock_scope() -> None:
    abi = _libc.syscall(ctypes.c_long(NR_LANDLOCK_CREATE_RULESET), None, ctypes.c_long(0),
                        ctypes.c_long(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 6:
        raise IsolationError(0, f"Landlock ABI {abi} has no signal scoping (Linux 6.12+ needed)")
    attr = struct.pack("=QQQ", 0, 0, LANDLOCK_SCOPE_SIGNAL | LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET)
    fd = _check(_libc.syscall(ctypes.c_long(NR_LANDLOCK_CREATE_RULESET), ctypes.c_char_p(attr),
                              ctypes.c_long(len(attr)), ctypes.c_long(0)),
                "landlock_create_ruleset")
    try:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _check(_libc.syscall(ctypes.c_long(NR_LANDLOCK_RESTRICT_SELF), ctypes.c_long(fd),
                             ctypes.c_long(0)), "landlock_restrict_self")
    finally:
        os.close(fd)


def drop_capabilities() -> None:
    """All but CAP_SYS_PTRACE, which a root program keeps only because userfaultfd (issue 5's
    lazy copies, made in the program) needs it without vm.unprivileged_userfaultfd; what it
    would otherwise open up, ptrace and /proc/PID/mem of others, Landlock and the seccomp
    policy refuse anyway."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    keep = 1 << CAP_SYS_PTRACE if os.geteuid() == 0 else 0
    for cap in range(last + 1):
        if keep >> cap & 1:
            continue
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() != 22:
            _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    hdr = struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0)
    # effective, permitted, inheritable for caps 0-31, then 32-63
    data = struct.pack("=IIIIII", keep, keep, 0, 0, 0, 0)
    _check(_libc.capset(ctypes.c_char_p(hdr), ctypes.c_char_p(data)), "capset")


def apply(home: str) -> None:
    hide_home(os.path.realpath(home))
    landlock_scope()
    drop_capabilities()
