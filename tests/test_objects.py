"""Objects from Python programs run by twzrun: create, open, map, read/write, delete, faults."""

import json

import pytest

from twzlinux.abi import constants as c
from twzlinux.abi import slots


def run_json(twzrun, source, *args, **kw):
    proc = twzrun(source, *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_create_maps_at_a_1gib_aligned_slot_in_the_window(twzrun):
    out = run_json(twzrun, """
import json, os, libtwz
o = libtwz.Object.create()
v = o.view()
v[0x1000:0x1005] = b"hello"
# (not /proc/self/map_files: it needs CAP_SYS_ADMIN, which programs run without)
mapped = f"{o.address + 0x1000:x}-{o.address + (1 << 30):x} " in open("/proc/self/maps").read()
print(json.dumps({"id": str(o.id), "slot": o.slot, "address": o.address, "len": len(v),
                  "read": o.read(0x1000, 5).decode(), "mapped": mapped,
                  "parsed": str(libtwz.ObjID.parse(str(o.id))) == str(o.id),
                  "magic": o.meta.magic, "p_flags": o.meta.p_flags}))
""")
    assert out["address"] == out["slot"] << 30
    assert out["address"] % (1 << 30) == 0
    assert slots.SLOT_ALLOC_START <= out["slot"] <= slots.SLOT_ALLOC_MAX
    assert out["len"] == 1 << 30 and out["mapped"]
    assert out["read"] == "hello"
    assert out["parsed"]
    assert out["magic"] == c.MI_MAGIC
    assert out["p_flags"] == c.MIP_DFL_READ | c.MIP_DFL_WRITE


def test_open_read_only_is_really_read_only(twzrun):
    out = run_json(twzrun, """
import ctypes, json, time, uuid, libtwz
name = f"/tests/ro-{uuid.uuid4().hex}"
w = libtwz.Object.create(name=name)
w.write(0x1000, b"original")
r = libtwz.Object.open(name)
res = {"ro_view": r.view().readonly, "same_slot": r.slot == w.slot}
try:
    r.write(0x1000, b"changed!")
except libtwz.FaultObject as e:
    res["guarded"] = str(e)
try:
    ctypes.memmove(r.address + 0x1000, b"changed!", 8)   # a raw store, past Python's checks
    time.sleep(0)
except libtwz.FaultObject as e:
    res["raw"] = e.flags
res["after"] = w.read(0x1000, 8).decode()
print(json.dumps(res))
""")
    assert out["ro_view"] is True
    assert out["same_slot"] is False  # a read-only handle is its own (id, flags) slot
    assert "read-only" in out["guarded"]
    assert out["raw"] & c.FAULT_OBJECT_WRITE
    assert out["after"] == "original"


def test_null_page_faults(twzrun):
    out = run_json(twzrun, """
import json, time, libtwz
o = libtwz.Object.create()
res = {}
try:
    o.read(0x10, 8)
except libtwz.FaultNull as e:
    res["guarded"] = [e.addr - o.address, e.slot == o.slot, str(e)]
try:
    o.view()[0x20]
    time.sleep(0)
except libtwz.FaultNull as e:
    res["raw"] = e.addr - o.address
o.view()[0x1000] = 7   # the slot works again after the fault
res["after"] = o.view()[0x1000]
print(json.dumps(res))
""")
    off, same_slot, msg = out["guarded"]
    assert off == 0x10 and same_slot
    assert "FAULT_NULL" in msg and "slot" in msg
    assert out["raw"] == 0x20
    assert out["after"] == 7


def test_touching_a_slot_with_no_view_entry_is_fault_object(twzrun):
    out = run_json(twzrun, """
import json, time, libtwz
from libtwz import runtime
from twzlinux.abi import slots
addr = (slots.SLOT_ALLOC_MAX << 30) + 0x1000
res = {}
try:
    runtime.read(addr, 8)
except libtwz.FaultObject as e:
    res["guarded"] = [e.flags, e.slot]
try:
    runtime.buffer(addr, 8)[0]
    time.sleep(0)
except libtwz.FaultObject as e:
    res["raw"] = e.flags
print(json.dumps(res))
""")
    flags, slot = out["guarded"]
    assert flags & c.FAULT_OBJECT_NOMAP
    assert slot == slots.SLOT_ALLOC_MAX
    assert out["raw"] & c.FAULT_OBJECT_NOMAP


def test_unhandled_fault_ends_the_program_and_twzd_carries_on(twzrun):
    bad = twzrun("""
import libtwz
o = libtwz.Object.create()
o.read(0, 1)
""")
    assert bad.returncode != 0
    assert "FAULT_NULL" in bad.stderr
    ok = twzrun("import libtwz; print(libtwz.Object.create().id)")
    assert ok.returncode == 0, ok.stderr


def test_delete_is_deferred_until_unmapped(twzrun):
    out = run_json(twzrun, """
import json, libtwz
o = libtwz.Object.create(tied=False)
o.write(0x1000, b"still here")
o.delete()
res = {"after_delete": o.read(0x1000, 10).decode()}
st = libtwz.stat(o.id)     # deleted but mapped: still there
res["stat_ok"] = st.kso_type == 0
print(json.dumps(res))
""")
    assert out == {"after_delete": "still here", "stat_ok": True}


def test_open_unknown_object_is_a_clear_error(twzrun):
    proc = twzrun("""
import libtwz
try:
    libtwz.Object.open("0123456789abcdef:0123456789abcdef")
except libtwz.TwzError as e:
    print(e.errno, e)
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2 ")
    assert "no object 0123456789abcdef:0123456789abcdef" in proc.stdout


def test_view_set_and_invalidate_remap_a_changed_entry(twzrun):
    out = run_json(twzrun, """
import json, libtwz
from libtwz import runtime
from twzlinux.abi import constants as c
a = libtwz.Object.create(); a.write(0x1000, b"AAAA")
b = libtwz.Object.create(); b.write(0x1000, b"BBBB")
slot = runtime.slot_alloc(int(a.id), c.FE_READ)
buf = runtime.buffer(slot << 30, 0x2000)
first = bytes(buf[0x1000:0x1004])
assert runtime.lib.twz_rt_view_set(slot, b.id.lo, b.id.hi, c.FE_READ) == 0
second = bytes(buf[0x1000:0x1004])
print(json.dumps({"first": first.decode(), "second": second.decode()}))
""")
    assert out == {"first": "AAAA", "second": "BBBB"}


def test_allocator(twzrun):
    out = run_json(twzrun, """
import json, libtwz
o = libtwz.Object.create()
a = [o.alloc(n) for n in (1, 16, 17, 100, 2048, 5000, 16)]
o.free(a[3])
again = o.alloc(100)
res = {"offs": a, "reused": again == a[3]}
try:
    o.free(a[3]); o.free(a[3])
except ValueError as e:
    res["double"] = str(e)
try:
    o.alloc(0)
except ValueError:
    res["zero"] = True
print(json.dumps(res))
""")
    offs = out["offs"]
    assert all(off % 16 == 0 and 0x3000 <= off < c.OBJ_TOPDATA for off in offs)
    assert len(set(offs)) == len(offs)
    ends = sorted((off, off + n) for off, n in zip(offs, (1, 16, 17, 100, 2048, 5000, 16)))
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(ends, ends[1:])), "allocations overlap"
    assert out["reused"]
    assert "freed twice" in out["double"]
    assert out["zero"]


WX_PROGRAM = """
import ctypes, sys, libtwz
from libtwz import runtime
from twzlinux.abi import constants as c
code = libtwz.Object.create(perms=c.MIP_DFL_READ | c.MIP_DFL_WRITE | c.MIP_DFL_EXEC)
code.write(0x1000, bytes([0xB8, 42, 0, 0, 0, 0xC3]))      # mov eax, 42; ret
entry = c.VE_READ | c.VE_EXEC | (c.VE_WRITE if sys.argv[1] == "wx" else 0)
slot = runtime.slot_alloc(int(code.id), entry)
fn = ctypes.CFUNCTYPE(ctypes.c_int)((slot << 30) + 0x1000)
print("returned", fn(), flush=True)
"""


def test_w_xor_x(twzrun):
    rx = twzrun(WX_PROGRAM, "rx")
    assert rx.returncode == 0, rx.stderr
    assert rx.stdout.strip() == "returned 42"
    wx = twzrun(WX_PROGRAM, "wx")       # a writable entry is never executable
    assert wx.returncode == 112 + c.FAULT_OBJECT, wx.stderr
    assert "returned" not in wx.stdout
    assert "FAULT_OBJECT" in wx.stderr


def test_deleted_temporaries_do_not_pile_up(twzrun):
    # create() ties a temporary to the thread; delete() must give it up, or a long-running
    # program would keep every one until it exits (and run into its object quota).
    proc = twzrun("""
import libtwz
for i in range(5000):
    o = libtwz.Object.create()
    o.view()[0x1000] = 1
    o.delete()
    o.release()
print("done", i + 1)
""", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done", "5000"]


DERIVE_PROGRAM = """
import sys, libtwz
shared = libtwz.Object.open(sys.argv[1], write=True)
copy, off = shared.load_ptr(0x1000)
print(copy.id != libtwz.ObjID.parse(sys.argv[2]), copy.read(off, 8).decode(), flush=True)
copy.write(off, sys.argv[3].encode())
again, _ = shared.load_ptr(0x1000)
print(again is copy, copy.read(off, 8).decode())
"""


def test_fe_derive_pointers_resolve_to_a_private_copy(twzrun):
    made = twzrun("""
import uuid, libtwz
name = f"/tests/derive-{uuid.uuid4().hex}"
base = libtwz.Object.create(name=name)
original = libtwz.Object.create(tied=False)
original.write(0x1000, b"original")
base.store_ptr(0x1000, original, 0x1000, derive=True)
print(name, original.id)
""")
    assert made.returncode == 0, made.stderr
    name, original = made.stdout.split()
    first = twzrun(DERIVE_PROGRAM, name, original, "changed1")
    second = twzrun(DERIVE_PROGRAM, name, original, "changed2")
    for run, text in ((first, "changed1"), (second, "changed2")):
        assert run.returncode == 0, run.stderr
        # a copy, not the original; it starts as the original was, whatever the other wrote
        assert run.stdout.splitlines() == ["True original", f"True {text}"]
    check = twzrun(f"import libtwz; print(libtwz.Object.open('{original}').read(0x1000, 8))")
    assert check.stdout.strip() == "b'original'", check.stderr
