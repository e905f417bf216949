"""A hostile program against the personality: every route around the checks must fail, with a
clear error, change nothing, and leave twzd and other programs working.

Calling a gate at a non-gate offset is in test_gates.py, with the gates.

The world: alice's key signs for object X (no default permissions). Context "reader" holds a
READ capability on X; the others hold capabilities spoiled in one way each.
"""

import base64
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import _as_program, start_daemon, twz_env
from twzlinux.abi import constants as c
from twzlinux.daemon import client
from twzlinux.kernel import security as sec

SECRET = b"secret-of-X"


def sec_request(home, **msg):
    conn = client.connect(home)
    try:
        return conn.request({"op": "sec", **msg})
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(daemon):
    tag = uuid.uuid4().hex[:8]
    n = {k: f"{k}-{tag}" for k in ("key", "mallory", "reader", "other", "forged", "expired",
                                   "revoked", "writer", "delegatee", "nocd")}
    sec_request(daemon, cmd="key_new", name=n["key"])
    sec_request(daemon, cmd="key_new", name=n["mallory"])
    key_pub = sec_request(daemon, cmd="object_new", pflags=0, key=n["key"])  # (unused object)
    assert key_pub["id"]
    x = sec_request(daemon, cmd="object_new", key=n["key"], pflags=0,
                    data=base64.b64encode(SECRET).decode())["id"]
    for ctx in ("reader", "other", "forged", "expired", "revoked", "writer", "delegatee",
                "nocd"):
        sec_request(daemon, cmd="sctx_new", name=n[ctx], key=n["key"])

    def grant(accessor, perms, **kw):
        return sec_request(daemon, cmd="cap_grant", key=n["key"], target=x,
                           accessor=n[accessor], perms=perms, **kw)["item"]

    def add(ctx, item, **kw):
        sec_request(daemon, cmd="sctx_add", sctx=n[ctx], target=x, item=item, **kw)

    R, W, CD = sec.SCP_READ, sec.SCP_WRITE, sec.SCP_CD
    add("reader", grant("reader", R))
    add("other", grant("reader", R | W))                       # someone else's capability
    bad = bytearray(base64.b64decode(grant("forged", R | W)))
    bad[56] |= sec.SCP_DEL                                      # perms altered after signing
    add("forged", base64.b64encode(bytes(bad)).decode())
    add("expired", grant("expired", R, valid=time.time_ns() - 1))
    add("revoked", grant("revoked", R), revoked=True)
    writer_cap = grant("writer", R | W | CD)
    add("writer", writer_cap)
    add("delegatee", sec_request(daemon, cmd="cap_delegate", key=n["key"], item=writer_cap,
                                 to=n["delegatee"], mask=R)["item"])
    plain = grant("writer", R | W)
    add("nocd", sec_request(daemon, cmd="cap_delegate", key=n["key"], item=plain,
                            to=n["nocd"], mask=R | W)["item"])
    return dict(n, home=daemon, x=x)


@pytest.fixture
def run(world, tmp_path):
    progdir = tmp_path / "programs"
    progdir.mkdir()

    def run(program, *args, sctx=(), timeout=60):
        opts = [a for s in sctx for a in ("--sctx", world.get(s, s))]
        return subprocess.run(
            [sys.executable, "-m", "twzlinux.cli.twzrun", *opts, _as_program(program, progdir),
             *map(str, args)], timeout=timeout, env=twz_env(world["home"]), capture_output=True,
            text=True)
    return run


READ_X = """
import sys, libtwz
o = libtwz.Object.open(sys.argv[1])
try:
    print("READ", o.read(0x1000, 11).decode())
except libtwz.TwzFault as e:
    print("FAULT", e)
"""


READ_THEN_WRITE_X = """
import sys, libtwz
from libtwz import runtime
from twzlinux.abi import constants as c
x = libtwz.ObjID.parse(sys.argv[1])
print("READ", libtwz.Object.open(x).read(0x1000, 11).decode())
try:
    libtwz.Object.open(x, write=True)
    print("OPENED for writing")
except libtwz.TwzError as e:
    print("OPEN", e)
# Past libtwz's check: a writable view entry of our own, written through the mapping
w = libtwz.Object(int(x), runtime.slot_alloc(int(x), c.VE_READ | c.VE_WRITE),
                  c.FE_READ | c.FE_WRITE)
try:
    w.write(0x1000, b"EVIL")
    print("WROTE")
except libtwz.FaultSctx as e:
    print("FAULT", e)
"""


