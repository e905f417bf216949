"""The kernel core's hands on Linux threads (Kernel.control): queueing FAULT_SIGNAL.

A Twizzler thread is named by its repr object; the daemon knows which Linux thread runs it. A
FAULT_SIGNAL travels as TWZ_SIGNAL_SIGNUM sent with rt_tgsigqueueinfo and si_code SI_QUEUE,
which carries the siginfo's 32 bytes of fields unchanged: the four longs, where the runtime's
handler (twz/fault.h) reads them.
"""

import ctypes
import errno
import logging
import struct

from twzlinux.abi import constants as c
from twzlinux.abi.structs import id_str
from twzlinux.kernel.errors import SyscallError

log = logging.getLogger("twzd.control")

NR_RT_TGSIGQUEUEINFO = 297
SI_QUEUE = -1
SIGINFO = struct.Struct("<iii4x4q80x")  # signo, errno, code, then the union: args[4]
assert SIGINFO.size == 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Control:
    def __init__(self, daemon):
        self.daemon = daemon

    def linux_thread(self, thread_id: int) -> tuple[int, int]:
        """(tgid, tid) of the Linux thread running Twizzler thread `thread_id`.

        A program's first thread is its process's main thread (TWZ_THREAD); threads spawned
        later are found through the kernel's thread records when they name their Linux thread.
        """
        for prog in self.daemon.programs.values():
            if prog.running and prog.proc.thread_id == thread_id:
                return prog.pid, prog.pid
        raise SyscallError(errno.ENOENT, f"no live thread {id_str(thread_id)}")

    def signal(self, thread_id: int, args: list[int]) -> None:
        tgid, tid = self.linux_thread(thread_id)
        info = SIGINFO.pack(c.TWZ_SIGNAL_SIGNUM, 0, SI_QUEUE, *args)
        buf = ctypes.create_string_buffer(info, len(info))
        r = _libc.syscall(ctypes.c_long(NR_RT_TGSIGQUEUEINFO), ctypes.c_long(tgid),
                          ctypes.c_long(tid), ctypes.c_long(c.TWZ_SIGNAL_SIGNUM), buf)
        if r < 0:
            e = ctypes.get_errno()
            if e == errno.ESRCH:  # it exited between the lookup and the signal
                raise SyscallError(errno.ENOENT, f"thread {id_str(thread_id)} exited")
            log.warning("rt_tgsigqueueinfo(%d, %d) failed: %s", tgid, tid, errno.errorcode.get(e))
            raise SyscallError(errno.EAGAIN if e == errno.EAGAIN else errno.EINVAL,
                               "the signal could not be queued")
