"""examples/kv.py (Twizzler's kvdr) under twzrun: n inserts, then n lookups; prints
{"median_us": ...} for the phase asked (see kv_baselines.py for the work and the figure).

usage: twzrun benchmarks/kv_store.py insert|lookup [N]
"""

import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_baselines import per_op_us, workload  # noqa: E402
from kv import KV  # noqa: E402  (examples/, put on the path by kv_baselines)

phase = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
ins, look = workload(n)
store = KV.create(f"/bench/kv-{uuid.uuid4().hex}", n)
put_us = per_op_us(lambda k: store.put(k, k ^ 0x5555), ins)
us = put_us if phase == "insert" else per_op_us(store.get, look)
assert store.get(look[0]) == look[0] ^ 0x5555
print(json.dumps({"median_us": us, "n": n}))