def assert_x_intact(world, run):
    r = run(READ_X, world["x"], sctx=["reader"])
    assert r.stdout.strip() == "READ " + SECRET.decode(), r.stderr


def test_read_only_context_reads_x_and_a_write_faults_naming_x_and_write(world, run):
    r = run(READ_THEN_WRITE_X, world["x"], sctx=["reader"])
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == "READ " + SECRET.decode(), r.stdout + r.stderr
    assert lines[1].startswith("OPEN ") and "EACCES" in lines[1]
    assert lines[2].startswith("FAULT FAULT_SCTX"), r.stdout + r.stderr
    for line in lines[1:]:
        assert "does not grant WRITE" in line and world["x"] in line
    assert_x_intact(world, run)


def test_without_a_context_x_is_not_even_readable(world, run):
    r = run(READ_X, world["x"])
    assert r.stdout.startswith("FAULT FAULT_SCTX") and "READ" in r.stdout, r.stdout + r.stderr


WRITE_ROUTES = """
import ctypes, errno, fcntl, mmap, os, sys, libtwz
from libtwz import sys as tsys
from twzlinux.abi import constants as c
from twzlinux.abi import structs as st
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long)
x = libtwz.ObjID.parse(sys.argv[1])
home = sys.argv[2]

def attempt(name, fn):
    try:
        r = fn()
        print(name, "SUCCEEDED", r)
    except OSError as e:
        print(name, "refused", errno.errorcode[e.errno])
    except libtwz.TwzError as e:
        print(name, "refused", str(e).replace("\\n", " "))

o = libtwz.Object.open(x)
o.read(0x1000, 1)                         # mapped, read-only
PW = mmap.PROT_READ | mmap.PROT_WRITE

def mprotect():
    if libc.mprotect(ctypes.c_void_p(o.address + 0x1000), 4096, PW):
        raise OSError(ctypes.get_errno(), "mprotect")
attempt("mprotect", mprotect)
fd = tsys.sys_lx_objfd(int(x), c.FE_READ | c.FE_WRITE)   # ask twzd for a writable fd
print("fd mode", "RDONLY" if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY else "RW")

def remap():
    p = libc.mmap(None, 4096, PW, mmap.MAP_SHARED, fd, 0x1000)
    if p in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
attempt("re-mmap", remap)
attempt("write(fd)", lambda: os.pwrite(fd, b"EVIL", 0x1000))
dup = os.dup(fd)
attempt("/proc/self/fd reopen rw", lambda: os.open(f"/proc/self/fd/{dup}", os.O_RDWR))
attempt("/proc/self/fd reopen ro", lambda: os.open(f"/proc/self/fd/{dup}", os.O_RDONLY))
attempt("/proc/self/map_files", lambda: os.open(
    f"/proc/self/map_files/{o.address + 0x1000:x}-{o.address + (1 << 30):x}", os.O_RDWR))
attempt("fchmod", lambda: os.fchmod(fd, 0o666))
attempt("fchown", lambda: os.fchown(fd, os.getuid(), os.getgid()))
attempt("store by path", lambda: os.open(os.path.join(home, "objects"), os.O_RDONLY))
attempt("twzd socket", lambda: __import__("socket").socket(__import__("socket").AF_UNIX,
        __import__("socket").SOCK_SEQPACKET).connect(os.path.join(home, "twzd.sock")))
buf = ctypes.create_string_buffer(st.id_pack(int(x)) + st.id_pack(0))
attempt("OCOPY", lambda: tsys.sys_ocopy(ctypes.addressof(buf), ctypes.addressof(buf) + 16,
                                         0x1000, 0, 0x1000, 0))
attempt("OCTL", lambda: tsys.sys_octl(int(x), c.OCO_MAP, 0, 4096, 0))
attempt("ODELETE", lambda: tsys.sys_odelete(int(x), 0))
attempt("EXEC map", lambda: tsys.sys_lx_objfd(int(x), c.FE_READ | c.FE_EXEC))
"""


