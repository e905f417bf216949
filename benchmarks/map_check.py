"""Mapping an object through the kernel core's LX_OBJFD, with and without a permission check by
a security context; prints {"median_us": ...}.

One iteration: LX_OBJFD (Kernel.syscall) for a READ|WRITE mapping, mmap of the 1 GiB fd, one
read of the first data page, munmap, close. `sctx`: the process runs under a context whose
capability grants the rights (verification and lookup cached after the first map, as in twzd);
`temporary`: under the temporary context (default permissions, no check beyond p_flags). The
kernel is a private one in a temp dir: this measures the check, not the trip to twzd.

usage: [twzrun] benchmarks/map_check.py sctx|temporary [N]
"""

import mmap
import os
import sys
import tempfile
from pathlib import Path

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.abi.syscalls import BY_NAME, split_args
from twzlinux.kernel import secadmin
from twzlinux.kernel import security as sec
from twzlinux.kernel.core import Kernel

from timing import report  # benchmarks/timing.py

mode = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
home = Path(tempfile.mkdtemp(prefix="twz-mapcheck-"))
k = Kernel(home / "home", lambda proc, data: None)
pub, _ = secadmin.new_key(k, "bench.key")
obj = secadmin.new_object(k, b"data", c.MIP_DFL_READ | c.MIP_DFL_WRITE, pub)
ctx = secadmin.new_sctx(k, "bench", kuid=pub)
secadmin.sctx_add(k, "bench", s.id_str(obj), secadmin.grant(
    k, "bench.key", s.id_str(obj), "bench", sec.SCP_READ | sec.SCP_WRITE))
proc = k.new_process([k.objects.lookup(ctx)] if mode == "sctx" else [])
entry = BY_NAME["LX_OBJFD"]
regs = split_args(entry, [obj, c.FE_READ | c.FE_WRITE]) + [0] * 6


def once():
    fd = k.syscall(proc, entry.linux_nr, regs, None).fd
    m = mmap.mmap(fd, c.OBJ_MAXSIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0x1000]
    m.close()
    os.close(fd)
    k.objects.unmap_all(proc)


report(once, n)
k.close()
