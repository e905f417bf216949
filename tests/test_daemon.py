"""twzd's life cycle and robustness: start/status/stop, shutdown, hostile clients and programs."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from conftest import daemon_pid, start_daemon, twz, twz_env, wait_for
from twzlinux.daemon import client, protocol
from twzlinux.daemon.seccomp import _alive, _ThreadGroups


def twzrun_popen(home: Path, *argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", *map(str, argv)],
                            env=twz_env(home), text=True, **kw)


def test_start_status_stop(fresh_home):
    status = twz(fresh_home, "daemon", "status")
    assert status.returncode == 3 and "not running" in status.stdout
    started = twz(fresh_home, "daemon", "start")
    assert started.returncode == 0, started.stderr
    pid = daemon_pid(fresh_home)
    assert f"pid {pid}" in started.stdout
    status = twz(fresh_home, "daemon", "status")
    assert status.returncode == 0
    assert f"pid {pid}" in status.stdout and "0 program(s)" in status.stdout
    stopped = twz(fresh_home, "daemon", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert daemon_pid(fresh_home) is None
    assert not (fresh_home / "twzd.sock").exists()
    assert twz(fresh_home, "daemon", "status").returncode == 3


def test_one_daemon_per_home(daemon):
    second = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzd", "--home", str(daemon),
                             "--foreground"], env=twz_env(daemon), capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == protocol.EXIT_ALREADY_RUNNING
    assert f"already running for {daemon}" in second.stderr
    assert twz(daemon, "daemon", "status").returncode == 0


def test_sigterm_stops_programs_and_cleans_up(fresh_home):
    twzd = start_daemon(fresh_home)
    polite = twzrun_popen(fresh_home, "/bin/sh", "-c", "echo ready; exec sleep 60",
                          stdout=subprocess.PIPE)
    # An ignored signal stays ignored across exec: this one needs the SIGKILL after the grace.
    stubborn = twzrun_popen(fresh_home, "/bin/sh", "-c", "trap '' TERM; echo ready; sleep 60",
                            stdout=subprocess.PIPE)
    assert polite.stdout.readline() == stubborn.stdout.readline() == "ready\n"
    twzd.send_signal(signal.SIGTERM)
    assert twzd.wait(20) == 0
    assert polite.wait(20) == 128 + signal.SIGTERM
    assert stubborn.wait(20) == 128 + signal.SIGKILL
    assert not (fresh_home / "twzd.sock").exists()
    log = (fresh_home / "twzd.log").read_text()
    assert "stopping on SIGTERM; 2 program(s) running" in log
    assert "ignored SIGTERM" in log
    assert f"twzd {twzd.pid} stopped" in log
    for run in (polite, stubborn):
        run.stdout.close()


def test_programs_killed_mid_syscall_leave_twzd_serving(daemon, build_native):
    exe = build_native("""
        #include <pthread.h>
        #include <stdio.h>
        #include <unistd.h>
        static void *spin(void *arg) { for (;;) syscall(0x1000, 0L); return arg; }
        int main(void) {
            pthread_t t[3];
            for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, spin, NULL);
            printf("%d\\n", getpid());
            fflush(stdout);
            spin(NULL);
        }
    """, flags=["-pthread"])
    for _ in range(5):
        run = twzrun_popen(daemon, exe, stdout=subprocess.PIPE)
        pid = int(run.stdout.readline())
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        assert run.wait(20) == 128 + signal.SIGKILL
        run.stdout.close()
    after = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "/bin/echo", "alive"],
                           env=twz_env(daemon), capture_output=True, text=True, timeout=30)
    assert (after.returncode, after.stdout) == (0, "alive\n"), after.stderr


def _raw(home: Path):
    sock = protocol.new_socket()
    sock.connect(str(protocol.socket_path(home)))
    sock.settimeout(10)
    return sock


def test_malformed_requests_get_errors_not_a_dead_daemon(daemon):
    sock = _raw(daemon)
    sock.send(b"\xff not json")
    assert "not JSON" in protocol.recv(sock)[0]["error"]
    sock.send(b"[1, 2]")
    assert "not a JSON object" in protocol.recv(sock)[0]["error"]
    bad = [
        ({"op": "frobnicate"}, [], "unknown request"),
        ({"op": "spawn"}, [], "'program'"),
        ({"op": "spawn", "program": "/bin/true", "args": [], "mode": "python", "cwd": "/",
          "env": {}}, [], "expected 3 fds"),
        ({"op": "spawn", "program": "/bin/true", "args": [1], "mode": "native", "cwd": "/",
          "env": {}}, [0, 1, 2], "'args'"),
        ({"op": "spawn", "program": "/bin/true", "args": [], "mode": "native", "cwd": "/nope",
          "env": {}}, [0, 1, 2], "cannot start"),
        ({"op": "spawn", "program": "/bin/true", "args": ["a\0b"], "mode": "native", "cwd": "/",
          "env": {}}, [0, 1, 2], "NUL"),
        ({"op": "spawn", "program": "/bin/true", "args": [], "mode": "native", "cwd": "/",
          "env": {}, "python": "python3"}, [0, 1, 2], "absolute path"),
        ({"op": "spawn", "program": "/bin/true", "args": [], "mode": "native", "cwd": "/",
          "env": {"A=B": "c"}}, [0, 1, 2], "contains '='"),
        ({"op": "signal", "signal": 2}, [], "runs no program"),
        ({"op": "signal", "signal": "KILL"}, [], "not a signal number"),
    ]
    for msg, fds, error in bad:
        protocol.send(sock, msg, fds)
        reply, _ = protocol.recv(sock)
        assert error in reply.get("error", ""), (msg, reply)
    # a client that vanishes mid-message, and one that never says anything
    half = _raw(daemon)
    half.close()
    status = twz(daemon, "daemon", "status")
    assert status.returncode == 0 and "0 program(s)" in status.stdout
    sock.close()


def _stale_daemon(home: Path) -> subprocess.Popen:
    # The same daemon with a different BUILD_ID: what a daemon started before an edit looks like.
    code = textwrap.dedent(f"""
        import pathlib, sys
        from twzlinux.daemon import protocol, server
        protocol.BUILD_ID = "stale-build"
        sys.exit(server.run(pathlib.Path({str(home)!r})))
    """)
    return start_daemon(home, argv=[sys.executable, "-c", code])


def test_idle_stale_daemon_is_replaced(fresh_home):
    stale = _stale_daemon(fresh_home)
    run = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--home", str(fresh_home),
                          "/bin/echo", "fresh"], env=twz_env(fresh_home), capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "fresh\n"), run.stderr
    assert run.stderr.count("\n") == 1 and "restarting it" in run.stderr
    assert stale.wait(10) == 0
    conn = client.try_connect(fresh_home)
    # build_id(), not BUILD_ID: the sources may have changed since this test process started
    assert conn.hello["build"] == protocol.build_id() and conn.hello["pid"] != stale.pid
    conn.close()


def test_busy_stale_daemon_is_left_running(fresh_home):
    stale = _stale_daemon(fresh_home)
    owner = client.start(fresh_home)  # no build check: speak to the stale daemon directly
    with open(os.devnull, "r+") as null:
        owner.request({"op": "spawn", "program": "/bin/sleep", "args": ["60"], "mode": "native",
                       "cwd": "/", "env": {}}, [null.fileno()] * 3)
    run = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--home", str(fresh_home),
                          "/bin/true"], env=twz_env(fresh_home), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 125
    assert "1 program(s) running" in run.stderr
    assert f"twz --home {fresh_home} daemon stop" in run.stderr
    assert stale.poll() is None
    owner.close()  # hangs up the sleep; the fixture stops the stale daemon


def test_cflags_names_the_include_directory():
    out = subprocess.run([sys.executable, "-m", "twzlinux.cli.twz", "cflags"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    flag = out.stdout.strip()
    assert flag.startswith("-I") and (Path(flag[2:]) / "twz" / "sys.h").is_file()


def test_socket_is_private(daemon):
    mode = (daemon / "twzd.sock").stat().st_mode & 0o777
    assert mode == 0o600


def test_console_never_blocks_on_a_full_stderr(daemon, tmp_path):
    prog = tmp_path / "chatty.py"
    prog.write_text(textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        line = ctypes.create_string_buffer(b"x" * 999 + b"\\n")
        results = {libc.syscall(ctypes.c_long(0x1002), ctypes.c_long(ctypes.addressof(line)),
                                ctypes.c_long(1000)) for _ in range(300)}
        print(results)
    """))
    # Nobody reads stderr: 300 KB of console output overflows the pipe. twzd must drop what
    # does not fit, not block (which would freeze every program it serves).
    run = twzrun_popen(daemon, prog, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.wait(30) == 0
    out, err = run.communicate()
    assert out == "{0}\n"
    assert 0 < len(err) < 300 * 1000 and set(err) == {"x", "\n"}
    assert "stderr is full" in (daemon / "twzd.log").read_text()


def test_twzd_cannot_be_made_to_write_read_only_memory(twzrun):
    # OCREATE writes the new ID through `retid`. Pointing it at a read-only page must fail with
    # EFAULT, as the same store by the program would: twzd writes with the caller's permissions.
    proc = twzrun("""
        import ctypes, mmap
        from twzlinux.abi import constants as c
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.syscall.restype = ctypes.c_long
        page = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        args = [0, 0, 0, 0, c.MIP_DFL_READ | c.MIP_DFL_WRITE, page]
        r = libc.syscall(ctypes.c_long(0x1008), *map(ctypes.c_long, args))
        print(r, ctypes.get_errno(), ctypes.string_at(page, 16) == bytes(16))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["-1", str(errno.EFAULT), "True"]


def test_twzrun_during_a_shutdown_gets_a_new_daemon(fresh_home):
    old = start_daemon(fresh_home)
    stubborn = twzrun_popen(fresh_home, "/bin/sh", "-c", "trap '' TERM; echo ready; sleep 60",
                            stdout=subprocess.PIPE)
    assert stubborn.stdout.readline() == "ready\n"
    old.send_signal(signal.SIGTERM)  # now stopping for the 3 s grace, holding the home's lock
    wait_for(lambda: not (fresh_home / "twzd.sock").exists(), 10, "the socket to go")
    run = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--home", str(fresh_home),
                          "/bin/echo", "next"], env=twz_env(fresh_home), capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "next\n"), run.stderr
    assert old.wait(10) == 0 and stubborn.wait(10) == 128 + signal.SIGKILL
    assert daemon_pid(fresh_home) not in (None, old.pid)
    stubborn.stdout.close()


def test_finished_programs_leave_no_fds_in_twzd(daemon, twzrun):
    fds = Path(f"/proc/{daemon_pid(daemon)}/fd")
    before = len(list(fds.iterdir()))
    for _ in range(5):
        assert twzrun("/bin/true").returncode == 0
        assert twzrun("import ctypes; ctypes.CDLL(None).syscall(0x1000, 0)").returncode == 0
    # listeners close on their POLLHUP, which may come a moment after the exit status
    wait_for(lambda: len(list(fds.iterdir())) <= before, 10, "twzd's fd count to settle")


def test_sigint_and_sighup_also_stop_twzd_cleanly(fresh_home):
    for signum in (signal.SIGINT, signal.SIGHUP):
        twzd = start_daemon(fresh_home)
        twzd.send_signal(signum)
        assert twzd.wait(20) == 0
        assert not (fresh_home / "twzd.sock").exists()
        assert f"stopping on {signal.Signals(signum).name}" in (fresh_home / "twzd.log").read_text()


def test_a_wedged_daemon_does_not_hang_clients(fresh_home):
    twzd = start_daemon(fresh_home)
    twzd.send_signal(signal.SIGSTOP)
    try:
        run = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--home",
                              str(fresh_home), "/bin/true"], env=twz_env(fresh_home),
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 125
        assert "does not answer" in run.stderr and "daemon stop" in run.stderr
    finally:
        twzd.send_signal(signal.SIGCONT)


def test_a_callers_thread_group_is_believed_only_while_its_thread_lives():
    """twzd keeps each trapping thread's Tgid by tid; a tid is reused once its thread exits,
    maybe by another process's thread, so what a dead thread left is read again."""
    groups, stop, hold = _ThreadGroups(), threading.Event(), threading.Event()
    live = threading.Thread(target=stop.wait)
    dead = threading.Thread(target=hold.wait)
    live.start()
    dead.start()
    try:
        assert groups.tgid(live.native_id) == os.getpid()
        assert groups.tgid(live.native_id) == os.getpid()
        pidfd = os.pidfd_open(dead.native_id, os.O_EXCL)  # PIDFD_THREAD
        hold.set()
        dead.join()
        wait_for(lambda: not _alive(pidfd), what="the thread to be gone")
        # as if live's tid had been learnt from a thread of another group that has exited
        groups._forget(live.native_id)
        groups._known[live.native_id] = (pidfd, 1)
        assert groups.tgid(live.native_id) == os.getpid()
    finally:
        stop.set()
        live.join()
        groups.close()
    assert groups._known == {}
