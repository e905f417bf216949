"""Crash injection: kill -9 a writing program, and separately twzd, at random points, 200 times.

The writer (WRITER below) first checks everything the runs before it reported as done, then
writes until it is killed, reporting each step once it is complete:

    N run i   object i created persistent, filled, and named /crash/r<run>/<i> (FOT-free)
    C i       a transaction set three counters (on three pages) to i and pointed a persistent
              pointer (FOT entry + pointer) at object i
    D id      a persistent object was deleted while still mapped by the writer
    T id      a persistent object was tied to the state object, then deleted
    U id      (checking) such a tied object was untied, which frees it

A kill between two reports must leave every reported step in place and no transaction half
applied: the checker rolls back any pending transaction, then requires the counters equal, at
least the last committed value, and the pointer aimed at that object; every reported name
resolves to its filled object (as does every name present at all); deleted objects are gone and
tied ones are not.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import start_daemon, stop_daemon, twz_env

WRITER = r"""
import errno, json, os, sys, time
import libtwz
from libtwz import names, sys as tsys
from libtwz.tx import Tx
from twzlinux.abi import constants as c

A, B, C, P = 0x3000, 0x5000, 0x7000, 0x9000
run, known = int(sys.argv[1]), json.load(open(sys.argv[2]))
say = lambda *a: print(" ".join(map(str, a)), flush=True)
say("P", os.getpid())

def gone(oid, wait=0.0):
    deadline = time.monotonic() + wait  # twzd frees on a killed writer's exit, soon after
    while True:
        try:
            libtwz.stat(oid)
        except libtwz.TwzError as e:
            return e.errno == errno.ENOENT
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)

def content(obj, i):
    return obj.read(0x1000, 16) == f"n{i}".encode().ljust(16, b"\0")

st = libtwz.Object.open("/crash/state", write=True)
tx = Tx(st, 0x1000, durable=False)        # rolls back a transaction a kill cut short
a, b, cc = (int.from_bytes(st.read(x, 8), "little") for x in (A, B, C))
assert a == b == cc, f"half-applied transaction: {a} {b} {cc}"
assert a >= known["committed"], f"lost a commit: {a} < {known['committed']}"
if a:
    target, off = st.load_ptr(P)
    assert content(target, a), f"pointer of commit {a} does not reach object {a}"
for r, i in known["named"]:
    assert content(libtwz.Object.open(f"/crash/r{r}/{i}"), i), (r, i)
for r in known["dirs"]:
    for name, oid, _ in names.listdir(f"/crash/r{r}"):
        assert content(libtwz.Object.open(oid), int(name)), (r, name)
names.listdir("/crash")
for oid in known["deleted"]:
    assert gone(libtwz.ObjID.parse(oid), wait=2), f"deleted object {oid} is back"
for oid in known["tied"]:
    child = libtwz.ObjID.parse(oid)
    assert not gone(child), f"tied object {oid} was freed"
    tsys.sys_otie(st.id, child, c.OTIE_UNTIE)
    assert gone(child), f"untied object {oid} was not freed"
    say("U", oid)
say("V")

i = a
while True:
    i += 1
    obj = libtwz.Object.create(persist=True)
    obj.write(0x1000, f"n{i}".encode())
    names.assign(f"/crash/r{run}/{i}", obj.id)
    say("N", run, i)
    with tx:
        for x in (A, B, C):
            tx.write(x, i.to_bytes(8, "little"))
        tx.record(P, 8)
        st.store_ptr(P, obj, 0x1000)
    say("C", i)
    obj.release()
    doomed = libtwz.Object.create(persist=True)
    doomed.delete()
    say("D", doomed.id)
    child = libtwz.Object.create(persist=True)
    tsys.sys_otie(st.id, child.id, 0)
    child.delete()
    child.release()
    say("T", child.id)
"""

SETUP = """
import libtwz
from libtwz.tx import Tx
st = libtwz.Object.create(persist=True, name="/crash/state")
Tx.create(st, 0x1000, 4096)
"""

PROGRAM_KILLS, DAEMON_KILLS = 140, 60


class Ledger:
    """What the writers reported as done, as the next writer is told it."""

    def __init__(self):
        self.committed, self.named, self.deleted, self.tied = 0, [], [], set()
        self.dirs: list[int] = []

    def absorb(self, run: int, lines: list[str]) -> None:
        self.deleted = []  # checked once, by the next run: enough, and keeps runs short
        for line in lines:
            kind, *rest = line.split()
            if kind == "C":
                self.committed = int(rest[0])
            elif kind == "N":
                self.named.append((int(rest[0]), int(rest[1])))
            elif kind == "D":
                self.deleted.append(rest[0])
            elif kind == "T":
                self.tied.add(rest[0])
            elif kind == "U":
                self.tied.discard(rest[0])
        if any(r == run for r, _ in self.named):
            self.dirs.append(run)

    def brief(self, path, rng) -> None:
        # Every name of the last runs, and whole directories of a few random older ones.
        named = [n for n in self.named if n[0] >= max(self.dirs, default=0) - 1]
        dirs = rng.sample(self.dirs, min(2, len(self.dirs)))
        path.write_text(json.dumps({"committed": self.committed, "named": named,
                                    "deleted": self.deleted, "tied": sorted(self.tied),
                                    "dirs": dirs}))


def _start_writer(home, prog, run, brief):
    return subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog), str(run),
                             str(brief)], env=twz_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _checked(writer) -> tuple[int, list[str]]:
    """Wait for the writer's check to pass: (its pid, the lines it printed so far)."""
    lines = []
    while True:
        line = writer.stdout.readline()
        if not line:
            writer.wait(10)
            raise AssertionError(f"the writer failed its check:\n{writer.stderr.read()}")
        lines.append(line.strip())
        if line.strip() == "V":
            return int(lines[0].split()[1]), lines


