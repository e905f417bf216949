"""thread_sync, the crash-resetting mutex and events: real processes under twzd, real futexes."""

import signal
import subprocess
import sys
import textwrap

from conftest import start_daemon, stop_daemon, twz_env


def _popen(home, path):
    return subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(path)],
                            env=twz_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_wake_through_another_mapping_in_another_process(daemon, tmp_path):
    """The sleeper and the waker map the object at different slots, in different processes:
    the sync point is (object, offset), as in Twizzler."""
    sleeper = _write(tmp_path, "sleeper.py", """
        import libtwz
        obj = libtwz.Object.create(name="/test/sync-two-mappings")
        print(obj.slot, flush=True)
        woke = 0
        while obj.read(0x1008, 8) == bytes(8):
            libtwz.sleep(obj, 0x1008, 0, timeout=20)
            woke += 1
        print(int.from_bytes(obj.read(0x1008, 8), "little"), woke, flush=True)
        """)
    waker = _write(tmp_path, "waker.py", """
        import sys, libtwz
        pad = [libtwz.Object.create() for _ in range(3)]  # so the slot differs
        obj = libtwz.Object.open("/test/sync-two-mappings", write=True)
        assert obj.slot != int(sys.argv[1]), (obj.slot, sys.argv[1])
        obj.write(0x1008, (77).to_bytes(8, "little"))
        libtwz.wake(obj, 0x1008)
        print(obj.slot)
        """)
    proc = _popen(daemon, sleeper)
    try:
        slot = proc.stdout.readline().strip()
        assert slot, proc.stderr.read()
        done = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", str(waker), slot],
                              env=twz_env(daemon), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    value, sleeps = out.split()
    assert value == "77"
    assert int(sleeps) <= 2  # woken, not timed out (one sleep, or none if the wake came first)


def test_timeouts_fire_within_10ms_of_the_deadline(twzrun, build_native):
    python = twzrun("""
        import json, time, libtwz
        obj = libtwz.Object.create()
        late = []
        for t in (0.005, 0.02, 0.05, 0.1) * 3:
            t0 = time.monotonic()
            assert libtwz.sleep(obj, 0x1000, 0, timeout=t) is False
            late.append(time.monotonic() - t0 - t)
        print(json.dumps(late))
        """)
    assert python.returncode == 0, python.stderr
    native_exe = build_native(r"""
        #define TWZ_RT_IMPLEMENTATION
        #include <twz/rt.h>
        #include <stdio.h>
        static uint64_t words[2];
        int main(void) {
            for(int i = 0; i < 12; i++) {
                long ns = (i % 4 + 1) * 12000000L;
                struct timespec ts = { 0, ns }, t0, t1;
                /* two sleeps in one call: FUTEX_WAITV's absolute deadline */
                struct sys_thread_sync_args a[2] = {
                    { .addr = &words[0], .arg = 0, .op = THREAD_SYNC_SLEEP },
                    { .addr = &words[1], .arg = 0, .op = THREAD_SYNC_SLEEP, .flags = THREAD_SYNC_32BIT } };
                clock_gettime(CLOCK_MONOTONIC, &t0);
                long r = sys_thrd_sync(i % 2 ? 2 : 1, a, &ts);
                clock_gettime(CLOCK_MONOTONIC, &t1);
                long late = (t1.tv_sec - t0.tv_sec) * 1000000000L + t1.tv_nsec - t0.tv_nsec - ns;
                printf("%ld %ld\n", r, late);
            }
            return 0;
        }
        """, name="timeouts")
    native = twzrun(str(native_exe))
    assert native.returncode == 0, native.stderr
    import json
    lates = json.loads(python.stdout) + [int(ln.split()[1]) / 1e9 for ln in native.stdout.split("\n") if ln]
    assert all(ln.split()[0] == "-110" for ln in native.stdout.split("\n") if ln), native.stdout
    assert min(lates) >= 0, lates  # never early
    assert max(lates) < 0.010, lates


PINGPONG = """
    import sys, libtwz
    obj = libtwz.Object.open("/test/sync-pingpong", write=True)
    me, rounds = int(sys.argv[1]), int(sys.argv[2])
    word = 0x1000
    # Each side waits for its turn (word == 2*i + me), then hands over: a lost wake hangs here.
    for i in range(rounds):
        mine, theirs = 2 * i + me, 2 * i + me + 1
        while True:
            v = libtwz.runtime.load64(obj.address + word)
            if v == mine:
                break
            libtwz.sleep(obj, word, v)
        libtwz.runtime.store64(obj.address + word, theirs)
        libtwz.wake(obj, word, 1)
    print("done", me)
    """


