"""The measurement the per-call benchmark programs share: warm up, time each call, and print the
median as the JSON line scripts/bench reads."""

import json
import statistics
import time


def report(once, n: int, warmup: int = 50) -> None:
    for _ in range(min(n, warmup)):
        once()
    clock = time.perf_counter_ns
    times = []
    for _ in range(n):
        t0 = clock()
        once()
        times.append(clock() - t0)
    print(json.dumps({"median_us": statistics.median(times) / 1000, "n": n}))