def _finish(writer, lines) -> list[str]:
    out, _ = writer.communicate(timeout=20)
    return lines + out.split("\n")[:-1]  # a line the kill cut short reports nothing


def _campaign(tmp_path, program_kills: int, daemon_kills: int) -> tuple[dict, Ledger]:
    """Writers on a home of their own, killed in a shuffled order of victims."""
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    home = tmp_path / "home"
    home.mkdir(parents=True)
    prog, brief = tmp_path / "writer.py", tmp_path / "known.json"
    prog.write_text(WRITER)
    (tmp_path / "setup.py").write_text(SETUP)
    ledger, kills = Ledger(), {"program": 0, "twzd": 0}
    daemon = start_daemon(home)
    try:
        setup = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun",
                                str(tmp_path / "setup.py")], env=twz_env(home),
                               capture_output=True, text=True, timeout=30)
        assert setup.returncode == 0, setup.stderr
        plan = ["program"] * program_kills + ["twzd"] * daemon_kills
        rng.shuffle(plan)
        for run, victim in enumerate(plan, 1):
            ledger.brief(brief, rng)
            writer = _start_writer(home, prog, run, brief)
            pid, lines = _checked(writer)
            time.sleep(rng.uniform(0, 0.08))
            if victim == "twzd":
                daemon.kill()
                daemon.wait()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # twzrun took it down when twzd went
            ledger.absorb(run, _finish(writer, lines))
            kills[victim] += 1
            if victim == "twzd":
                daemon = start_daemon(home)
        # A last writer checks what the last kill left.
        ledger.brief(brief, rng)
        writer = _start_writer(home, prog, len(plan) + 1, brief)
        pid, _ = _checked(writer)
        os.kill(pid, signal.SIGKILL)
        writer.communicate(timeout=20)
    finally:
        daemon.kill()
        daemon.wait()
        stop_daemon(home)
    return kills, ledger


def test_kill_writer_and_twzd_at_random_points(tmp_path):
    # Two homes side by side (one per CPU): the same 200 kills in half the time.
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_campaign, tmp_path / f"c{i}", PROGRAM_KILLS // 2, DAEMON_KILLS // 2)
                for i in range(2)]
        results = [r.result() for r in runs]
    kills = {v: sum(k[v] for k, _ in results) for v in ("program", "twzd")}
    assert kills == {"program": PROGRAM_KILLS, "twzd": DAEMON_KILLS}
    for _, ledger in results:
        assert ledger.committed > (PROGRAM_KILLS + DAEMON_KILLS) // 8, \
            "the writers hardly ran between kills"
    print(f"{sum(kills.values())} kills in {time.monotonic() - t0:.1f} s; "
          f"{sum(lg.committed for _, lg in results)} commits")


HOLDER = """
import os, sys, time, libtwz
from libtwz import names
ns = names._open_ns(names.root_id(), write=True)
lock = names._Locked(ns)
lock.__enter__()
print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_a_namespace_lock_held_by_a_killed_program_is_taken_over(twzrun, daemon, tmp_path):
    prog = tmp_path / "holder.py"
    prog.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog)],
                              env=twz_env(daemon), stdout=subprocess.PIPE, text=True)
    pid = int(holder.stdout.readline())
    os.kill(pid, signal.SIGKILL)
    holder.wait(10)
    r = twzrun("""
import libtwz, uuid
o = libtwz.Object.create(persist=True, name=f"/after-kill-{uuid.uuid4().hex}")
print("named")
""", timeout=20)
    assert r.returncode == 0 and r.stdout.strip() == "named", r.stderr


def test_an_allocator_whose_initialiser_was_killed_initialises_again(twzrun):
    r = twzrun("""
import libtwz
from libtwz import alloc, runtime as rt
obj = libtwz.Object.create()
dead = (1 << 22) + 5            # above pid_max: no such process, ever
# what a process killed inside the first alloc() leaves: the lock held, a field set, no magic
rt.store64(obj.address + alloc.HEADER + 8, dead << 1 | 1)
rt.store64(obj.address + alloc.HEADER + 16, 0x123456)
off = obj.alloc(32)
print(off >= alloc.HEAP_START, obj.alloc(32) != off)
""")
    assert r.returncode == 0 and r.stdout.split() == ["True", "True"], r.stderr