def test_every_write_route_is_refused_and_x_is_unchanged(world, run):
    r = run(WRITE_ROUTES, world["x"], world["home"], sctx=["reader"])
    out = dict(line.split(" ", 1) if " refused " not in line else line.split(" refused ", 1)
               for line in r.stdout.splitlines())
    lines = {ln.split(" refused ")[0]: ln.split(" refused ")[1]
             for ln in r.stdout.splitlines() if " refused " in ln}
    assert "SUCCEEDED" not in r.stdout, r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    assert "fd mode RDONLY" in r.stdout
    assert lines["mprotect"] == "EACCES" and lines["re-mmap"] == "EACCES"
    assert lines["write(fd)"] == "EBADF"
    assert lines["/proc/self/fd reopen rw"] == "EACCES"
    assert lines["/proc/self/fd reopen ro"] == "EACCES"
    assert lines["/proc/self/map_files"] == "EPERM"
    assert lines["fchmod"] == "EPERM" and lines["fchown"] == "EPERM"
    assert lines["store by path"] == "EACCES" and lines["twzd socket"] == "EACCES"
    for call, perm in (("OCOPY", "WRITE"), ("OCTL", "WRITE"), ("ODELETE", "DEL"),
                       ("EXEC map", "EXEC")):
        assert lines[call].startswith(f"{call.split()[0] if call != 'EXEC map' else 'LX_OBJFD'}"
                                      ": EACCES"), lines[call]
    assert out
    assert_x_intact(world, run)


@pytest.mark.parametrize("ctx, why", [("other", "someone else's capability"),
                                      ("forged", "an altered capability"),
                                      ("expired", "an expired capability"),
                                      ("revoked", "a revoked capability"),
                                      ("nocd", "a delegation of an undelegable capability")])
def test_spoiled_capabilities_grant_nothing(world, run, ctx, why):
    r = run(READ_X, world["x"], sctx=[ctx])
    assert r.stdout.startswith("FAULT FAULT_SCTX"), f"{why}: {r.stdout}{r.stderr}"
    assert "does not grant READ" in r.stdout and world["x"] in r.stdout


def test_delegation_works_as_far_as_its_mask_and_no_further(world, run):
    r = run(READ_THEN_WRITE_X, world["x"], sctx=["delegatee"])
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == "READ " + SECRET.decode(), r.stdout + r.stderr
    assert "does not grant WRITE" in lines[1] and "does not grant WRITE" in lines[2]
    assert_x_intact(world, run)


def test_the_delegators_own_capability_writes(world, run):
    """The control for the test above: the chain's root does grant WRITE."""
    r = run("""
import sys, libtwz
w = libtwz.Object.open(sys.argv[1], write=True)
w.write(0x2000, b"ok")
print("WROTE", w.read(0x2000, 2).decode())
""", world["x"], sctx=["writer"])
    assert r.stdout.strip() == "WROTE ok", r.stderr


def test_no_program_can_trace_read_or_signal_twzd(world, run):
    pid = int((world["home"] / "twzd.lock").read_text())
    r = run("""
import ctypes, errno, os, signal, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, fn):
    try:
        fn(); print(name, "SUCCEEDED")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
def ptrace():
    if libc.ptrace(16, pid, 0, 0) < 0:      # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
attempt("ptrace", ptrace)
attempt("mem", lambda: open(f"/proc/{pid}/mem", "rb").read(1))
attempt("fd", lambda: os.open(f"/proc/{pid}/fd/0", os.O_RDONLY))
attempt("kill", lambda: os.kill(pid, signal.SIGTERM))
attempt("pidfd", lambda: signal.pidfd_send_signal(os.open(f"/proc/{pid}", os.O_RDONLY),
                                                  signal.SIGTERM))
""", pid, sctx=["reader"])
    assert "SUCCEEDED" not in r.stdout, r.stdout + r.stderr
    assert r.stdout.split() == ["ptrace", "EPERM", "mem", "EACCES", "fd", "EACCES", "kill",
                                "EPERM", "pidfd", "EPERM"], r.stdout
    assert client.try_connect(world["home"]) is not None  # twzd is alive


def test_a_program_signals_its_own_children_but_no_other_program(world, run, tmp_path):
    victim = subprocess.Popen(
        [sys.executable, "-m", "twzlinux.cli.twzrun", _as_program(
            "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n", tmp_path)],
        env=twz_env(world["home"]), stdout=subprocess.PIPE, text=True)
    try:
        vpid = int(victim.stdout.readline())
        r = run("""
import os, signal, subprocess, sys
try:
    os.kill(int(sys.argv[1]), signal.SIGKILL); print("killed other")
except OSError as e:
    print("other", e.errno)
child = subprocess.Popen(["sleep", "60"])
os.kill(child.pid, signal.SIGTERM)
print("child", child.wait())
""", vpid)
        assert r.stdout.split() == ["other", "1", "child", str(-signal.SIGTERM)], \
            r.stdout + r.stderr
        assert victim.poll() is None  # still running
    finally:
        victim.kill()
        victim.wait()


