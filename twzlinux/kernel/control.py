"""SIGNAL and BECOME: acting on Linux threads, which the kernel core asks of the daemon.

The core decides (arguments, permissions, which thread, the process's view); `Kernel.control`
(twzlinux.daemon.control.Control) does what only the daemon can: queue a Linux signal, replace
registers through ptrace. Without an adapter (the core run on its own, in unit tests) both
calls are ENOSYS.
"""

import struct
from errno import EINVAL, ENOENT, ENOSYS

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s

from .errors import SyscallError
from .syscalls import handles

# struct sys_become_args (160 bytes): target_view, target_rip, then these registers
BECOME_REGS = ("rax", "rbx", "rcx", "rdx", "rdi", "rsi", "rsp", "rbp", "r8", "r9", "r10", "r11",
               "r12", "r13", "r14", "r15")
SYS_BECOME_ARGS = struct.Struct("<16sQ16Q8x")  # padded to objid_t alignment
assert SYS_BECOME_ARGS.size == 160


@handles("SIGNAL")
def sys_signal(k, proc, mem, thread, a0, a1, a2, a3):
    """Queue FAULT_SIGNAL with the four longs to `thread` (OLD Twizzler's syscall_signal):
    ENOENT when no live thread runs that repr. The thread's runtime delivers the fault."""
    if k.control is None:
        raise SyscallError(ENOSYS, "no signal adapter")
    k.control.signal(thread, [a0, a1, a2, a3])
    return 0



@handles("BECOME")
def sys_become(k, proc, mem, args, arg0, arg1):
    """Replace the calling thread's registers (target_rip and every general register) and, if
    target_view is not 0, make that view the process's. On success the thread never sees the
    call return: it runs at target_rip. The address space follows the view in the runtime,
    which maps the new view before calling (twz_rt_become, docs/personality.md). arg0/arg1 are
    OLD Twizzler's return-path BECOME, not supported: EINVAL unless both are 0 (args NULL)."""
    if k.control is None:
        raise SyscallError(ENOSYS, "no ptrace adapter")
    if args == 0 or arg0 or arg1:
        raise SyscallError(EINVAL, "BECOME needs its args (the returning form is not supported)")
    raw = SYS_BECOME_ARGS.unpack(mem.read(args, SYS_BECOME_ARGS.size))
    view, rip, regs = s.id_unpack(raw[0]), raw[1], dict(zip(BECOME_REGS, raw[2:]))
    if view:
        obj = k.objects.lookup(view)
        if obj is None:
            raise SyscallError(ENOENT, f"no view {s.id_str(view)}")
        if obj.kso_type != c.KSO_VIEW:
            raise SyscallError(EINVAL, f"{s.id_str(view)} is not a view")
    k.control.become(mem, rip, regs)
    if view:
        proc.view_id = view
    return 0