def test_no_wake_is_lost_between_two_processes(daemon, tmp_path, twzrun):
    make = twzrun("import libtwz; libtwz.Object.create(name='/test/sync-pingpong')")
    assert make.returncode == 0, make.stderr
    prog = _write(tmp_path, "pingpong.py", PINGPONG)
    rounds = 3000
    procs = [subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog), str(me),
                               str(rounds)], env=twz_env(daemon), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for me in (1, 0)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sorted(o.strip() for o, _ in outs) == ["done 0", "done 1"]


def test_no_wake_is_lost_when_only_the_high_half_of_a_word_changes(twzrun):
    """A 64-bit sleep must see a change of the high half alone (futex words are 32-bit): the
    partner, in another process, hands over by adding 1 << 32; a lost wake hangs the test."""
    proc = twzrun("""
        import libtwz
        obj = libtwz.Object.create()
        w = libtwz.sync.Word(obj, 0x1000)
        ROUNDS = 2000
        def wait_for(value):
            while (v := w.load()) != value:
                w.sleep(v)
        def partner():
            for i in range(ROUNDS):
                wait_for((2 * i + 1) << 32)
                w.store((2 * i + 2) << 32)
                w.wake()
            return 0
        t = libtwz.Thread(partner, view=libtwz.View.clone())
        t.start()
        for i in range(ROUNDS):
            w.store((2 * i + 1) << 32)
            w.wake()
            wait_for((2 * i + 2) << 32)
        print(t.join(), w.load() >> 32)
        """, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "4000"]


