"""Lazy copy creation, run under twzrun; prints {"median_us": ...}.

A 1 GiB object gets 100 MiB of data and is released (nobody maps it while it is copied); each
iteration times one OCREATE with it as the source (libtwz.Object.create(src=...)), then deletes
the copy. The floor (scripts/bench) is the eager copy twzd made before: a fresh memfd and
copy_file_range of the 100 MiB.

usage: twzrun benchmarks/lazy_copy.py [N]
"""

import json
import statistics
import sys
import time

import libtwz

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
MIB = 1 << 20

src = libtwz.Object.create()
view = src.view()
chunk = bytes(range(256)) * (MIB // 256)
for i in range(100):
    view[0x1000 + i * MIB:0x1000 + (i + 1) * MIB] = chunk
src.release()
times = []
for _ in range(n):
    t0 = time.perf_counter_ns()
    cp = libtwz.Object.create(src=src.id, tied=False)
    times.append(time.perf_counter_ns() - t0)
    cp.delete()
print(json.dumps({"median_us": statistics.median(times) / 1000, "n": n}))
