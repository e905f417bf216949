"""The null Twizzler syscall from Python, run under twzrun; prints {"median_us": ...}.

usage: twzrun benchmarks/null_syscall.py {libtwz|cffi} [N]
  libtwz  libtwz.sys.sys_null(0): the generated stub (raises libtwz.TwzError on failure)
  cffi    twzlinux._twzrt.lib.twz_syscall6(0x1000, 0, ...): the raw runtime call
"""

import json
import statistics
import sys
import time

variant = sys.argv[1] if len(sys.argv) > 1 else "libtwz"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000

if variant == "libtwz":
    import libtwz.sys

    call, args = libtwz.sys.sys_null, (0,)
elif variant == "cffi":
    from twzlinux._twzrt import lib

    call, args = lib.twz_syscall6, (0x1000, 0, 0, 0, 0, 0, 0)
else:
    sys.exit(f"unknown variant {variant!r}: use libtwz or cffi")

clock = time.perf_counter_ns
for _ in range(min(n, 1000)):  # warm-up; also proves the call succeeds
    r = call(*args)
    if r != 0:
        sys.exit(f"null syscall returned {r}, expected 0")
times = []
for _ in range(n):
    t0 = clock()
    call(*args)
    times.append(clock() - t0)
print(json.dumps({"median_us": statistics.median(times) / 1000, "n": n}))
