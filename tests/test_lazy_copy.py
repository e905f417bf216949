"""Lazy copy-on-write through userfaultfd (kernel/cow.py, daemon/uffd.py), with real programs.

A copy owes its source's pages until they are touched; the source's mappings are
write-protected until then. These tests check what a program can observe: contents, isolation of
writes in both directions and across processes, and the creation cost.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import twz_env

from twzlinux.abi import constants as c
from twzlinux.kernel.core import Kernel

MIB = 1 << 20

WRITE_100MIB = """
import libtwz
MIB = 1 << 20

def page(i):  # a MiB that says which MiB it is
    return i.to_bytes(4, "little") * (MIB // 4)

def fill(obj, n=100):
    v = obj.view()
    for i in range(n):
        v[0x1000 + i * MIB:0x1000 + (i + 1) * MIB] = page(i)
"""


def run_json(twzrun, source, *args):
    proc = twzrun(source, *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


OSTAT_PAGE = """
from libtwz import sys as tsys
from libtwz.runtime import ffi
from twzlinux.abi import constants as c, structs as st

def page_flags(obj, page):  # OSTAT OS_TYPE_PAGE: (EXIST, COW)
    buf = ffi.new("uint8_t[]", st.KERNEL_OSTAT_PAGE.size)
    tsys.sys_ostat(int(obj.id), c.OS_TYPE_PAGE, page, int(ffi.cast("uintptr_t", buf)))
    flags = st.KERNEL_OSTAT_PAGE.unpack(bytes(buf))[1]
    return [bool(flags & c.OS_PAGE_EXIST), bool(flags & c.OS_PAGE_COW)]
"""


def test_lazy_copy_of_1gib_object_copies_nothing_until_read_and_reads_back(twzrun):
    # Creation is O(1): every page of the copy is still owed (OSTAT says copy-on-write) until a
    # read settles it. How long creation takes is scripts/bench's figure ("lazy copy create").
    out = run_json(twzrun, WRITE_100MIB + OSTAT_PAGE + """
import json
src = libtwz.Object.create()
fill(src)
src.release()             # cold: nobody maps the source while it is copied
copies = [libtwz.Object.create(src=src.id) for _ in range(3)]
fresh = {p: page_flags(copies[1], p) for p in (1, 12800, 25600, 25601)}
cp = copies[0].view()
ok = [bytes(cp[0x1000 + i * MIB:0x1000 + (i + 1) * MIB]) == page(i) for i in range(100)]
beyond = bytes(cp[0x1000 + 100 * MIB:0x1000 + 101 * MIB]) == bytes(MIB)
print(json.dumps({"fresh": fresh, "read": page_flags(copies[0], 1),
                  "still": page_flags(copies[1], 1), "ok": sum(ok), "beyond": beyond,
                  "magic": copies[0].meta.magic}))
""")
    assert out["fresh"] == {"1": [True, True], "12800": [True, True], "25600": [True, True],
                            "25601": [False, True]}
    assert out["read"] == [True, False]       # settled by the read: the copy's own page now
    assert out["still"] == [True, True]       # another copy still owes it
    assert out["ok"] == 100
    assert out["beyond"]
    assert out["magic"] == c.MI_MAGIC


def test_hot_source_copy_keeps_its_point_in_time_contents(twzrun):
    """The source is mapped and written by the copier itself: its mapping is write-protected at
    the copy, so its next writes never show in the copy, and the copy's never in the source."""
    out = run_json(twzrun, WRITE_100MIB + """
import json
src = libtwz.Object.create()
fill(src, 8)
cp = libtwz.Object.create(src=src)
s, d = src.view(), cp.view()
s[0x1000:0x1004] = b"SRC!"                 # a page the copy has not touched yet
d[0x1000 + MIB:0x1000 + MIB + 4] = b"CPY!"  # a page the source keeps
first = bytes(d[0x1000:0x1004])
s[0x1000 + 2 * MIB:0x1000 + 2 * MIB + 4] = b"SRC2"  # after the copy read the page's neighbours
print(json.dumps({"copy_first": first.hex(), "src_second": bytes(s[0x1000 + MIB:0x1004 + MIB]).hex(),
                  "copy_third": bytes(d[0x1000 + 2 * MIB:0x1004 + 2 * MIB]).hex(),
                  "src_first": bytes(s[0x1000:0x1004]).hex(),
                  "all": all(bytes(d[0x1000 + i * MIB + 4:0x1000 + (i + 1) * MIB]) ==
                             page(i)[4:] for i in range(8))}))
""")
    assert out["copy_first"] == (0).to_bytes(4, "little").hex()
    assert out["src_second"] == (1).to_bytes(4, "little").hex()
    assert out["copy_third"] == (2).to_bytes(4, "little").hex()
    assert out["src_first"] == b"SRC!".hex()
    assert out["all"]


A = WRITE_100MIB + """
import json, sys
src = libtwz.Object.create()
fill(src, 4)
cp = libtwz.Object.create(src=src)
s = src.view()
print(json.dumps({"src": str(src.id), "copy": str(cp.id)}), flush=True)
sys.stdin.readline()                        # B writes both, now
d = cp.view()
print(json.dumps({"copy_page0": bytes(d[0x1000:0x1004]).hex(),
                  "src_page1": bytes(s[0x1000 + MIB:0x1004 + MIB]).hex(),
                  "copy_page2": bytes(d[0x1000 + 2 * MIB:0x1004 + 2 * MIB]).hex(),
                  "copy_page3": bytes(d[0x1000 + 3 * MIB:0x1004 + 3 * MIB]).hex()}), flush=True)
"""

B = WRITE_100MIB + """
import json, sys
src = libtwz.Object.open(sys.argv[1], write=True)
cp = libtwz.Object.open(sys.argv[2], write=True)
s, d = src.view(), cp.view()
s[0x1000:0x1004] = b"B-SR"                   # page 0: the copy must keep 0
d[0x1000 + MIB:0x1004 + MIB] = b"B-CP"       # page 1: the source must keep 1
s[0x1000 + 2 * MIB:0x1004 + 2 * MIB] = b"B-S2"
print(json.dumps({"copy_page0": bytes(d[0x1000:0x1004]).hex(),
                  "src_page1": bytes(s[0x1000 + MIB:0x1004 + MIB]).hex()}))
"""


def beside(daemon, tmp_path, first: str, second: str, *keys):
    """Run `first`, which prints a JSON object and waits for a line; meanwhile run `second` with
    that object's `keys` as arguments; then let `first` finish. (first's second JSON line,
    second's JSON output.)"""
    (tmp_path / "first.py").write_text(first)
    (tmp_path / "second.py").write_text(second)
    twzrun = [sys.executable, "-m", "twzlinux.cli.twzrun"]
    env = twz_env(daemon)
    a = subprocess.Popen(twzrun + [str(tmp_path / "first.py")], env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ids = json.loads(a.stdout.readline() or "null") or {}
        assert ids, a.stderr.read()
        b = subprocess.run(twzrun + [str(tmp_path / "second.py"), *(ids[k] for k in keys)],
                           env=env, text=True, capture_output=True, timeout=60)
        assert b.returncode == 0, b.stderr
        a.stdin.write("go\n")
        a.stdin.flush()
        res = json.loads(a.stdout.readline() or "null")
        assert a.wait(timeout=60) == 0, a.stderr.read()
    finally:
        a.kill()
        a.wait()
    return res, json.loads(b.stdout)


def test_writes_stay_on_their_side_across_processes(daemon, tmp_path):
    seen_a, seen_b = beside(daemon, tmp_path, A, B, "src", "copy")
    page = [i.to_bytes(4, "little").hex() for i in range(4)]
    assert seen_b == {"copy_page0": page[0], "src_page1": page[1]}
    assert seen_a == {"copy_page0": page[0], "src_page1": page[1], "copy_page2": page[2],
                      "copy_page3": page[3]}


def test_ocopy_range_is_lazy_and_exact(twzrun):
    out = run_json(twzrun, """
import json, libtwz
from libtwz import sys as tsys
from libtwz.runtime import ffi
from twzlinux.abi import structs as st
src, dst = libtwz.Object.create(), libtwz.Object.create()
s, d = src.view(), dst.view()
s[0x1000:0x9000] = bytes([7]) * 0x8000
d[0x1000:0x11000] = bytes([9]) * 0x10000
ids = ffi.new("uint8_t[32]")
ffi.memmove(ids, st.id_pack(int(dst.id)) + st.id_pack(int(src.id)), 32)
addr = int(ffi.cast("uintptr_t", ids))
tsys.sys_ocopy(addr, addr + 16, 0x3000, 0x1000, 0x4000, 0)   # src pages 1-4 -> dst pages 3-6
s[0x1000:0x9000] = bytes([8]) * 0x8000                       # the source moves on
print(json.dumps({"dst": [d[0x1000 + i * 0x1000] for i in range(16)]}))
""")
    assert out["dst"] == [9, 9, 7, 7, 7, 7, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]


def test_copy_of_a_copy_and_a_deleted_source(twzrun):
    out = run_json(twzrun, """
import json, libtwz
a = libtwz.Object.create(tied=False)
a.view()[0x1000:0x1003] = b"one"
b = libtwz.Object.create(src=a)
c = libtwz.Object.create(src=b)
a.view()[0x1000:0x1003] = b"two"
a.delete(); a.release()                      # b still owes a's page: it must get it first
print(json.dumps({"b": bytes(b.view()[0x1000:0x1003]).decode(),
                  "c": bytes(c.view()[0x1000:0x1003]).decode()}))
""")
    assert out == {"b": "one", "c": "one"}


def test_kernel_core_copies_lazily_and_settles_on_its_own_writes(tmp_path):
    """Sans-I/O: twzd's own reads and writes of a copy and its source keep both exact."""
    k = Kernel(tmp_path, lambda proc, data: None)
    try:
        flags = c.MIP_DFL_READ | c.MIP_DFL_WRITE
        src = k.objects.create(0, flags)
        src.backing.pwrite(0x1000, b"a" * 8192)
        cp = k.objects.create(0, flags, src)
        assert k.objects.lazy.owed_pages(cp.id) > 0          # nothing copied yet
        src.backing.pwrite(0x1000, b"b")                     # settles page 1 into the copy first
        assert cp.backing.pread(0x1000, 2) == b"aa"
        assert cp.backing.pread(0x2000, 2) == b"aa"
        cp.backing.pwrite(0x2000, b"c")
        assert src.backing.pread(0x2000, 2) == b"aa"
        assert cp.meta().magic == c.MI_MAGIC
    finally:
        k.close()


def test_syscall_arguments_in_owed_and_hole_pages_of_a_copy(twzrun):
    """twzd reads and writes a caller's memory itself; in a copy's owed page or in a hole of a
    trapped mapping that would fault into twzd's own userfaultfd and hang it, unless twzd
    settles and fills those pages first."""
    out = run_json(twzrun, """
import json, libtwz
from libtwz import sys as tsys
from twzlinux.abi import structs as st
a, b = libtwz.Object.create(), libtwz.Object.create()
a.view()[0x1000:0x1000 + 8] = b"payload!"
src = libtwz.Object.create()
src.view()[0x1000:0x1020] = st.id_pack(int(b.id)) + st.id_pack(int(a.id))
cp = libtwz.Object.create(src=src)
base = cp.address
assert cp.meta.magic  # mapped (and trapped) before twzd reads through it
tsys.sys_ocopy(base + 0x1000, base + 0x1010, 0x2000, 0x1000, 0x1000, 0)  # IDs in an owed page
tsys.sys_ostat(int(a.id), 1, 3, base + 0x5000)            # OS_TYPE_PAGE 3, into a hole
print(json.dumps({"b": bytes(b.view()[0x2000:0x2008]).decode(),
                  "stat": int.from_bytes(cp.view()[0x5000:0x5008], "little")}))
""")
    assert out == {"b": "payload!", "stat": 3}


HOLDER = WRITE_100MIB + """
import json, sys
persist = sys.argv[1] == "persist"
obj = libtwz.Object.create(persist=persist, tied=False)
fill(obj, 2)
obj.view()[0x1000:0x1003] = b"v1!"
cp = libtwz.Object.create(src=obj)
print(json.dumps({"id": str(obj.id), "copy": str(cp.id)}), flush=True)
sys.stdin.readline()                        # the test snapshots it now
obj.view()[0x1000:0x1003] = b"v2!"
snap = libtwz.Object.open(sys.stdin.readline().strip())
print(json.dumps({"snap": bytes(snap.view()[0x1000:0x1003]).decode(),
                  "rest": bytes(snap.view()[0x1000 + MIB:0x1000 + 2 * MIB]) == page(1),
                  "obj": bytes(obj.view()[0x1000:0x1003]).decode()}), flush=True)
if persist:
    obj.delete()
"""


@pytest.mark.parametrize("kind", ["volatile", "persist"])
def test_twz_stat_and_snapshot(daemon, tmp_path, kind):
    (tmp_path / "holder.py").write_text(HOLDER)
    env = twz_env(daemon)
    twz = [sys.executable, "-m", "twzlinux.cli.twz"]
    p = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(tmp_path / "holder.py"),
                          kind], env=env, text=True, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ids = json.loads(p.stdout.readline() or "null") or {}
        assert ids, p.stderr.read()
        stat = subprocess.run(twz + ["stat", ids["id"]], env=env, text=True, capture_output=True,
                              timeout=30)
        assert stat.returncode == 0, stat.stderr
        resident = int(stat.stdout.split(": ")[1].split()[0])
        assert resident >= 2 * 256                            # the 2 MiB it wrote
        owed = subprocess.run(twz + ["stat", ids["copy"]], env=env, text=True,
                              capture_output=True, timeout=30)
        assert owed.returncode == 0, owed.stderr
        assert (" 0 owed" in owed.stdout) == (kind == "persist"), owed.stdout
        snap = subprocess.run(twz + ["snapshot", ids["id"]], env=env, text=True,
                              capture_output=True, timeout=30)
        assert snap.returncode == 0, snap.stderr
        p.stdin.write("go\n" + snap.stdout.strip() + "\n")
        p.stdin.flush()
        seen = json.loads(p.stdout.readline() or "null")
        assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()
    assert seen == {"snap": "v1!", "rest": True, "obj": "v2!"}


def test_twz_stat_of_an_unknown_object_says_so(daemon):
    r = subprocess.run([sys.executable, "-m", "twzlinux.cli.twz", "stat", "1:2"],
                       env=twz_env(daemon), text=True, capture_output=True, timeout=30)
    assert r.returncode == 1 and "no object" in r.stderr


PAGED = OSTAT_PAGE + """
import json, sys, time, libtwz
MIB = 1 << 20
objs = []
for k in range(4):                   # 96 MiB of objects against a 32 MiB budget
    o = libtwz.Object.create()
    v = o.view()
    for i in range(24):
        v[0x1000 + i * MIB:0x1000 + (i + 1) * MIB] = bytes([k * 32 + i]) * MIB
    objs.append(o)
    time.sleep(0.3)                  # the pager looks every 0.1 s
print(json.dumps({"ids": [str(o.id) for o in objs]}), flush=True)
sys.stdin.readline()
# every data page exists, evicted or not: none is copy-on-write
flags = {str(f) for o in objs for f in (page_flags(o, 1), page_flags(o, 24 * 256))}
ok = all(bytes(o.view()[0x1000 + i * MIB:0x1000 + (i + 1) * MIB]) == bytes([k * 32 + i]) * MIB
         for k, o in enumerate(objs) for i in range(24))
print(json.dumps({"ok": ok, "flags": sorted(flags)}), flush=True)
"""


def test_program_whose_objects_exceed_the_memory_budget_runs(fresh_home, tmp_path):
    """twzd --memory-budget (kernel/pager.py): volatile pages beyond the budget go to a swap
    file and come back, with their contents, on fault."""
    from tests.conftest import start_daemon
    start_daemon(fresh_home, extra_env={"TWZ_MEMORY_BUDGET": "32"})
    (tmp_path / "paged.py").write_text(PAGED)
    env = twz_env(fresh_home)
    p = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(tmp_path / "paged.py")],
                         env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        ids = (json.loads(p.stdout.readline() or "null") or {}).get("ids")
        assert ids, p.stderr.read()
        stats = []
        for oid in ids:
            st = subprocess.run([sys.executable, "-m", "twzlinux.cli.twz", "stat", oid], env=env,
                                text=True, capture_output=True, timeout=30)
            assert st.returncode == 0, st.stderr
            words = st.stdout.split(": ")[1].split()
            stats.append((int(words[0]), int(words[words.index("owed") - 1])))
        p.stdin.write("go\n")
        p.stdin.flush()
        done = json.loads(p.stdout.readline() or "null")
        assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()
    assert done == {"ok": True, "flags": ["[True, False]"]}
    assert sum(r for r, _ in stats) <= (32 + 8) * 256, stats   # within the budget, give or take
    assert sum(o for _, o in stats) >= 48 * 256, stats          # the rest was paged out
    assert "pager: evicted" in (fresh_home / "twzd.log").read_text()


