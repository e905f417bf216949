"""`twzrun --trace` and `--trace-dir`: every Twizzler call and refused Linux call, decoded, per
thread."""

import errno
import re
import subprocess
import sys
import textwrap

from conftest import twz_env

THREADS = """
    import ctypes, threading
    import libtwz
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def work(n):
        libc.syscall(ctypes.c_long(0x1000), ctypes.c_long(n))          # NULL(arg=n)
        libc.syscall(ctypes.c_long(101), ctypes.c_long(16))            # ptrace: refused
    ts = [threading.Thread(target=work, args=(n,)) for n in (11, 22)]
    for t in ts: t.start()
    for t in ts: t.join()
    oid = ctypes.create_string_buffer(16)
    libc.syscall(ctypes.c_long(0x1008), 0, 0, 0, 0, ctypes.c_long(0x4 | 0x8 | 0x1000),
                 ctypes.c_long(ctypes.addressof(oid)))                 # OCREATE
    libc.syscall(ctypes.c_long(0x1009), ctypes.c_long(5), ctypes.c_long(7), 0)  # ODELETE: ENOENT
    print("tid", threading.get_native_id())
"""


def _run(daemon, tmp_path, *opts):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(THREADS))
    return subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", *opts, str(prog)],
                          env=twz_env(daemon), capture_output=True, text=True, timeout=60)


def test_trace_decodes_ids_flags_errnos_and_refusals_per_thread(daemon, tmp_path):
    run = _run(daemon, tmp_path, "--trace")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    nulls = {int(m.group(2)): int(m.group(1)) for m in
             (re.match(r"\[twz (\d+)\] NULL\(arg=(\d+)\) = 0$", ln) for ln in lines) if m}
    assert set(nulls) == {11, 22}
    assert nulls[11] != nulls[22]  # each line names the calling thread
    refused = [ln for ln in lines if "refused linux ptrace(0x10" in ln]
    assert {int(ln.split()[1].rstrip("]")) for ln in refused} == set(nulls.values())
    assert any(re.search(r"OCREATE\(kuid=0{16}:0{16}, src=0{16}:0{16}, "
                         r"flags=DFL_READ\|DFL_WRITE\|ZERONONCE, retid=0x[0-9a-f]+\) = 0$", ln)
               for ln in lines), lines
    assert any(ln.endswith("ODELETE(id=0000000000000007:0000000000000005, flags=0x0) = -1 ENOENT")
               for ln in lines), lines


def test_trace_dir_writes_one_file_per_thread(daemon, tmp_path):
    out = tmp_path / "traces"
    run = _run(daemon, tmp_path, "--trace-dir", str(out))
    assert run.returncode == 0, run.stderr
    assert "[twz " not in run.stderr
    files = {int(p.name.split(".")[1]): p.read_text() for p in out.glob("trace.*")}
    main_tid = int(run.stdout.split()[-1])
    assert len(files) >= 3 and main_tid in files  # the main thread and the two workers
    for tid, text in files.items():
        assert all(ln.startswith(f"[twz {tid}] ") for ln in text.splitlines()), (tid, text)
    assert "OCREATE(" in files[main_tid]
    workers = [text for tid, text in files.items() if "NULL(arg=" in text]
    assert len(workers) == 2 and all("refused linux ptrace" in text for text in workers)


SERVED_IN_PROCESS = r"""
    #define TWZ_RT_IMPLEMENTATION
    #include <twz/rt.h>
    #include <stdio.h>
    #include <unistd.h>
    static uint64_t word = 7;
    static void quit(void *arg) { twz_thread_exit(5); }
    int main(void) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        struct sys_thread_sync_args sleep = { .addr = &word, .arg = 7, .op = THREAD_SYNC_SLEEP };
        struct sys_thread_sync_args wake = { .addr = &word, .arg = 1, .op = THREAD_SYNC_WAKE };
        long s = sys_thrd_sync(1, &sleep, &ts), w = sys_thrd_sync(1, &wake, NULL);
        long c = sys_thrd_ctl(THRD_CTL_SET_IOPL, 3);
        struct twz_thread t;
        if(twz_thread_spawn(&t, 0, quit, NULL) < 0) return 1;
        printf("%ld %ld %ld %lu %d %ld\n", s, w, c, (unsigned long)twz_thread_join(&t),
               twz_thread_traced, (long)gettid());
        return 0;
    }
"""


def test_trace_shows_thrd_sync_and_thrd_ctl_served_in_process(daemon, build_native):
    exe = str(build_native(SERVED_IN_PROCESS, name="served", flags=("-lpthread",)))

    def run(*opts):
        done = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", *opts, exe],
                              env=twz_env(daemon), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        *results, traced, tid = done.stdout.split()
        assert results == [str(-errno.ETIMEDOUT), "0", str(-errno.EINVAL), "5"]
        return int(traced), int(tid), done.stderr.splitlines()

    traced, main_tid, lines = run("--trace")
    assert traced == 1
    ours = [ln for ln in lines if "THRD_SYNC(" in ln or "THRD_CTL(" in ln]
    sync = rf"\[twz {main_tid}\] THRD_SYNC\(count=1, args=0x[0-9a-f]+, timeout="
    assert re.fullmatch(sync + r"0x[0-9a-f]+\) = -1 ETIMEDOUT", ours[0]), ours
    assert re.fullmatch(sync + r"0x0\) = 0", ours[1]), ours
    assert ours[2] == f"[twz {main_tid}] THRD_CTL(op=SET_IOPL, arg=3) = -1 EINVAL", ours
    exit_line = re.fullmatch(r"\[twz (\d+)\] THRD_CTL\(op=EXIT, arg=\d+\) = 0", ours[3])
    assert exit_line and int(exit_line.group(1)) != main_tid, ours  # made by the exiting thread
    quitter = f"[twz {exit_line.group(1)}] LX_THRD_EXIT("
    ended = [i for i, ln in enumerate(lines) if ln.startswith(quitter)]
    assert ended and lines.index(ours[3]) < ended[0], lines  # reported before the thread ends
    assert len(ours) == 4 and not any("LX_TRACE" in ln for ln in lines), lines

    # Untraced, the runtime knows it is not traced (so makes no LX_TRACE call) and twzd is silent.
    traced, _, lines = run()
    assert traced == 0 and not any("[twz " in ln for ln in lines), lines
