"""Persistent-pointer resolution with a warm FOT cache, run under twzrun; prints {"median_us": ...}.

o.store_ptr(0x1000, t, 0x2000) once (a cross-object pointer, through o's FOT), then time
o.load_ptr(0x1000), which returns (t, 0x2000). Timed in batches of BATCH calls (one call is
too short for the clock); the figure is the median batch time divided by BATCH.

usage: twzrun benchmarks/ptr_resolve.py [N]
"""

import json
import statistics
import sys
import time

import libtwz

BATCH = 100
n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000

o, t = libtwz.Object.create(), libtwz.Object.create()
o.store_ptr(0x1000, t, 0x2000)
target, off = o.load_ptr(0x1000)
if target.id != t.id or off != 0x2000:
    sys.exit(f"load_ptr gave ({target!r}, {off:#x}), expected ({t!r}, 0x2000)")

load = o.load_ptr
clock = time.perf_counter_ns
times = []
for _ in range(max(n // BATCH, 1)):
    t0 = clock()
    for _ in range(BATCH):
        load(0x1000)
    times.append((clock() - t0) / BATCH)
print(json.dumps({"median_us": statistics.median(times) / 1000, "n": n}))
