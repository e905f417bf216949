"""SIGNAL to a Twizzler thread spawned into its creator's own process: the thread tells twzd its
Linux thread (LX_THRD_START), and FAULT_SIGNAL arrives in that thread, not in another of the
process; once it has exited, SIGNAL is ENOENT (Twizzler's syscall_signal for a repr that is no
live thread)."""

import errno

import pytest

from test_threads import Kernel, Mem, _call
from twzlinux.abi import constants as c
from twzlinux.kernel.errors import SyscallError

NATIVE = r"""
    #define TWZ_RT_IMPLEMENTATION
    #include <twz/rt.h>
    #include <errno.h>
    #include <sched.h>
    #include <stdio.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    static long got[4];
    static objid_t got_repr;
    static int got_tid, worker_tid;
    static void on_signal(int fault, void *info, void *ud) {
        struct fault_signal_info *s = info;
        for(int i = 0; i < 4; i++) got[i] = s->args[i];
        got_repr = *(objid_t *)((char *)twz_thread_repr_base() + THRD_REPRID);
        __atomic_store_n(&got_tid, (int)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
    }
    static void work(void *arg) {
        worker_tid = (int)syscall(SYS_gettid);
        while(!__atomic_load_n(&got_tid, __ATOMIC_SEQ_CST))
            sched_yield();
    }
    int main(void) {
        if(twz_fault_set(FAULT_SIGNAL, on_signal, NULL) != 0) return 2;
        struct twz_thread t;
        long r = twz_thread_spawn(&t, 0, work, NULL);
        if(r < 0) { printf("spawn %ld\n", r); return 1; }
        /* ENOENT until the thread has said which Linux thread it is */
        for(int i = 0; i < 10000 && (r = sys_signal(t.tid, 7, -8, 9, 1L << 40)) == -ENOENT; i++)
            usleep(1000);
        printf("signal %ld\n", r);
        printf("joined %lu\n", (unsigned long)twz_thread_join(&t));
        printf("args %ld %ld %ld %ld\n", got[0], got[1], got[2], got[3]);
        printf("in the thread %d %d %d\n", got_tid == worker_tid, got_tid != getpid(),
               got_repr == t.tid);
        printf("after exit %d\n", sys_signal(t.tid, 0, 0, 0, 0) == -ENOENT);
        return 0;
    }
"""


def test_native_signal_to_a_thread_of_the_same_process(build_native, twzrun):
    exe = build_native(NATIVE, name="sigthread", flags=("-lpthread",))
    r = twzrun(str(exe), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["signal 0", "joined 0", "args 7 -8 9 1099511627776",
                                     "in the thread 1 1 1", "after exit 1"]


def test_python_signal_to_a_thread_of_the_same_view(twzrun):
    # No handler: the FaultSignal is raised in the thread it was sent to (libtwz/fault.py).
    r = twzrun("""
        import errno, threading, time
        import libtwz
        got = []
        def wait_for_signal():
            try:
                while True:
                    time.sleep(0.001)
            except libtwz.FaultSignal as e:
                me = libtwz.Thread.current().id
                got.append((e.info, e.tid == threading.get_native_id(), me))
            return 3
        t = libtwz.Thread(wait_for_signal)
        t.start()
        for _ in range(2000):
            try:
                libtwz.sys.sys_signal(int(t.id), 1, 2, 3, -4)
                break
            except libtwz.TwzError as e:  # ENOENT until the thread has started
                assert e.errno == errno.ENOENT, e
                time.sleep(0.005)
        print("joined", t.join(timeout=30))
        info, same_tid, me = got[0]
        print(*info, same_tid, me == t.id)
        try:
            libtwz.sys.sys_signal(int(t.id), 0, 0, 0, 0)
        except libtwz.TwzError as e:
            print("after exit", errno.errorcode[e.errno])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["joined 3", "1 2 3 -4 True True", "after exit ENOENT"]


def test_kernel_lx_thrd_start_only_for_a_thread_of_the_callers_process(tmp_path):
    k = Kernel(tmp_path, lambda p, d: None)
    try:
        proc, other, mem = k.new_process(), k.new_process(), Mem()
        proc.pid, other.pid = 100, 200
        repr_obj = k.objects.create(0, c.MIP_DFL_READ | c.MIP_DFL_WRITE)
        mem.write(0x10000, bytes(64))
        assert _call(k, proc, mem, "THRD_SPAWN", repr_obj.id, 0x10000, 0, 0) == 0
        with pytest.raises(SyscallError) as ei:
            _call(k, other, mem, "LX_THRD_START", repr_obj.id, tid=201)
        assert ei.value.errno == errno.ESRCH
        assert _call(k, proc, mem, "LX_THRD_START", repr_obj.id, tid=101) == 0
        assert k.threads.live[repr_obj.id].linux_tid == 101
        k.threads.process_exit(proc)  # the record goes with the thread
        assert repr_obj.id not in k.threads.live
        with pytest.raises(SyscallError) as ei:
            _call(k, proc, mem, "LX_THRD_START", repr_obj.id, tid=101)
        assert ei.value.errno == errno.ESRCH
    finally:
        k.close()
