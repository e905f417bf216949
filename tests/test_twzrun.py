"""twzrun: starting programs under twzd, their stdio/argv/cwd/env, exit statuses and signals."""

import errno
import json
import os
import signal
import subprocess
import sys

from conftest import daemon_pid, twz_env, wait_for

RAW_SYSCALLS = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
msg = b"hello-console\\n"
buf = ctypes.create_string_buffer(msg)
print(json.dumps({
    "null": call(0x1000, 0),
    "unknown": call(0x1fff),
    "above_range": call(0x2000),
    "debug": call(0x1002, ctypes.addressof(buf), len(msg)),
    "debug_efault": call(0x1002, 8, 10),
    "linux_ok": os.getpid() > 0 and os.getcwd() != "",
}))
"""


def test_python_program_gets_stdio_argv_cwd_and_env(twzrun, tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    proc = twzrun("""
        import json, os, sys
        data = sys.stdin.read()
        print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "stdin": data,
                          "env": os.environ.get("TWZTEST_VALUE"), "name": __name__,
                          "launch_fd": "TWZ_LAUNCH_FD" in os.environ,
                          "path0": sys.path[0] == os.path.dirname(os.path.abspath(sys.argv[0]))}))
        print("to stderr", file=sys.stderr)
    """, "a b", "-c", "ü", input="line one\nline two\n", env={"TWZTEST_VALUE": "v=1"},
        cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"argv": ["a b", "-c", "ü"], "cwd": str(workdir),
                   "stdin": "line one\nline two\n", "env": "v=1", "name": "__main__",
                   "launch_fd": False, "path0": True}
    assert proc.stderr == "to stderr\n"


def test_exit_status_is_the_programs(twzrun):
    assert twzrun("raise SystemExit(3)").returncode == 3
    assert twzrun("import os; os.kill(os.getpid(), 9)").returncode == 128 + signal.SIGKILL
    failed = twzrun("raise ValueError('boom')")
    assert failed.returncode == 1
    assert "ValueError: boom" in failed.stderr
    assert "launch.py" not in failed.stderr and "runpy" not in failed.stderr


def test_raw_twizzler_syscalls_from_python(twzrun):
    proc = twzrun(RAW_SYSCALLS)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["null"] == [0, 0]
    assert out["unknown"] == [-1, errno.ENOSYS]
    assert out["above_range"] == [-1, errno.ENOSYS]  # not ours: Linux itself refuses it
    assert out["debug"][0] == 0
    assert out["debug_efault"] == [-1, errno.EFAULT]
    assert out["linux_ok"] is True
    assert "hello-console" in proc.stderr  # the kernel console is the program's stderr


def test_native_program_runs_and_traps(twzrun, build_native):
    exe = build_native("""
        #include <errno.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            long null = syscall(0x1000, 0L);
            errno = 0;
            long unknown = syscall(0x1fff, 0L);
            printf("%ld %ld %d %s\\n", null, unknown, errno, argv[1]);
            return atoi(argv[2]);
        }
    """)
    proc = twzrun(exe, "word", "5")
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == f"0 -1 {errno.ENOSYS} word\n"


def test_sigint_to_twzrun_reaches_the_program(daemon, tmp_path):
    prog = tmp_path / "sleeper.py"
    prog.write_text("import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog)],
                           env=twz_env(daemon), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    assert run.stdout.readline() == "ready\n"
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=20)
    assert run.returncode == 128 + signal.SIGINT
    assert "KeyboardInterrupt" in err


def test_sigterm_forwarded_to_a_handler(daemon, tmp_path):
    prog = tmp_path / "handler.py"
    prog.write_text("import signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
                    "print('ready', flush=True)\ntime.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog)],
                           env=twz_env(daemon), stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline() == "ready\n"
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=20)
    assert run.returncode == 42


def test_missing_and_unexecutable_programs(twzrun, daemon, tmp_path):
    missing = twzrun(tmp_path / "nope")
    assert missing.returncode == 127
    assert "no such file" in missing.stderr
    not_found = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "no-such-cmd-xyz"],
                               env=twz_env(daemon), capture_output=True, text=True)
    assert not_found.returncode == 127
    assert "command not found" in not_found.stderr
    plain = tmp_path / "data.bin"
    plain.write_bytes(b"\x7fELF not really")
    denied = twzrun(plain)
    assert denied.returncode == 126
    assert "not executable" in denied.stderr
    assert twzrun(tmp_path).returncode == 126  # a directory
    plain.chmod(0o755)  # executable now, but no format the kernel can run
    garbage = twzrun(plain)
    assert garbage.returncode == 126
    assert "cannot execute" in garbage.stderr and "Exec format error" in garbage.stderr


def test_shebang_python_without_suffix(twzrun, tmp_path):
    prog = tmp_path / "tool"
    prog.write_text("#!/usr/bin/env python3\nimport sys\nprint('shebang', sys.argv[1])\n")
    proc = twzrun(prog, "x")
    assert (proc.returncode, proc.stdout) == (0, "shebang x\n"), proc.stderr


def test_twzrun_autostarts_a_daemon_once(fresh_home, tmp_path):
    prog = tmp_path / "hello.py"
    prog.write_text("print('hello')\n")
    cmd = [sys.executable, "-m", "twzlinux.cli.twzrun", "--home", str(fresh_home), str(prog)]
    # Several at once: the home's lock must leave exactly one daemon serving all of them.
    runs = [subprocess.Popen(cmd, env=twz_env(fresh_home), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert (run.returncode, out) == (0, "hello\n"), err
    pid = daemon_pid(fresh_home)
    assert pid is not None
    assert (fresh_home / "twzd.sock").exists()
    log = (fresh_home / "twzd.log").read_text()
    assert log.count(" serving ") == 1, log


def test_client_killed_mid_run_hangs_up_the_program(daemon, tmp_path):
    from twzlinux.daemon import client

    marker = tmp_path / "hup"
    prog = tmp_path / "stubborn.py"
    # Ignoring SIGHUP: twzd must follow up with SIGKILL.
    prog.write_text("import os, signal, sys, time\n"
                    f"signal.signal(signal.SIGHUP, lambda *a: open({str(marker)!r}, 'w').close())\n"
                    "print(os.getpid(), flush=True)\ntime.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog)],
                           env=twz_env(daemon), stdout=subprocess.PIPE, text=True)
    pid = int(run.stdout.readline())
    run.kill()
    run.wait()
    wait_for(marker.exists, 10, "the program to get SIGHUP")
    conn = client.try_connect(daemon)

    def gone():
        return all(p["pid"] != pid for p in conn.request({"op": "status"})["programs"])

    wait_for(gone, 10, "the program to be killed")  # twzd answered status throughout
    conn.close()


def test_other_syscall_abi_kills_the_process(twzrun, build_native):
    # int $0x80 enters with the i386 numbering, where our range would mean other calls: the
    # filter kills the process rather than let it reach Linux or twzd under another meaning.
    exe = build_native("""
        #include <stdio.h>
        int main(void) {
            long ret;
            puts("before");
            fflush(stdout);
            __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
            printf("survived %ld\\n", ret);
            return 0;
        }
    """)
    proc = twzrun(exe)
    assert proc.returncode == 128 + signal.SIGSYS
    assert proc.stdout == "before\n"


def test_trace_decodes_each_call_on_stderr(daemon, tmp_path):
    prog = tmp_path / "traced.py"
    prog.write_text(RAW_SYSCALLS)
    run = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--trace", str(prog)],
                         env=twz_env(daemon), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any(line.endswith("] NULL(arg=0) = 0") for line in lines), lines
    assert any(line.endswith("] syscall(0x1fff) = -1 ENOSYS") for line in lines), lines
    assert any("] DEBUG_PRINT(str=0x8, len=10) = -1 EFAULT" in line for line in lines), lines
    # the console line comes before the trace of the call that printed it
    assert lines.index("hello-console") < next(
        i for i, line in enumerate(lines) if "DEBUG_PRINT" in line and line.endswith("= 0"))


def test_calls_from_threads_read_the_calling_threads_memory(twzrun):
    # A notification names the calling thread; twzd must read that thread's /proc/TID/mem.
    proc = twzrun("""
        import ctypes, threading
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        results = []
        def worker(n):
            for i in range(50):
                msg = ctypes.create_string_buffer(f"thread {n} line {i}\\n".encode())
                results.append(libc.syscall(ctypes.c_long(0x1002),
                                            ctypes.c_long(ctypes.addressof(msg)),
                                            ctypes.c_long(len(msg.value))))
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(results), set(results))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "200 {0}\n"
    assert sorted(proc.stderr.splitlines()) == sorted(
        f"thread {n} line {i}" for n in range(4) for i in range(50))
