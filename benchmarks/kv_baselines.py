"""The KV benchmark's work, shared by examples/kv.py's run (kv_store.py, under twzrun) and the
py-lmdb and sqlite3 baselines scripts/bench runs beside it.

Same work for all three: n distinct 63-bit keys (examples/kv.keys), n inserts of 8-byte values,
then n lookups in another order. Same durability for all three: each insert is its own
transaction, whole after a kill -9 of the process once it returned (it is in the page cache),
not flushed to the disk: py-lmdb with sync=False, sqlite3 in WAL mode with synchronous=OFF,
and kv.py's ordered stores. Lookups run as each store serves reads best: lmdb in one read
transaction, sqlite3 one SELECT each. Figures are per operation: the median over batches of
1000 operations of the batch's mean.
"""

import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from kv import keys  # noqa: E402

BATCH = 1000


def per_op_us(op, items) -> float:
    clock, times = time.perf_counter_ns, []
    for i in range(0, len(items) - BATCH + 1, BATCH):
        batch = items[i:i + BATCH]
        t0 = clock()
        for item in batch:
            op(item)
        times.append((clock() - t0) / BATCH)
    return statistics.median(times) / 1000


def workload(n: int):
    """(keys in insert order, keys in lookup order)."""
    ks = keys(n)
    shuffled = ks[:]
    random.Random(2).shuffle(shuffled)
    return ks, shuffled


def lmdb_us(n: int, phase: str) -> float:
    import lmdb
    ins, look = workload(n)
    with tempfile.TemporaryDirectory(prefix="kvbench-lmdb-") as d:
        env = lmdb.open(d, map_size=max(1 << 26, 64 * n), sync=False, metasync=False)

        def put(k):
            with env.begin(write=True) as txn:
                txn.put(k.to_bytes(8, "little"), (k ^ 0x5555).to_bytes(8, "little"))

        put_us = per_op_us(put, ins)
        if phase == "insert":
            return put_us
        with env.begin() as txn:
            get = txn.get
            return per_op_us(lambda k: get(k.to_bytes(8, "little")), look)


def sqlite_us(n: int, phase: str) -> float:
    ins, look = workload(n)
    with tempfile.TemporaryDirectory(prefix="kvbench-sqlite-") as d:
        db = sqlite3.connect(Path(d) / "kv.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        put_us = per_op_us(lambda k: db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                                                (k, k ^ 0x5555)), ins)
        if phase == "insert":
            return put_us
        return per_op_us(lambda k: db.execute("SELECT v FROM kv WHERE k = ?", (k,)).fetchone(),
                         look)
