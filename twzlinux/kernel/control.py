"""SIGNAL: acting on another thread, which the kernel core asks of the daemon's adapter.

The core decides (arguments, permissions, which thread); `Kernel.control`
(twzlinux.daemon.control.Control) does what only the daemon can: queue a Linux signal. Without
an adapter (the core run on its own, in unit tests) the call is ENOSYS.
"""

from errno import ENOSYS

from .errors import SyscallError
from .syscalls import handles


@handles("SIGNAL")
def sys_signal(k, proc, mem, thread, a0, a1, a2, a3):
    """Queue FAULT_SIGNAL with the four longs to `thread` (OLD Twizzler's syscall_signal):
    ENOENT when no live thread runs that repr. The thread's runtime delivers the fault."""
    if k.control is None:
        raise SyscallError(ENOSYS, "no signal adapter")
    k.control.signal(thread, [a0, a1, a2, a3])
    return 0

