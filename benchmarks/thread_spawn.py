"""Thread spawn latency: libtwz.Thread start + join, under twzrun; prints {"median_us"}.

usage: twzrun benchmarks/thread_spawn.py here|view [N]
  here  a thread in the caller's view (a Python thread of this process)
  view  a thread in another view (a forked host process registered with twzd)
Floors (scripts/bench): threading.Thread start + join; os.fork + _exit + waitpid.
"""

import json
import statistics
import sys
import time

import libtwz

where = sys.argv[1] if len(sys.argv) > 1 else "here"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
if where not in ("here", "view"):
    sys.exit(f"unknown variant {where!r}: use here or view")
view = libtwz.View.clone() if where == "view" else None


def nothing():
    return 0


clock, times = time.perf_counter_ns, []
for _ in range(n):
    t0 = clock()
    t = libtwz.Thread(nothing, view=view)
    t.start()
    if t.join() != 0:
        sys.exit("the thread failed")
    times.append(clock() - t0)
    t.repr.release()
print(json.dumps({"median_us": statistics.median(times) / 1000, "n": n}))
