"""examples/kv.py, Twizzler's kvdr: correct, persistent, and whole after kill -9 of its writer."""

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import twz_env

KV = Path(__file__).resolve().parent.parent / "examples" / "kv.py"


def test_put_get_fill_check(twzrun):
    name = f"/kv/{uuid.uuid4().hex}"
    fill = twzrun(KV, name, "fill", 20000, 7)
    assert fill.returncode == 0, fill.stderr
    check = twzrun(KV, name, "check", 20000, 7)
    assert check.returncode == 0 and check.stdout.strip() == "20000 of 20000 present, 20000 " \
                                                               "records", check.stdout
    assert twzrun(KV, name, "put", 5, 50).returncode == 0
    assert twzrun(KV, name, "put", 5, 51).returncode == 0      # an update, in place
    got = twzrun(KV, name, "get", 5)
    assert got.stdout.strip() == "51"
    assert twzrun(KV, name, "get", 6).stdout.strip() == "absent"
    assert twzrun(KV, name, "check", 20000, 7).stdout.split(",")[1].strip() == "20001 records"


def test_every_acknowledged_put_survives_kill_9(daemon, twzrun, tmp_path):
    rng = random.Random()
    name = f"/kv/{uuid.uuid4().hex}"
    prog = tmp_path / "writer.py"
    prog.write_text(f"""
import os, sys
sys.path.insert(0, {str(KV.parent)!r})
print(os.getpid(), flush=True)
import kv
sys.exit(kv.main(sys.argv[1:]))
""")
    acked = set()
    for seed in range(1, 11):
        w = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog), name,
                              "fill", "100000", str(seed), "--ack"], env=twz_env(daemon),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pid = int(w.stdout.readline())
        time.sleep(rng.uniform(0.05, 0.3))
        os.kill(pid, signal.SIGKILL)
        out, _ = w.communicate(timeout=20)
        acked.update(int(k) for k in out.split("\n")[:-1])
    assert len(acked) > 1000, "the writers hardly ran"
    keys = tmp_path / "keys"
    keys.write_text("\n".join(map(str, acked)))
    check = twzrun(f"""
import sys
sys.path.insert(0, {str(KV.parent)!r})
import kv
store = kv.KV.open({name!r})
missing = [k for k in map(int, open({str(keys)!r}).read().split()) if store.get(k) != k ^ 0x5555]
print(len(missing), len(store))
""")
    assert check.returncode == 0, check.stderr
    missing, records = map(int, check.stdout.split())
    assert missing == 0
    assert records >= len(acked)


def test_a_full_table_wraps_refuses_and_still_answers(twzrun):
    # Two buckets (16 ways): keys spill from the last bucket into the first; the 17th key finds
    # no way; lookups of absent keys in the full table answer None rather than loop.
    r = twzrun(f"""
import sys, uuid
sys.path.insert(0, {str(KV.parent)!r})
import kv, libtwz
store = kv.KV.create("/kv/" + uuid.uuid4().hex, 2)
assert store.nbuckets == 2
pool = kv.keys(200, 3)
odd, even = [k for k in pool if k % 2], [k for k in pool if not k % 2]
ks = odd[:10] + even[:8]          # ten keys for bucket 1's eight ways: two wrap to bucket 0
for k in ks[:16]:
    store.put(k, k + 1)
wrapped = sum(k % 2 for k in ks[:16])
try:
    store.put(ks[16], 1)
    full = "accepted"
except libtwz.TwzError as e:
    full = str(e)
print(all(store.get(k) == k + 1 for k in ks[:16]), wrapped > 8, store.get(ks[17]), full)
""")
    assert r.returncode == 0, r.stderr
    ok, wrapped, absent, full = r.stdout.split(" ", 3)
    assert (ok, absent) == ("True", "None")
    assert "is full (2 buckets of 8 ways)" in full
    assert wrapped == "True"


def test_bad_input_and_a_corrupt_index_get_clear_errors(twzrun):
    name = f"/kv/{uuid.uuid4().hex}"
    assert twzrun(KV, name, "fill", 100).returncode == 0
    fresh = f"/kv/{uuid.uuid4().hex}"
    r = twzrun(KV, fresh, "put", 1, 2)
    assert r.returncode == 1 and f"make the store first: {fresh} new CAPACITY" in r.stderr
    assert twzrun(KV, fresh, "new", 10).returncode == 0
    assert twzrun(KV, fresh, "put", 1, 2).returncode == 0
    assert twzrun(KV, fresh, "get", 1).stdout.strip() == "2"
    for args, code, says in [(("put", -1, 5), 1, "64-bit unsigned"),
                             (("put", 5), 2, "put takes 2 numbers"),
                             (("get", "x"), 2, "invalid literal"),
                             (("frob",), 2, "unknown command 'frob'")]:
        r = twzrun(KV, name, *args)
        assert r.returncode == code and says in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    # A way that points into another object (FOT entry 7): the walk names it, it does not read
    # some other record.
    r = twzrun(f"""
import sys
sys.path.insert(0, {str(KV.parent)!r})
import kv, libtwz
store = kv.KV.open({name!r})
k = kv.keys(100)[0]
w, _ = store._find(k)
libtwz.runtime.store64(store._ibase + 8 * w, 7 << 30 | 0x2000)
try:
    store.get(k)
except libtwz.TwzError as e:
    print(e)
""")
    assert r.returncode == 0, r.stderr
    assert "points outside the data object" in r.stdout
