"""Two programs run by twzrun at the same time share objects, and pointers resolve across them."""

import json
import os
import subprocess
import sys
import uuid

A = """
import json, os, sys, libtwz
name = sys.argv[1]
shared = libtwz.Object.create(name=name)
target = libtwz.Object.create()
target.write(0x1000, b"target data from A")
shared.write(0x1000, (41).to_bytes(8, "little"))
ptr = shared.store_ptr(0x1008, target, 0x1000)
# the mapping's device and inode from /proc/self/maps (map_files needs CAP_SYS_ADMIN, which
# programs run without)
ino, dev = next(ln.split()[4:2:-1] for ln in open("/proc/self/maps")
                if ln.startswith(f"{shared.address + 0x1000:x}-"))
print(json.dumps({"slot": shared.slot, "target_slot": target.slot, "ptr": ptr,
                  "ino": ino, "dev": dev}), flush=True)
sys.stdin.readline()                      # B runs now
print(json.dumps({"seen": int.from_bytes(shared.view()[0x1010:0x1018], "little")}), flush=True)
"""

B = """
import json, os, sys, libtwz
for _ in range(3):                        # take some slots so the objects land elsewhere
    libtwz.Object.create()
shared = libtwz.Object.open(sys.argv[1], write=True)
value = int.from_bytes(shared.view()[0x1000:0x1008], "little")
target, off = shared.load_ptr(0x1008)
# the mapping's device and inode from /proc/self/maps (map_files needs CAP_SYS_ADMIN, which
# programs run without)
ino, dev = next(ln.split()[4:2:-1] for ln in open("/proc/self/maps")
                if ln.startswith(f"{shared.address + 0x1000:x}-"))
shared.view()[0x1010:0x1018] = (value + 1).to_bytes(8, "little")
print(json.dumps({"slot": shared.slot, "target_slot": target.slot, "value": value,
                  "data": target.read(off, 18).decode(), "ino": ino, "dev": dev,
                  "aligned": shared.address % (1 << 30) == 0 and target.address % (1 << 30) == 0}))
"""


def test_two_programs_share_an_object_and_its_pointers(daemon, tmp_path):
    env = dict(os.environ, TWZ_HOME=str(daemon))
    (tmp_path / "a.py").write_text(A)
    (tmp_path / "b.py").write_text(B)
    name = f"/tests/shared-{uuid.uuid4().hex}"
    twzrun = [sys.executable, "-m", "twzlinux.cli.twzrun"]
    a = subprocess.Popen(twzrun + [str(tmp_path / "a.py"), name], env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = json.loads(a.stdout.readline())
        b = subprocess.run(twzrun + [str(tmp_path / "b.py"), name], env=env, text=True,
                           capture_output=True, timeout=60)
        assert b.returncode == 0, b.stderr
        seen_by_b = json.loads(b.stdout)
        a.stdin.write("go\n")
        a.stdin.flush()
        second = json.loads(a.stdout.readline())
        assert a.wait(timeout=60) == 0, a.stderr.read()
    finally:
        a.kill()
        a.wait()
    assert seen_by_b["value"] == 41                       # A's store, B's load
    assert second["seen"] == 42                           # B's store, A's load
    assert (first["ino"], first["dev"]) == (seen_by_b["ino"], seen_by_b["dev"])  # same file
    assert seen_by_b["aligned"]
    assert seen_by_b["data"] == "target data from A"      # the pointer resolved in B ...
    assert seen_by_b["target_slot"] != first["target_slot"]  # ... to a different slot
    assert first["ptr"] >> 30 == 1 and first["ptr"] & ((1 << 30) - 1) == 0x1000  # FOT entry 1