def test_no_program_writes_another_programs_view_or_thread(world, run, tmp_path):
    victim = subprocess.Popen(
        [sys.executable, "-m", "twzlinux.cli.twzrun", _as_program(
            "import os, sys\nprint(os.environ['TWZ_VIEW'], os.environ['TWZ_THREAD'], flush=True)"
            "\nsys.stdin.readline()\nprint('victim fine')\n", tmp_path)],
        env=twz_env(world["home"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        view, thread = victim.stdout.readline().split()
        r = run("""
import sys, libtwz
from libtwz import runtime
from twzlinux.abi import constants as c
for oid in map(libtwz.ObjID.parse, sys.argv[1:]):
    try:
        libtwz.Object.open(oid, write=True)
        print("opened for writing")
    except libtwz.TwzError as e:
        print("open", e.errno)
    w = libtwz.Object(int(oid), runtime.slot_alloc(int(oid), c.VE_READ | c.VE_WRITE),
                      c.FE_READ | c.FE_WRITE)
    try:
        w.write(0x1000 + 2048, b"EVIL")
        print("WROTE")
    except libtwz.FaultSctx as e:
        print("fault SCTX")
""", view, thread, sctx=["reader"])
        assert r.stdout.split() == ["open", "13", "fault", "SCTX"] * 2, r.stdout + r.stderr
        victim.stdin.write("\n")
        victim.stdin.flush()
        assert victim.stdout.readline().strip() == "victim fine"
    finally:
        victim.kill()
        victim.wait()


def test_the_filter_cannot_be_escaped_by_x32_or_int80(world, build_native):
    exe = build_native(r"""
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>
#include <stdio.h>
int main(int argc, char **argv) {
    long r;
    /* LX_OBJFD through the x32 ABI: the x32 bit must not slip past the filter */
    __asm__ volatile("syscall" : "=a"(r) : "a"(0x40000000L | TWZ_LINUX_NR(SYS_LX_OBJFD)),
                     "D"(0L), "S"(0L), "d"((long)VE_READ | VE_WRITE) : "rcx", "r11", "memory");
    printf("x32 %ld\n", r);
    fflush(stdout);
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(TWZ_LINUX_NR(SYS_LX_OBJFD)) : "memory");
    printf("int80 survived %ld\n", r);
    return 0;
}
""")
    r = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", str(exe)],
                       env=twz_env(world["home"]), capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["x32 -38"], r.stdout + r.stderr   # -ENOSYS
    assert r.returncode == 128 + signal.SIGSYS                         # killed by the filter


def test_native_code_runs_from_an_object_only_with_exec(world, build_native):
    """EXEC for native code mapped from objects: the same view entry (READ|EXEC) runs the code
    under a context granting EXEC and faults FAULT_SCTX under one granting only READ."""
    home, key = world["home"], world["key"]
    code = sec_request(home, cmd="object_new", key=key, pflags=0, data=base64.b64encode(
        bytes([0xB8, 42, 0, 0, 0, 0xC3])).decode())["id"]           # mov eax, 42; ret
    tag = uuid.uuid4().hex[:8]
    for ctx, perms in ((f"runs-{tag}", sec.SCP_READ | sec.SCP_EXEC), (f"reads-{tag}",
                                                                      sec.SCP_READ)):
        sec_request(home, cmd="sctx_new", name=ctx, key=key)
        sec_request(home, cmd="sctx_add", sctx=ctx, target=code, item=sec_request(
            home, cmd="cap_grant", key=key, target=code, accessor=ctx, perms=perms)["item"])
    exe = build_native(r"""
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    uint64_t hi = strtoull(argv[1], NULL, 16), lo = strtoull(strchr(argv[1], ':') + 1, NULL, 16);
    long slot = twz_rt_slot_alloc(lo, hi, VE_READ | VE_EXEC);
    int (*fn)(void) = (int (*)(void))((slot << 30) + 0x1000);
    printf("returned %d\n", fn());
    return 0;
}
""", name="runcode")
    for ctx, want_out, want_rc in ((f"runs-{tag}", "returned 42\n", 0),
                                   (f"reads-{tag}", "", c.TWZ_FAULT_EXIT_BASE + c.FAULT_SCTX)):
        r = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--sctx", ctx, str(exe),
                            code], env=twz_env(home), capture_output=True, text=True, timeout=60)
        assert (r.stdout, r.returncode) == (want_out, want_rc), r.stdout + r.stderr
    assert "FAULT_SCTX" in r.stderr and code.split(":")[1] in r.stderr
    assert "no EXEC in the security context" in r.stderr


def test_floods_leave_twzd_serving(world, run):
    """Objects and slots by the thousand from one program; others run meanwhile and after."""
    r = run("""
import libtwz
objs = [libtwz.Object.create() for _ in range(1500)]
for o in objs:
    o.write(0x1000, b"x")
print("made", len(objs))
""", timeout=120)
    assert r.stdout.strip() == "made 1500", r.stderr
    assert_x_intact(world, run)
    assert run("print('alive')").stdout.strip() == "alive"


def test_records_of_their_own_only_for_live_processes(world, run):
    # LX_FORKED and LX_THRD_HOST give the caller a record of its own: a thread of the program
    # claiming either gets none (twzd would keep it for ever, and its calls would leave the
    # program's record), twzd sees no bug in it, and the program goes on as before.
    log = Path(world["home"]) / "twzd.log"
    bugs = log.read_text().count("kernel bug")
    r = run("""
import threading, libtwz
from libtwz import sys as tsys
out = []
def claim():
    for call in (lambda: tsys.sys_lx_forked(0), lambda: tsys.sys_lx_thrd_host(1 << 64)):
        try:
            call()
            out.append("accepted")
        except libtwz.TwzError as e:
            out.append(e.errno)
t = threading.Thread(target=claim)
t.start(); t.join()
o = libtwz.Object.create()
o.write(0x1000, b"ok")
print(out, o.read(0x1000, 2).decode())
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"[{errno.EINVAL}, {errno.ESRCH}] ok", r.stdout
    assert log.read_text().count("kernel bug") == bugs


def test_an_object_flood_is_refused_at_the_programs_quota(fresh_home, tmp_path):
    daemon = start_daemon(fresh_home, extra_env={"TWZ_OBJECT_QUOTA": "300"})
    try:
        flood = _as_program("""
import libtwz
made = []
try:
    while True:
        made.append(libtwz.Object.create(persist=True))
except libtwz.TwzError as e:
    print("refused after", len(made), e)
for o in made[:10]:
    o.delete()
try:
    libtwz.Object.create(persist=True)
    print("after deleting: created")
except libtwz.TwzError as e:
    print("after deleting:", e)
try:
    while True:                  # up to the limit again
        made.append(libtwz.Object.create(persist=True))
except libtwz.TwzError:
    pass
import os
r, w = os.pipe()
if os.fork() == 0:               # a fork has a record of its own, but the program's quota
    try:
        libtwz.Object.create(persist=True)
        os.write(w, b"fork: created")
    except libtwz.TwzError as e:
        os.write(w, f"fork: {e}".encode())
    os._exit(0)
os.close(w)
print(os.read(r, 200).decode())
""", tmp_path)
        r = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", flood],
                           env=twz_env(fresh_home), capture_output=True, text=True, timeout=120)
        lines = r.stdout.splitlines()
        assert lines[0].startswith("refused after 300 OCREATE: EDQUOT"), r.stdout + r.stderr
        assert lines[1] == "after deleting: created"
        assert lines[2].startswith("fork: OCREATE: EDQUOT"), r.stdout + r.stderr
        other = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", _as_program(
            "import libtwz\nprint(len([libtwz.Object.create() for _ in range(50)]))\n",
            tmp_path)], env=twz_env(fresh_home), capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "50", other.stderr   # twzd serves the others
    finally:
        daemon.terminate()
        daemon.wait(30)


def test_unknown_contexts_are_refused_before_the_program_starts(world, run):
    r = run("print('ran')", sctx=["no-such-context"])
    assert r.returncode != 0 and "ran" not in r.stdout
    assert "no object 'no-such-context'" in r.stderr
    r = run("print('ran')", sctx=["key"])                      # not a context
    assert "not a security context" in r.stderr
    assert os.path.isdir(world["home"])
    assert c.KSO_SECCTX == 2
