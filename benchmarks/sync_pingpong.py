"""thread_sync ping-pong between two processes, from Python, under twzrun; prints {"median_us"}.

usage: twzrun benchmarks/sync_pingpong.py [N]

The partner is a libtwz.Thread in another view (so another process). Each side waits for its
turn on one object word (a libtwz.sync.Word) and hands over with a store and a wake; the
figure is the median round trip. The floor (scripts/bench) is the same exchange between two
forked processes with raw futex calls through the same cffi runtime.
"""

import json
import statistics
import sys
import time

import libtwz

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
obj = libtwz.Object.create()
word = libtwz.sync.Word(obj, 0x1000)
load, store, sleep, wake = word.load, word.store, word.sleep, word.wake


def wait_for(value):
    while True:
        v = load()
        if v == value:
            return
        sleep(v)


def partner(rounds):
    for i in range(rounds):
        wait_for(2 * i + 1)
        store(2 * i + 2)
        wake(1)
    return 0


t = libtwz.Thread(partner, (n,), view=libtwz.View.clone())
t.start()
clock, times = time.perf_counter_ns, []
for i in range(n):
    t0 = clock()
    store(2 * i + 1)
    wake(1)
    wait_for(2 * i + 2)
    times.append(clock() - t0)
if t.join() != 0:
    sys.exit("the partner thread failed")
print(json.dumps({"median_us": statistics.median(times[n // 10:]) / 1000, "n": n}))
