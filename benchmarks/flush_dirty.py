"""Flush of a persistent object's dirty pages, run under twzrun; prints {"median_us": ...}.

Each iteration writes one byte into each of 16 random pages of a persistent 1 GiB object
(through its mapping) and times LX_FLUSH, which writes back only the pages twzd's write tracking
saw written (WP_ASYNC + PAGEMAP_SCAN, kernel/dirty.py). The floor (scripts/bench) writes the
same pages of an ext4 file mapping and msyncs the whole 1 GiB.

usage: twzrun benchmarks/flush_dirty.py [N]
"""

import json
import random
import statistics
import sys
import time

import libtwz
from libtwz import sys as tsys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
PAGES, PAGE = 16, 4096

obj = libtwz.Object.create(persist=True, tied=False)
view = obj.view()
view[PAGE:PAGE + (64 << 20)] = bytes(64 << 20)  # 64 MiB of data to choose pages from
tsys.sys_lx_flush(int(obj.id))                   # the first flush writes all and arms tracking
rng = random.Random(1)
times = []
for i in range(n):
    for page in rng.sample(range(1, 64 << 8), PAGES):
        view[page * PAGE] = i & 0xFF
    t0 = time.perf_counter_ns()
    written = tsys.sys_lx_flush(int(obj.id))
    times.append(time.perf_counter_ns() - t0)
    assert written == PAGES, written
obj.delete()
print(json.dumps({"median_us": statistics.median(times) / 1000, "n": n}))
