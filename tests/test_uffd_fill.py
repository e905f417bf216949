"""How a lazy copy's pages reach a reader through userfaultfd (kernel/cow.py, daemon/uffd.py).

A copy's mapping is registered for missing pages only, unless pages of it get write-protected
(it is a source, or paged out): WP registration turns off the kernel's fault-around, so every
filled page would cost its reader a fault of its own.
"""

import json

from tests.test_lazy_copy import run_json


def test_reader_of_a_lazy_copy_maps_filled_pages_many_at_a_time(twzrun):
    out = run_json(twzrun, """
import json, resource, libtwz
N, PAGE = 4096, 4096
src = libtwz.Object.create()
s = src.view()
for i in range(N):
    s[PAGE + i * PAGE] = i & 0xFF
src.release()
cp = libtwz.Object.create(src=src.id)
d = cp.view()
offs = range(PAGE, PAGE + N * PAGE, PAGE)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
got = [d[off] for off in offs]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"ok": got == [i & 0xFF for i in range(N)], "faults": faults}))
""")
    assert out["ok"]
    assert out["faults"] < 4096 // 4, out  # WP registration: a fault for every page


def test_a_copy_being_read_becomes_a_source_and_keeps_copies_exact(twzrun):
    """B owes A some pages and is mapped and partly read, so trapped for missing pages only,
    when C copies another range of B: B's mapping must then trap writes to that range too,
    pages it already maps included."""
    out = run_json(twzrun, """
import json, libtwz
from libtwz import sys as tsys
from libtwz.runtime import ffi
from twzlinux.abi import structs as st
PAGE = 4096

def ocopy(dst, src, doff, soff, n):
    ids = ffi.new("uint8_t[32]")
    ffi.memmove(ids, st.id_pack(int(dst.id)) + st.id_pack(int(src.id)), 32)
    addr = int(ffi.cast("uintptr_t", ids))
    tsys.sys_ocopy(addr, addr + 16, doff, soff, n, 0)

def word(v, page):
    return bytes(v[page * PAGE:page * PAGE + 4]).decode()

a, b, c = libtwz.Object.create(), libtwz.Object.create(), libtwz.Object.create()
a.view()[PAGE:33 * PAGE] = b"A" * (32 * PAGE)
vb = b.view()
vb[33 * PAGE:65 * PAGE] = b"b" * (32 * PAGE)   # B's own pages, mapped in this process
ocopy(b, a, PAGE, PAGE, 32 * PAGE)            # B owes A pages 1-32
read = bytes(vb[PAGE:9 * PAGE])               # pages 1-8 filled, the rest still owed
ocopy(c, b, 33 * PAGE, 33 * PAGE, 32 * PAGE)  # C owes B pages 33-64
vb[33 * PAGE:33 * PAGE + 4] = b"B1B1"
vb[50 * PAGE:50 * PAGE + 4] = b"B2B2"
a.view()[20 * PAGE:20 * PAGE + 4] = b"A2A2"
vc = c.view()
print(json.dumps({
    "read": read == b"A" * (8 * PAGE),
    "b": [word(vb, p) for p in (20, 33, 50)],
    "c": [word(vc, p) for p in (33, 50)],
    "c_all": bytes(vc[33 * PAGE:65 * PAGE]) == b"b" * (32 * PAGE)}))
""")
    assert out == {"read": True, "b": ["AAAA", "B1B1", "B2B2"], "c": ["bbbb", "bbbb"],
                   "c_all": True}, json.dumps(out)


def test_source_pages_that_were_holes_at_the_copy_stay_holes_in_it(twzrun):
    """A hole of a mapped source traps as a missing page, not as a write to a protected one;
    twzd gives it a zero page, which is writable: copies owing the page must take it first.
    twzd gives one too where it reads a syscall's argument from a hole."""
    out = run_json(twzrun, """
import json, libtwz
from libtwz import sys as tsys
PAGE = 4096
src = libtwz.Object.create()
s = src.view()
s[PAGE:PAGE + 4] = b"DATA"                 # page 1 has data, pages 5 and 6 are holes
cp = libtwz.Object.create(src=src)
s[5 * PAGE:5 * PAGE + 4] = b"LATE"         # a write is the first touch
zero = bytes(s[6 * PAGE:6 * PAGE + 4])     # a read is, and then a write
s[6 * PAGE:6 * PAGE + 4] = b"READ"
try:
    tsys.sys_ocopy(src.address + 7 * PAGE, src.address + 7 * PAGE + 16, 0x1000, 0x1000, 0x1000, 0)
except libtwz.TwzError:
    pass                                   # two null IDs, read by twzd from page 7
s[7 * PAGE:7 * PAGE + 4] = b"ARGS"
d = cp.view()
print(json.dumps({"zero": zero.hex(), "copy": [bytes(d[p * PAGE:p * PAGE + 4]).hex()
                                               for p in (1, 5, 6, 7)]}))
""")
    assert out == {"zero": "00000000",
                   "copy": [b"DATA".hex(), "00000000", "00000000", "00000000"]}


def test_source_pages_allocated_but_never_written_are_protected_too(twzrun):
    """OCO_MAP allocates pages that SEEK_DATA counts as holes, yet touching one finds a page,
    without a trap: the source's protection must cover it."""
    out = run_json(twzrun, """
import json, libtwz
from libtwz import sys as tsys
from twzlinux.abi import constants as c
PAGE, MIB = 4096, 1 << 20
src = libtwz.Object.create()
s = src.view()
s[PAGE:PAGE + 4] = b"DATA"
tsys.sys_octl(src.id, c.OCO_MAP, 16 * MIB, PAGE, 0)   # data offset 16 MiB: slot 16 MiB + 4 KiB
cp = libtwz.Object.create(src=src)
s[16 * MIB + PAGE:16 * MIB + PAGE + 4] = b"LATE"
d = cp.view()
print(json.dumps({"copy": bytes(d[16 * MIB + PAGE:16 * MIB + PAGE + 4]).hex(),
                  "src": bytes(s[16 * MIB + PAGE:16 * MIB + PAGE + 4]).decode()}))
""")
    assert out == {"copy": "00000000", "src": "LATE"}


def test_copies_of_a_source_its_creator_maps_and_writes_keep_their_moment(twzrun):
    """Only the part of the source that holds pages is write-protected (100 MiB of a 1 GiB
    object here; protecting all of it, after finding its data with SEEK_HOLE, took 1-2 ms, and
    scripts/bench has the figure): each copy keeps the source as it was when it was made."""
    out = run_json(twzrun, """
import json, libtwz
MIB = 1 << 20
src = libtwz.Object.create()
v = src.view()
for i in range(100):
    v[0x1000 + i * MIB:0x1000 + (i + 1) * MIB] = i.to_bytes(4, "little") * (MIB // 4)
copies = []
for i in range(10):
    copies.append(libtwz.Object.create(src=src.id))
    v[0x1000 + i * MIB:0x1004 + i * MIB] = b"next"      # the source moves on
ok = all(bytes(cp.view()[0x1000 + i * MIB:0x1004 + i * MIB]) ==
         (b"next" if j > i else i.to_bytes(4, "little"))
         for j, cp in enumerate(copies) for i in range(10))
print(json.dumps({"ok": ok}))
""")
    assert out["ok"]