FLUSH_A = """
import json, sys, libtwz
from libtwz import sys as tsys
o = libtwz.Object.create(persist=True, tied=False)
v = o.view()
v[0x1000:0x1000 + (4 << 20)] = bytes(4 << 20)
res = {"first": tsys.sys_lx_flush(int(o.id))}       # untracked so far: writes all it must
for p in (3, 70, 71):
    v[p * 4096] = 1
res["three"] = tsys.sys_lx_flush(int(o.id))
res["none"] = tsys.sys_lx_flush(int(o.id))
print(json.dumps({"id": str(o.id)}), flush=True)
sys.stdin.readline()                                  # B writes two pages and flushes them
v[12 * 4096] = 1
res["after_b"] = tsys.sys_lx_flush(int(o.id))
o.delete()
print(json.dumps(res), flush=True)
"""

FLUSH_B = """
import json, sys, libtwz
from libtwz import sys as tsys
o = libtwz.Object.open(sys.argv[1], write=True)
v = o.view()
v[10 * 4096] = 2
v[11 * 4096 + 100] = 2
print(json.dumps({"b": tsys.sys_lx_flush(int(o.id))}))
"""


def test_flush_writes_only_the_pages_written_in_any_process(daemon, tmp_path):
    """WP_ASYNC + PAGEMAP_SCAN (kernel/dirty.py): after the first flush arms tracking, a flush
    counts exactly the pages written since, by this process or another mapping the object."""
    res, b = beside(daemon, tmp_path, FLUSH_A, FLUSH_B, "id")
    assert b == {"b": 2}
    assert res == {"first": c.OBJ_MAXSIZE // c.PAGE_SIZE, "three": 3, "none": 0, "after_b": 1}


RACE = r"""
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define ROUNDS 200
#define PAGES 8
#define PROBE 5 /* the page the prober reads: one a reader's first fill run also covers */
static char *volatile target;
static volatile int go, seen[3];
static int pipefd[2];

/* Touches the fresh slot: the first touch of a round maps it (or waits for another thread's
 * mapping), then faults each page in through twzd. */
static void *reader(void *arg)
{
	long me = (long)arg;
	for(int round = 1; round <= ROUNDS; round++) {
		while(go != round)
			;
		int bad = 0;
		for(int p = 0; p < PAGES; p++)
			bad += target[4096 * p] != (char)(p + 1);
		seen[me] = bad ? -round : round;
	}
	return NULL;
}

/* Reads the page through the kernel (write(2) from it into a pipe), never taking a SIGSEGV: that
 * fails with EFAULT while the slot is the reservation and succeeds the moment some mapping is
 * there, so it reads in whatever window the runtime leaves between its mmap and twzd's trap. */
static void *prober(void *arg)
{
	long me = (long)arg;
	for(int round = 1; round <= ROUNDS; round++) {
		while(go != round)
			;
		char c = 0;
		while(write(pipefd[1], target + 4096 * PROBE, 1) != 1)
			if(errno != EFAULT)
				return NULL;
		if(read(pipefd[0], &c, 1) != 1)
			return NULL;
		seen[me] = c == (char)(PROBE + 1) ? round : -round;
	}
	return NULL;
}

int main(void)
{
	objid_t src, copy;
	if(pipe(pipefd) || sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &src))
		return 2;
	long s = twz_rt_slot_alloc(ID_LO(src), ID_HI(src), VE_READ | VE_WRITE);
	char *sbase = (char *)(s << 30) + 0x1000;
	for(int p = 0; p < PAGES; p++)
		sbase[4096 * p] = (char)(p + 1);
	pthread_t t[3];
	for(long i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, i < 2 ? reader : prober, (void *)i);
	int zeros = 0;
	for(int round = 1; round <= ROUNDS; round++) {
		if(sys_ocreate(0, src, MIP_DFL_READ | MIP_DFL_WRITE, &copy))
			return 3;
		long c = twz_rt_slot_alloc(ID_LO(copy), ID_HI(copy), VE_READ);
		target = (char *)(c << 30) + 0x1000;  /* a fresh slot: the readers fault on it at once */
		seen[0] = seen[1] = seen[2] = 0;
		go = round;
		while(!seen[0] || !seen[1] || !seen[2])
			;
		zeros += (seen[0] < 0) + (seen[1] < 0) + (seen[2] < 0);
		twz_rt_slot_release(c);
		sys_odelete(copy, 0);
	}
	printf("zeros %d\n", zeros);
	return 0;
}
"""


def test_threads_first_touching_a_lazy_copy_together_never_see_unfilled_pages(
        build_native, twzrun):
    # Each round, two threads fault on a fresh lazy copy's slot at the same moment while a third
    # reads it through the kernel as soon as any mapping is there: none of them may ever see an
    # unfilled page (the runtime keeps the mapping inaccessible until twzd has trapped it).
    exe = build_native(RACE, "race", ["-pthread"])
    proc = twzrun(str(exe), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "zeros 0"


def test_a_forked_child_sees_a_lazy_copy_whole_and_cannot_write_into_it(twzrun):
    # os.fork copies the address space but not userfaultfd registrations: the child must not
    # read a copy's owed pages as holes (shmem would keep the zeros, for everybody), nor write
    # the source behind the copy's back. The child then makes its own lazy copy, which must be
    # trapped in the child too.
    out = run_json(twzrun, WRITE_100MIB + """
import json, os
src = libtwz.Object.create()
fill(src, 8)
cp = libtwz.Object.create(src=src.id)        # the parent maps the source: it is protected
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    v = cp.view()
    seen = [bytes(v[0x1000 + i * MIB:0x1000 + i * MIB + 8]) == page(i)[:8] for i in range(8)]
    src.view()[0x1000 + 2 * MIB] = 0xEE        # a write to the source, after the copy
    own = libtwz.Object.create(src=src.id)     # a copy the child makes and writes
    own.view()[0x1000 + 3 * MIB] = 0xDD
    mine = own.view()[0x1000 + 2 * MIB] == 0xEE and src.view()[0x1000 + 3 * MIB] == 3
    os.write(w, json.dumps({"seen": sum(seen), "mine": mine}).encode())
    os._exit(0)
os.close(w)
_, status = os.waitpid(pid, 0)
child = json.loads(os.read(r, 4096))
v = cp.view()
after = [bytes(v[0x1000 + i * MIB:0x1000 + i * MIB + 8]) == page(i)[:8] for i in range(8)]
print(json.dumps({"status": status, "child": child, "after": sum(after),
                  "src_written": src.view()[0x1000 + 2 * MIB] == 0xEE}))
""")
    assert out["status"] == 0
    assert out["child"] == {"seen": 8, "mine": True}
    assert out["after"] == 8, "the child's write to the source reached the copy"
    assert out["src_written"]


def test_a_program_started_by_a_program_reads_a_lazy_copy_whole(twzrun, tmp_path):
    # subprocess (vfork + exec) of another Twizzler program: the child is a new mm in the
    # program's family, which twzd must trap on its own, not take for its parent's.
    child = tmp_path / "child.py"
    child.write_text(WRITE_100MIB + """
import json, sys
cp = libtwz.Object.open(sys.argv[1])
v = cp.view()
print(json.dumps({"seen": sum(bytes(v[0x1000 + i * MIB:0x1000 + i * MIB + 8]) == page(i)[:8]
                              for i in range(8))}))
""")
    out = run_json(twzrun, WRITE_100MIB + f"""
import json, subprocess, sys
src = libtwz.Object.create()
fill(src, 8)
cp = libtwz.Object.create(src=src.id)
first = json.loads(subprocess.run([sys.executable, {str(child)!r}, str(cp.id)],
                                  capture_output=True, text=True).stdout)
src.view()[0x1000 + 3 * MIB] = 0xEE                 # the source moves on; the copy must not
second = json.loads(subprocess.run([sys.executable, {str(child)!r}, str(cp.id)],
                                   capture_output=True, text=True).stdout)
print(json.dumps({{"first": first, "second": second}}))
""")
    assert out == {"first": {"seen": 8}, "second": {"seen": 8}}


def test_a_second_lx_uffd_without_exec_leaves_every_copy_exact(twzrun):
    # LX_UFFD says "my mm is new": twzd forgets the caller's mappings and traps. A program that
    # says so without exec'ing keeps its mappings, untrapped, so twzd settles what they involve
    # first: the source it goes on writing can no longer reach the copy.
    out = run_json(twzrun, WRITE_100MIB + """
import ctypes, json, os
from libtwz import sys as tsys
src = libtwz.Object.create()
fill(src, 4)
cp = libtwz.Object.create(src=src.id)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)       # userfaultfd
tsys.sys_lx_uffd(fd, -1)
os.close(fd)
src.view()[0x1000 + 2 * MIB:0x1004 + 2 * MIB] = b"LATE"
print(json.dumps({"copy": bytes(cp.view()[0x1000 + 2 * MIB:0x1004 + 2 * MIB]).hex(),
                  "src": bytes(src.view()[0x1000 + 2 * MIB:0x1004 + 2 * MIB]).decode()}))
""")
    assert out == {"copy": (2).to_bytes(4, "little").hex(), "src": "LATE"}


FORK_C = r"""
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGES 8
static char *page(long slot, int p) { return (char *)(slot << 30) + 0x1000 + 4096 * p; }

int main(void)
{
	objid_t src, copy;
	if(sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &src))
		return 2;
	long s = twz_rt_slot_alloc(ID_LO(src), ID_HI(src), VE_READ | VE_WRITE);
	for(int p = 0; p < PAGES; p++)
		*page(s, p) = (char)(p + 1);
	if(sys_ocreate(0, src, MIP_DFL_READ | MIP_DFL_WRITE, &copy))
		return 3;
	long c = twz_rt_slot_alloc(ID_LO(copy), ID_HI(copy), VE_READ);
	int pid = fork();
	if(pid == 0) {  /* the child reads the copy, then writes the source */
		int seen = 0;
		for(int p = 0; p < PAGES; p++)
			seen += *page(c, p) == (char)(p + 1);
		*page(s, 3) = 'X';
		_exit(seen);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("%d %d %c\n", WEXITSTATUS(status), *page(c, 3), *page(s, 3));
	return 0;
}
"""


def test_a_native_fork_child_sees_a_lazy_copy_whole(build_native, twzrun):
    exe = build_native(FORK_C, "fork")
    proc = twzrun(str(exe), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["8", "4", "X"]
