"""The Linux-syscall policy (docs/syscall-policy.md): refused calls fail with EPERM, are traced
under --trace, and everything CPython and ordinary native code need still works."""

import struct
import subprocess
import sys
import textwrap

from conftest import twz_env
from twzlinux.daemon import filter as seccomp_filter
from twzlinux.daemon import policy

REFUSED_CALLS = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        if r == 0 and nr == 56:
            os._exit(0)  # a clone the filter let through: the child must not run the test
        return r, ctypes.get_errno()
    PTRACE_ATTACH, CLONE_NEWUSER, SIGCHLD = 16, 0x10000000, 17
    print("ptrace", call(101, PTRACE_ATTACH, os.getppid(), 0, 0))
    print("process_vm_readv", call(310, os.getppid(), 0, 0, 0, 0, 0))
    print("mount", call(165, 0, 0, 0, 0, 0))
    print("unshare", call(272, CLONE_NEWUSER))
    print("clone", call(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0))
    print("bpf", call(321, 0, 0, 0))
    print("clone3", call(435, 0, 0))
    print("done")
"""
REFUSED_NAMES = ["ptrace", "process_vm_readv", "mount", "unshare", "clone", "bpf"]
EPERM = "(-1, 1)"


def _run(daemon, tmp_path, program, *opts):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(program))
    return subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", *opts, str(prog)],
                          env=twz_env(daemon), capture_output=True, text=True, timeout=60)


def test_refused_calls_fail_with_eperm_and_say_nothing_without_trace(daemon, tmp_path):
    run = _run(daemon, tmp_path, REFUSED_CALLS)
    assert run.returncode == 0, run.stderr
    got = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line != "done")
    for name in REFUSED_NAMES:
        assert got[name] == EPERM, (name, got)
    assert got["clone3"] == "(-1, 38)"  # ENOSYS, so that libc falls back to clone
    assert run.stdout.endswith("done\n")
    assert "refused" not in run.stderr


def test_refused_calls_are_one_line_each_under_trace(daemon, tmp_path):
    run = _run(daemon, tmp_path, REFUSED_CALLS, "--trace")
    assert run.returncode == 0, run.stderr
    refused = [line for line in run.stderr.splitlines() if "refused linux" in line]
    names = [line.split("refused linux ", 1)[1].split("(", 1)[0] for line in refused]
    assert names == REFUSED_NAMES, refused
    assert all(line.endswith("see docs/syscall-policy.md)") and "= -1 EPERM" in line
               for line in refused), refused
    assert "ptrace(0x10," in refused[0]  # the arguments as the program passed them
    assert run.stdout.count(EPERM) == len(REFUSED_NAMES)  # the same answers as untraced


def test_what_cpython_needs_still_works(twzrun):
    proc = twzrun("""
        import asyncio, ctypes, json, mmap, multiprocessing, os, subprocess, sys
        import tempfile, threading
        results = []
        ts = [threading.Thread(target=results.append, args=(i,)) for i in range(8)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert sorted(results) == list(range(8))
        assert subprocess.run(["/bin/sh", "-c", "exit 3"]).returncode == 3
        assert subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True,
                              text=True).stdout == "42\\n"
        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        async def echo():
            srv = await asyncio.start_server(lambda r, w: w.write(b"pong"), "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            data = await r.read(4)
            w.close(); srv.close()
            return data
        assert asyncio.run(echo()) == b"pong"
        m = mmap.mmap(-1, 4096)
        m[:5] = b"hello"
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "f.json"), "w") as f: json.dump({"a": 1}, f)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        uffd = libc.syscall(ctypes.c_long(323), ctypes.c_long(os.O_CLOEXEC | os.O_NONBLOCK))
        assert uffd >= 0, ctypes.get_errno()  # issue 5 needs programs to make userfaultfds
        os.close(uffd)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


def test_native_threads_and_fork_work(twzrun, build_native):
    exe = build_native(r"""
        #include <pthread.h>
        #include <stdio.h>
        #include <sys/wait.h>
        #include <unistd.h>
        static void *work(void *arg) { return (char *)arg + 1; }
        int main(void) {
            pthread_t t[4];
            long sum = 0;
            for(long i = 0; i < 4; i++) pthread_create(&t[i], NULL, work, (void *)i);
            for(int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); sum += (long)r; }
            pid_t pid = fork();
            if(pid == 0) _exit(7);
            int status;
            waitpid(pid, &status, 0);
            printf("%ld %d\n", sum, WEXITSTATUS(status));
            return 0;
        }
    """, flags=("-pthread",))
    proc = twzrun(exe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "10 7\n"


def test_filter_jumps_stay_inside_the_program():
    for trace in (False, True):
        code = seccomp_filter.program(trace)
        n = len(code) // 8
        for i in range(n):
            op, jt, jf, _k = struct.unpack_from("=HBBI", code, 8 * i)
            if op & 0x07 == 0x05:  # BPF_JMP
                assert i + 1 + max(jt, jf) < n
    assert policy.refused_name(56, [0x11]) is None  # a plain fork-like clone is allowed
    assert policy.refused_name(56, [0x10000011]) == "clone"