def test_thread_sync_semantics(twzrun):
    """Several ops per call, compare-all-before-sleeping, 32/64-bit words, wake counts."""
    proc = twzrun("""
        import threading, time, libtwz
        from libtwz.sync import SLEEP, WAKE
        obj = libtwz.Object.create()
        o = obj.address
        libtwz.runtime.store64(o + 0x1000, 5)
        libtwz.runtime.store64(o + 0x1008, 1 << 40)  # differs from 0 only in the high half
        t0 = time.monotonic()
        # one sleep differs: no sleep at all, though the other matches and the timeout is long
        res = libtwz.thread_sync([(SLEEP, obj, 0x1000, 5), (SLEEP, obj, 0x1008, 0)], timeout=5)
        assert res == [1, 1] and time.monotonic() - t0 < 1, res
        # a 32-bit sleep compares the low half only: it sleeps, and times out
        t0 = time.monotonic()
        assert libtwz.thread_sync([(SLEEP, obj, 0x1008, 0, 32)], timeout=0.05) == [1]
        assert time.monotonic() - t0 >= 0.05
        # bad ops get their own res; the good one still counts
        res = libtwz.thread_sync([(WAKE, obj, 0x1000, 1), (7, obj, 0x1000, 0)])
        assert res[0] == 1 and res[1] == -22, res
        # wake counts: three sleepers, wake 1, then all
        woke = []
        def sleeper(i):
            while libtwz.runtime.load64(o + 0x1010) == 0:
                libtwz.sleep(obj, 0x1010, 0)
            woke.append(i)
        ts = [threading.Thread(target=sleeper, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        libtwz.wake(obj, 0x1010, 0)   # wakes none
        time.sleep(0.2)
        assert woke == [], woke
        libtwz.thread_sync([(WAKE, obj, 0x1010, 1)])  # one: it re-sleeps, the word is still 0
        time.sleep(0.2)
        libtwz.runtime.store64(o + 0x1010, 1)
        libtwz.thread_sync([(WAKE, obj, 0x1010, 1)])
        time.sleep(0.3)
        assert len(woke) == 1, woke
        libtwz.wake(obj, 0x1010, -1)
        for t in ts:
            t.join(10)
        assert sorted(woke) == [0, 1, 2], woke
        print("ok")
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_raw_thrd_sync_from_native_code(build_native, twzrun):
    """The raw syscall gets the same semantics, served in-process by the runtime."""
    exe = build_native(r"""
        #define TWZ_RT_IMPLEMENTATION
        #include <twz/rt.h>
        #include <stdio.h>
        #include <pthread.h>
        static uint64_t w64 = 5;
        static uint32_t w32;
        static void *waker(void *p) {
            (void)p;
            struct timespec d = { 0, 50000000 };
            nanosleep(&d, NULL);
            __atomic_store_n(&w32, 1, __ATOMIC_SEQ_CST);
            struct sys_thread_sync_args a = { .addr = (uint64_t *)&w32, .arg = 1,
                                              .op = THREAD_SYNC_WAKE, .flags = THREAD_SYNC_32BIT };
            sys_thrd_sync(1, &a, NULL);
            return NULL;
        }
        int main(void) {
            struct sys_thread_sync_args a[2] = {
                { .addr = &w64, .arg = 4, .op = THREAD_SYNC_SLEEP },
                { .addr = (uint64_t *)&w32, .arg = 0, .op = THREAD_SYNC_SLEEP, .flags = THREAD_SYNC_32BIT } };
            long r = sys_thrd_sync(2, a, NULL);  /* w64 != 4: returns at once */
            printf("differ %ld %ld %ld\n", r, (long)a[0].res, (long)a[1].res);
            a[0].arg = 5;
            pthread_t t;
            pthread_create(&t, NULL, waker, NULL);
            r = sys_thrd_sync(2, a, NULL);       /* both equal: sleeps until the 32-bit wake */
            printf("woken %ld %u\n", r, w32);
            pthread_join(t, NULL);
            a[0].addr = (uint64_t *)1;           /* misaligned */
            r = sys_thrd_sync(1, a, NULL);
            printf("bad %ld %ld\n", r, (long)a[0].res);
            r = sys_thrd_sync(MAX_SLEEPS + 1, a, NULL);
            printf("count %ld\n", r);
            /* an unmapped slot of the window: the guarded copy faults */
            r = sys_thrd_sync(1, (struct sys_thread_sync_args *)((uint64_t)(WINDOW_END - 2) << 30), NULL);
            printf("efault %ld\n", r);
            return 0;
        }
        """, name="rawsync", flags=("-lpthread",))
    proc = twzrun(str(exe), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:5] == ["differ 0 1 1", "woken 0 1", "bad -22 -22",
                                           "count -22", "efault -14"], proc.stdout


def test_event_wait_over_several_words(twzrun):
    proc = twzrun("""
        import threading, time, libtwz
        a, b = libtwz.Object.create(), libtwz.Object.create()
        assert libtwz.event_wait([(a, 0x1000, 1), (b, 0x1100, 6)], timeout=0.05) == [0, 0]
        def later():
            time.sleep(0.1)
            libtwz.event_wake(b, 0x1100, 4)
        threading.Thread(target=later).start()
        t0 = time.monotonic()
        got = libtwz.event_wait([(a, 0x1000, 1), (b, 0x1100, 6)], timeout=10)
        assert got == [0, 4] and time.monotonic() - t0 < 5, got
        assert libtwz.event_clear(b, 0x1100, 6) == 4 and libtwz.event_poll(b, 0x1100, ~0) == 0
        print("ok")
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_mutex_of_a_dead_holder_is_free_after_twzd_restarts(fresh_home, tmp_path):
    """Twizzler's KCONF_RDRESET reset: the holder is SIGKILLed holding a persistent mutex; under
    the same boot it stays held, under the next it is free."""
    daemon = start_daemon(fresh_home)
    run = lambda src: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "twzlinux.cli.twzrun", str(_write(tmp_path, "p.py", src))],
        env=twz_env(fresh_home), capture_output=True, text=True, timeout=60)
    try:
        holder = run("""
            import os, signal, libtwz
            obj = libtwz.Object.create(persist=True, name="/test/mutex")
            m = libtwz.Mutex(obj, 0x1000)
            m.acquire()
            print("held", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """)
        assert holder.stdout == "held\n" and holder.returncode == 128 + signal.SIGKILL
        same_boot = run("""
            import libtwz
            m = libtwz.Mutex(libtwz.Object.open("/test/mutex", write=True), 0x1000)
            print(m.try_acquire())
            """)
        assert same_boot.stdout.strip() == "False", same_boot.stderr
    finally:
        daemon.terminate()
        daemon.wait(30)
    stop_daemon(fresh_home)
    daemon = start_daemon(fresh_home)
    try:
        next_boot = run("""
            import libtwz
            m = libtwz.Mutex(libtwz.Object.open("/test/mutex", write=True), 0x1000)
            print(m.try_acquire())
            m.release()
            with m:
                print("again")
            """)
        assert next_boot.stdout.split() == ["True", "again"], next_boot.stderr
    finally:
        daemon.terminate()
        daemon.wait(30)
