"""Twizzler threads: THRD_SPAWN, reprs, views, join, exit, `twz ps` (real processes under twzd)."""

import errno
import subprocess
import sys
import textwrap

import pytest

from conftest import twz, twz_env
from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.abi.syscalls import BY_NAME
from twzlinux.kernel.core import Kernel, SyscallError


def test_eight_threads_in_two_views_count_exactly_under_the_mutex(twzrun):
    proc = twzrun("""
        import json, os, libtwz
        from libtwz import Mutex, Object, Thread, View
        N = 2000
        obj = Object.create()
        lock = Mutex(obj, 0x1000)
        def work(i):
            me = Thread.current()
            assert me is not None and me.repr.id == me.id
            obj.write(0x2000 + 32 * i, me.id.to_bytes(16, "little") + os.getpid().to_bytes(8, "little")
                      + View.current().id.to_bytes(16, "little")[:8])
            for _ in range(N):
                with lock:
                    v = libtwz.runtime.load64(obj.address + 0x1010)
                    libtwz.runtime.store64(obj.address + 0x1010, v + 1)
            return 40 + i
        other = View.clone()
        ts = [Thread(work, (i,), view=other if i % 2 else None, name=f"worker{i}") for i in range(8)]
        for t in ts:
            t.start()
        codes = [t.join() for t in ts]
        rows = [obj.read(0x2000 + 32 * i, 32) for i in range(8)]
        print(json.dumps({
            "count": libtwz.runtime.load64(obj.address + 0x1010), "codes": codes,
            "ids_match": all(int.from_bytes(r[:16], "little") == t.id for r, t in zip(rows, ts)),
            "pids": [int.from_bytes(r[16:24], "little") for r in rows], "me": os.getpid(),
            "views": [r[24:32].hex() for r in rows], "main": Thread.current().name}))
        """, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json
    out = json.loads(proc.stdout)
    assert out["count"] == 8 * 2000
    assert out["codes"] == [40 + i for i in range(8)]
    assert out["ids_match"] and out["main"] == "main"
    assert len(set(out["views"])) == 2
    assert [p == out["me"] for p in out["pids"]] == [True, False] * 4  # other view: own process
    assert len(set(out["pids"][1::2])) == 4


def test_exit_codes_and_a_lost_host(twzrun):
    proc = twzrun("""
        import os, signal, sys, libtwz
        from libtwz import Thread, View
        from twzlinux.abi.constants import THRD_EXIT_LOST
        def boom():
            raise RuntimeError("boom")
        v = View.clone()
        ts = [Thread(lambda: 5), Thread(boom), Thread(lambda: sys.exit(3), view=v),
              Thread(lambda: os.kill(os.getpid(), signal.SIGKILL), view=v)]
        for t in ts:
            t.start()
        print([t.join() for t in ts] == [5, 1, 3, THRD_EXIT_LOST])
        t = Thread(lambda: None)
        t.start()
        t.join()
        try:
            t.start()
        except libtwz.TwzError as e:
            print("again:", e)
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["True", "again: a thread can be started only once"]
    assert "RuntimeError: boom" in proc.stderr


def test_a_thread_in_another_view_spawns_into_a_third(twzrun):
    # The host of the first thread forks a host of its own: twzd finds the grandchild's spawner
    # through its parent's record, and each thread reports the view it runs in.
    proc = twzrun("""
        import json, os, libtwz
        from libtwz import Object, Thread, View
        out = Object.create()
        def inner():
            out.write(0x1010, View.current().id.to_bytes(16, "little") + os.getpid().to_bytes(8, "little"))
            return 7
        def outer(third):
            out.write(0x1000, View.current().id.to_bytes(16, "little"))
            t = Thread(inner, view=third)
            t.start()
            return 10 + t.join()
        a, b = View.clone(), View.clone()
        t = Thread(outer, (b,), view=a)
        t.start()
        code = t.join()
        rec = out.read(0x1000, 40)
        print(json.dumps({"code": code, "outer": rec[:16].hex() == a.id.to_bytes(16, "little").hex(),
                          "inner": rec[16:32].hex() == b.id.to_bytes(16, "little").hex(),
                          "own_process": int.from_bytes(rec[32:], "little") not in (0, os.getpid())}))
        """, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json
    assert json.loads(proc.stdout) == {"code": 17, "outer": True, "inner": True,
                                       "own_process": True}


def test_a_thread_of_this_process_is_joined_without_mapping_its_repr(daemon, tmp_path):
    # Neither the thread nor its joiner touches the repr: the thread reports its exit by ID, the
    # joiner waits for its Linux thread and gets the code twzd stored; then the program lets the
    # repr go (the untie), never having mapped it.
    prog = tmp_path / "join.py"
    prog.write_text(textwrap.dedent("""
        import libtwz
        from libtwz import Thread
        t = Thread(lambda: 42)
        t.start()
        code = t.join()
        libtwz.sys.sys_null(4242)
        print(t.id, code, t.join())
        """))
    run = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--trace", str(prog)],
                         env=twz_env(daemon), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    tid, code, again = run.stdout.split()
    assert (code, again) == ("42", "42")
    calls = [ln.split("] ", 1)[1].split("(")[0] for ln in run.stderr.splitlines()
             if tid in ln or "NULL(arg=4242)" in ln]
    assert calls == ["OTIE", "ODELETE", "THRD_SPAWN", "LX_THRD_START", "LX_THRD_EXIT", "OTIE",
                     "NULL"], run.stderr


def test_a_host_that_dies_before_registering_is_a_lost_thread_not_a_hang(twzrun,
                                                                         build_native):
    # twzd learns of a host only at LX_THRD_HOST; one that dies before it never sets the EXIT
    # word, so the joiner watches the host process itself.
    proc = twzrun("""
        import os
        from libtwz import Thread, View
        from twzlinux.abi import constants as c
        class DiesAtOnce(Thread):
            def _run_forked(self):
                os._exit(3)
        t = DiesAtOnce(lambda: 0, view=View.clone())
        t.start()
        print(t.join(timeout=30) == c.THRD_EXIT_LOST)
        """, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True", proc.stdout
    exe = build_native(r"""
        #define TWZ_RT_IMPLEMENTATION
        #include <twz/rt.h>
        #include <signal.h>
        #include <stdio.h>
        #include <stdlib.h>
        static void work(void *arg) { (void)arg; pause(); }
        int main(void) {
            objid_t view, cur;
            if(twz_rt_env_id("TWZ_VIEW", &cur) < 0
               || sys_ocreate(0, cur, MIP_DFL_READ | MIP_DFL_WRITE | (KSO_VIEW << OC_KSO_SHIFT), &view) < 0)
                return 2;
            struct twz_thread t;
            if(twz_thread_spawn(&t, view, work, NULL) < 0)
                return 3;
            kill(t.pid, SIGKILL);     /* before or after it registered: lost either way */
            printf("%d\n", twz_thread_join(&t) == THRD_EXIT_LOST);
            return 0;
        }
        """, name="lost", flags=("-lpthread",))
    native = twzrun(str(exe), timeout=60)
    assert native.returncode == 0, native.stderr
    assert native.stdout.strip() == "1"


def test_a_forked_child_has_its_own_copy_of_the_view(twzrun):
    # Its slot allocations and releases are its own: releasing a handle it inherited (one its
    # parent has not touched yet) must not clear the parent's entry, and View.current says
    # which view it runs in.
    proc = twzrun("""
        import os, libtwz
        from libtwz import View
        a = libtwz.Object.create()
        mine = View.current().id
        r, w = os.pipe()
        if os.fork() == 0:
            a.release()
            other = libtwz.Object.create()
            other.write(0x1000, b"child")
            os.write(w, f"{View.current().id != mine} {os.environ['TWZ_VIEW'] == str(View.current().id)}".encode())
            os._exit(0)
        os.close(w)
        child = os.read(r, 100).decode()
        os.wait()
        a.write(0x1000, b"parent")
        print(child, a.read(0x1000, 6).decode())
        """, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True True parent"


def test_twz_ps_lists_live_threads_with_views_and_names(daemon, tmp_path):
    prog = tmp_path / "ps.py"
    prog.write_text(textwrap.dedent("""
        import sys, libtwz
        from libtwz import Object, Thread, View
        gate = Object.create()
        def wait():
            while not libtwz.runtime.load64(gate.address + 0x1000):
                libtwz.sleep(gate, 0x1000, 0)
        v = View.clone()
        ts = [Thread(wait, name="psworker-here"), Thread(wait, view=v, name="psworker-there")]
        for t in ts:
            t.start()
        print(ts[0].id, ts[1].id, View.current().id, v.id, flush=True)
        sys.stdin.readline()
        libtwz.runtime.store64(gate.address + 0x1000, 1)
        libtwz.wake(gate, 0x1000)
        print([t.join() for t in ts], flush=True)
        sys.stdin.readline()
        """))
    proc = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog)],
                            env=twz_env(daemon), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        here, there, view, other = proc.stdout.readline().split()
        ps = twz(daemon, "ps")
        assert ps.returncode == 0, ps.stderr
        rows = {ln.split()[1]: ln.split() for ln in ps.stdout.splitlines()[1:]}
        assert rows[here][2:] == [view, "psworker-here"]
        assert rows[there][2:] == [other, "psworker-there"]
        assert rows[here][0] != rows[there][0]  # the other view runs in a process of its own
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "[0, 0]"
        ps = twz(daemon, "ps")
        assert here not in ps.stdout and there not in ps.stdout
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(30)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()


def test_native_threads_in_both_views_and_thrd_ctl_exit(build_native, twzrun):
    exe = build_native(r"""
        #define TWZ_RT_IMPLEMENTATION
        #include <twz/rt.h>
        #include <stdio.h>
        #include <unistd.h>
        static struct mutex *mu;
        static uint64_t *count, *done;
        static void work(void *arg, uint64_t lo, uint64_t hi) {
            char *repr = twz_thread_repr_base();
            objid_t me = *(objid_t *)(repr + THRD_REPRID);
            if(ID_LO(me) != lo || ID_HI(me) != hi) { printf("bad repr\n"); return; }
            for(int i = 0; i < 5000; i++) { mutex_acquire(mu); (*count)++; mutex_release(mu); }
            if(arg) {  /* Twizzler's thread exit: code in syncinfos, THRD_CTL_EXIT wakes `done` */
                *(uint64_t *)(repr + THRD_SYNCINFOS + 8 * THRD_SYNC_EXIT) = 9;
                __atomic_store_n(done, 1, __ATOMIC_SEQ_CST);
                sys_thrd_ctl(THRD_CTL_EXIT, (long)done);
                printf("not reached\n");
            }
        }
        int main(void) {
            objid_t id, view;
            long r = sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &id);
            long slot = twz_rt_slot_alloc(ID_LO(id), ID_HI(id), VE_READ | VE_WRITE);
            char *base = (char *)(slot << 30) + OBJ_NULLPAGE_SIZE;
            mu = (struct mutex *)base; count = (uint64_t *)(base + 64); done = (uint64_t *)(base + 128);
            uint64_t lo, hi;
            sscanf(getenv("TWZ_VIEW"), "%lx:%lx", &hi, &lo);
            objid_t cur = MKID(hi, lo);
            r = sys_ocreate(0, cur, MIP_DFL_READ | MIP_DFL_WRITE | (KSO_VIEW << OC_KSO_SHIFT), &view);
            if(r < 0) { printf("clone %ld\n", r); return 1; }
            struct twz_thread t[4];
            for(int i = 0; i < 4; i++) {
                r = twz_thread_spawn(&t[i], i % 2 ? view : 0, (void (*)(void *))work, i == 3 ? (void *)1 : NULL);
                if(r < 0) { printf("spawn %ld\n", r); return 1; }
            }
            /* THRD_CTL_EXIT woke sleepers on `done` */
            while(!__atomic_load_n(done, __ATOMIC_SEQ_CST))
                twz_thread_sync(THREAD_SYNC_SLEEP, done, 0, NULL);
            for(int i = 0; i < 4; i++) printf("%lu ", (unsigned long)twz_thread_join(&t[i]));
            printf("%lu %d %d\n", (unsigned long)*count, t[1].pid > 0, t[0].pid == 0);
            return 0;
        }
        """, name="nthreads", flags=("-lpthread",))
    proc = twzrun(str(exe), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 0 0 9 20000 1 1"


# --- the kernel core, without processes ---------------------------------------------------------

class Mem:
    def __init__(self):
        self.buf = bytearray(0x1000)

    def read(self, addr, n):
        if not 0x10000 <= addr <= 0x11000 - n:
            raise SyscallError(errno.EFAULT)
        return bytes(self.buf[addr - 0x10000:addr - 0x10000 + n])

    def write(self, addr, data):
        self.buf[addr - 0x10000:addr - 0x10000 + len(data)] = data


def _call(k, proc, mem, name, *args, tid=None):
    from twzlinux.abi.syscalls import split_args
    return k.syscall(proc, BY_NAME[name].linux_nr, split_args(BY_NAME[name], args) + [0] * 6,
                     mem, tid=tid)


def test_kernel_thrd_spawn_checks_and_exit(tmp_path):
    k = Kernel(tmp_path, lambda p, d: None)
    try:
        proc, mem = k.new_process(), Mem()
        proc.pid = 100
        rw = c.MIP_DFL_READ | c.MIP_DFL_WRITE
        repr_obj = k.objects.create(0, rw)
        ro = k.objects.create(0, c.MIP_DFL_READ)
        plain = k.objects.create(0, rw)

        def spawn(tid, view=0, flags=0):
            mem.write(0x10000, s.id_pack(view) + bytes(48))
            return _call(k, proc, mem, "THRD_SPAWN", tid, 0x10000, flags, 0)

        for tid, view, flags, err in ((repr_obj.id, 0, 1, errno.EINVAL),
                                      (12345, 0, 0, errno.ENOENT),
                                      (ro.id, 0, 0, errno.EACCES),
                                      (repr_obj.id, plain.id, 0, errno.EINVAL),
                                      (repr_obj.id, 999, 0, errno.ENOENT),
                                      (proc.view_id, 0, 0, errno.EINVAL)):
            with pytest.raises(SyscallError) as ei:
                spawn(tid, view, flags)
            assert ei.value.errno == err, (tid, view, flags)
        assert spawn(repr_obj.id) == 0
        assert repr_obj.kso_type == c.KSO_THREAD
        with pytest.raises(SyscallError) as ei:
            spawn(repr_obj.id)
        assert ei.value.errno == errno.EBUSY
        assert [t["id"] for t in k.threads.listing()] == [s.id_str(proc.thread_id),
                                                          s.id_str(repr_obj.id)]
        assert _call(k, proc, mem, "LX_THRD_EXIT", repr_obj.id, 7) == 0
        exit_word = c.OBJ_NULLPAGE_SIZE + s.THRD_SYNCS + 8 * s.THRD_SYNC_EXIT
        assert repr_obj.backing.pread(exit_word, 8) == (1).to_bytes(8, "little")
        assert repr_obj.backing.pread(exit_word + 1024, 8) == (7).to_bytes(8, "little")
        assert len(k.threads.listing()) == 1
        with pytest.raises(SyscallError) as ei:
            _call(k, proc, mem, "LX_THRD_EXIT", repr_obj.id, 7)
        assert ei.value.errno == errno.ESRCH
        # another view: the thread waits for a host, which must be another process
        view2 = k.objects.create(0, rw | c.KSO_VIEW << c.OC_KSO_SHIFT)
        other = k.objects.create(0, rw)
        assert spawn(other.id, view2.id) == 0
        with pytest.raises(SyscallError):
            _call(k, proc, mem, "LX_THRD_HOST", other.id, tid=100)
        assert _call(k, proc, mem, "LX_THRD_HOST", other.id, tid=101) == 0
        host = k.hosted[101]
        assert (host.view_id, host.thread_id, host.owned) == (view2.id, other.id, ())
        k.process_exit(host)
        assert repr_obj.backing.pread(exit_word + 1024, 8) == (7).to_bytes(8, "little")
        assert other.backing.pread(exit_word + 1024, 8) == c.THRD_EXIT_LOST.to_bytes(8, "little")
        assert k.objects.lookup(view2.id) is view2  # a host's view is not the kernel's to free
        assert 101 not in k.hosted
    finally:
        k.close()
