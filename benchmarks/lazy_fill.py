"""Page fill rate of a lazy copy through userfaultfd, run under twzrun; prints {"median_us": ...}.

A source object gets N pages of data and is released (nobody maps it); each round makes a lazy
copy (OCREATE with the source), reads one byte of each of its N pages in order, and deletes it.
Every first touch of an owed page traps to twzd, which fills a run of pages from the source and
wakes the reader. The figure is the median over the rounds of the time per page.

usage: twzrun benchmarks/lazy_fill.py [N]
"""

import json
import resource
import statistics
import sys
import time

import libtwz

n = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
ROUNDS = 7
PAGE = 4096

src = libtwz.Object.create()
view = src.view()
for i in range(n):
    view[PAGE + i * PAGE] = i & 0xFF
src.release()
per_page, faults = [], []
for _ in range(ROUNDS):
    cp = libtwz.Object.create(src=src.id)
    v = cp.view()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter_ns()
    for off in range(PAGE, PAGE + n * PAGE, PAGE):
        v[off]
    per_page.append((time.perf_counter_ns() - t0) / n)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    cp.delete()
    cp.release()
# faults: the reader's minor faults per round (n/16 or so with the kernel's fault-around)
print(json.dumps({"median_us": statistics.median(per_page) / 1000, "n": n,
                  "faults": statistics.median(faults)}))
