"""twzd: the unix-socket server that starts Twizzler programs and serves their system calls.

One daemon per home directory (a flock'd lock file says which). Everything runs on one uvloop
thread with add_reader callbacks: requests on $TWZ_HOME/twzd.sock, each program's seccomp
listener (seccomp.Listener), its launch socket and its pidfd. uvloop's transports cannot carry
SCM_RIGHTS, hence raw sockets. Nothing a client or a program sends may stop the loop: every
callback catches, logs and answers with an error.
"""

import errno
import fcntl
import logging
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time

import uvloop

from twzlinux.daemon import protocol
from twzlinux.daemon.control import Control
from twzlinux.daemon.seccomp import Listener
from twzlinux.daemon.trace import TraceDir
from twzlinux.daemon import secops
from twzlinux.daemon.uffd import UffdPort, start_pager
from twzlinux.daemon import objops
from twzlinux.kernel.core import Kernel

log = logging.getLogger("twzd")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]  # holds twzlinux/ and libtwz/
HANGUP_GRACE = 2.0  # after the twzrun connection drops: SIGHUP, then SIGKILL this much later
SHUTDOWN_GRACE = 3.0  # after SIGTERM to twzd: SIGTERM to programs, then SIGKILL
ACCEPT_PAUSE = 1.0  # after running out of fds, before accepting again
MAX_MAP_COUNT = 262144  # one VMA per mapped object: the default 65530 caps a process's objects


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client as is."""


def exit_status(returncode: int) -> int:
    """A shell's exit status for a Popen returncode (killed by signal n => 128+n)."""
    return returncode if returncode >= 0 else 128 - returncode


class Program:
    """One spawned program: its Linux process, kernel record, stdio and the client that owns it."""

    def __init__(self, daemon, conn, proc, popen, argv, trace, stdio, launch_sock):
        self.daemon, self.conn, self.proc, self.popen = daemon, conn, proc, popen
        self.argv = argv
        # trace: False, True (to stderr) or a directory for one file per thread
        self.trace = trace
        self.trace_dir = TraceDir(trace) if isinstance(trace, str) else None
        self.stdio = stdio  # the client's fds 0,1,2, kept for the kernel console
        self.pid = popen.pid
        self.listener = None
        self.launch_sock = launch_sock
        self.pidfd = os.pidfd_open(self.pid)
        loop = daemon.loop
        loop.add_reader(self.pidfd, daemon.guard(self._on_exit))
        loop.add_reader(launch_sock.fileno(), daemon.guard(self._on_launch))

    @property
    def running(self) -> bool:
        return self.pidfd is not None

    def signal(self, signum: int) -> None:
        """Signal the program's process group (the launcher made it a session leader)."""
        if self.running:
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                pass

    def _close_launch(self) -> None:
        if self.launch_sock is not None:
            self.daemon.loop.remove_reader(self.launch_sock.fileno())
            self.launch_sock.close()
            self.launch_sock = None

    def _on_launch(self) -> None:
        try:
            _, fds, _, _ = socket.recv_fds(self.launch_sock, 16, 1)
        except OSError as e:
            fds = []
            log.warning("pid %d: reading the launch socket: %s", self.pid, e)
        self._close_launch()
        if not fds:
            log.warning("pid %d: the launcher exited before handing over its seccomp listener "
                        "(its stderr says why)", self.pid)
            return
        self.listener = Listener(self.daemon.loop, fds[0], self.daemon.kernel, self.proc,
                                 trace=self._write_trace if self.trace else None)
        for extra in fds[1:]:
            os.close(extra)

    def _on_exit(self) -> None:
        returncode = self.popen.poll()
        if returncode is None:
            return
        loop = self.daemon.loop
        loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        self._close_launch()
        if self.trace_dir is not None:
            self.trace_dir.close()
        status = exit_status(returncode)
        log.info("pid %d exited with status %d: %s", self.pid, status, self.argv)
        if self.listener is not None:
            # The listener itself lives until its POLLHUP: descendants may still hold the filter.
            self.listener.exited = True
        try:
            self.daemon.kernel.process_exit(self.proc)
        finally:
            for fd in self.stdio:
                os.close(fd)
            self.stdio = ()
            if self.conn is not None:
                self.conn.send({"exit": status})
                self.conn.program = None
            self.daemon.program_exited(self)

    def write_stderr(self, data: bytes) -> None:
        """Kernel output (console, trace) to the program's stderr, unless it would block twzd.

        `data` is at most PIPE_BUF bytes: POLLOUT on a pipe or tty means room for that much.
        """
        if not self.stdio:
            return
        fd = self.stdio[2]
        try:
            p = select.poll()
            p.register(fd, select.POLLOUT)
            if p.poll(0):
                os.write(fd, data)
            else:
                log.info("pid %d: stderr is full; kernel output not written there", self.pid)
        except OSError as e:
            log.info("pid %d: kernel output to stderr failed: %s", self.pid, e.strerror)

    def _write_trace(self, tid: int, line: str) -> None:
        if self.trace_dir is not None:
            self.trace_dir.write(tid, line)
        else:
            self.write_stderr(line.encode()[:select.PIPE_BUF])


class Connection:
    """One client connection: requests in, replies and exit statuses out."""

    def __init__(self, daemon, sock: socket.socket):
        self.daemon, self.sock = daemon, sock
        self.program = None
        self.spawned = False
        sock.setblocking(False)
        daemon.loop.add_reader(sock.fileno(), daemon.guard(self._on_readable))

    def send(self, msg: dict) -> None:
        if self.sock is None:
            return
        try:
            protocol.send(self.sock, msg)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError) as e:
            # A client that does not read its replies loses them; twzd never waits for one.
            log.info("client fd %d: reply dropped (%s)", self.sock.fileno(), e)

    def close(self) -> None:
        if self.sock is None:
            return
        self.daemon.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        self.daemon.connections.discard(self)
        prog = self.program
        if prog is not None and prog.running:
            log.info("pid %d: its twzrun went away; SIGHUP, SIGKILL in %.0f s", prog.pid,
                     HANGUP_GRACE)
            prog.conn = None
            prog.signal(signal.SIGHUP)
            self.daemon.loop.call_later(HANGUP_GRACE, prog.signal, signal.SIGKILL)

    def _on_readable(self) -> None:
        try:
            got = protocol.recv(self.sock)
        except BlockingIOError:
            return
        except protocol.ProtocolError as e:
            self.send({"error": f"bad message: {e}"})
            return
        except OSError:
            got = None
        if got is None:
            self.close()
            return
        msg, fds = got
        try:
            self.send(self.daemon.handle(self, msg, fds))
        except RequestError as e:
            self.send({"error": str(e)})
        except Exception as e:
            log.exception("request %r failed", msg.get("op"))
            self.send({"error": f"twzd failed on this request ({type(e).__name__}: {e}); "
                                f"details in {self.daemon.home / 'twzd.log'}"})
        finally:
            for fd in fds:
                # handle() takes the fds it keeps out of the list; the rest are not wanted
                os.close(fd)


class Daemon:
    def __init__(self, home: pathlib.Path):
        self.home = home
        self.loop = None
        self.kernel = None
        self.programs = {}  # pid -> Program
        self.connections = set()
        self.started = time.time()
        self.stopping = False
        self.sock = None
        self.sock_path = protocol.socket_path(home)

    def guard(self, callback):
        """Wrap an event-loop callback so that an exception is logged, never fatal."""
        def guarded():
            try:
                callback()
            except Exception:
                log.exception("internal error in %s", getattr(callback, "__qualname__", callback))
        return guarded

    # --- requests -----------------------------------------------------------------------------

    def handle(self, conn: Connection, msg: dict, fds: list) -> dict:
        op = msg.get("op")
        if op == "hello":
            return {"version": protocol.PROTOCOL_VERSION, "build": protocol.BUILD_ID,
                    "pid": os.getpid(), "programs": len(self.programs)}
        if op == "status":
            return {"pid": os.getpid(), "home": str(self.home), "build": protocol.BUILD_ID,
                    "uptime": time.time() - self.started,
                    "programs": [{"pid": p.pid, "argv": p.argv} for p in self.programs.values()]}
        if op == "stop":
            self.loop.call_soon(self.shutdown, "a stop request")
            return {"stopping": True, "programs": len(self.programs)}
        if op == "spawn":
            return self._spawn(conn, msg, fds)
        if op == "ps":
            return {"threads": self.kernel.threads.listing()}
        if op == "sec":
            return secops.handle(self.kernel, msg)
        if op == "obj":
            return objops.handle(self.kernel, msg)
        if op == "signal":
            signum = msg.get("signal")
            if not isinstance(signum, int) or signum not in signal.valid_signals():
                raise RequestError(f"signal: {signum!r} is not a signal number")
            if conn.program is not None:
                conn.program.signal(signum)
                return {"signalled": signum}
            if conn.spawned:
                return {"signalled": None}  # it raced the program's exit: nothing to signal
            raise RequestError("signal: this connection runs no program")
        raise RequestError(f"unknown request {op!r} (twzd speaks protocol "
                           f"{protocol.PROTOCOL_VERSION}: hello, status, stop, spawn, signal, ps)")

    def _spawn(self, conn: Connection, msg: dict, fds: list) -> dict:
        if self.stopping:
            raise RequestError("twzd is shutting down; run the program again in a moment")
        if conn.program is not None:
            raise RequestError("spawn: this connection already runs a program")
        program, args = msg.get("program"), msg.get("args")
        mode, cwd, env = msg.get("mode"), msg.get("cwd"), msg.get("env")
        if not isinstance(program, str) or not program:
            raise RequestError("spawn: 'program' must be a non-empty string")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise RequestError("spawn: 'args' must be a list of strings")
        if mode not in ("python", "native"):
            raise RequestError(f"spawn: 'mode' must be python or native, not {mode!r}")
        if not isinstance(cwd, str):
            raise RequestError("spawn: 'cwd' must be a string")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in env.items()):
            raise RequestError("spawn: 'env' must map strings to strings")
        # The client's interpreter, so a program sees the packages of the python that ran twzrun
        python = msg.get("python", sys.executable)
        if not (isinstance(python, str) and os.path.isabs(python) and os.access(python, os.X_OK)):
            raise RequestError(f"spawn: 'python' must be an executable's absolute path, not "
                               f"{python!r}")
        trace = msg.get("trace", False)
        if not isinstance(trace, bool) and not (isinstance(trace, str) and os.path.isabs(trace)
                                                and os.path.isdir(trace)):
            raise RequestError("spawn: 'trace' must be true, false or an existing directory's "
                               "absolute path")
        if len(fds) != 3:
            raise RequestError(f"spawn: expected 3 fds (stdin, stdout, stderr), got {len(fds)}")
        if any("\0" in s for s in [program, cwd, *args, *env, *env.values()]):
            raise RequestError("spawn: arguments, cwd and environment cannot contain NUL bytes")
        if any(not k or "=" in k for k in env):
            raise RequestError("spawn: an environment variable name is empty or contains '='")

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        popen = proc = None
        try:
            proc = self.kernel.new_process(secops.spawn_contexts(self.kernel, msg.get("sctx", [])))
            child_env = {**env, **proc.env(), "TWZ_HOME": str(self.home),
                         "TWZ_LAUNCH_FD": str(theirs.fileno()),
                         "TWZ_TRACE": "1" if trace else "",
                         "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                     env.get("PYTHONPATH")]))}
            try:
                popen = subprocess.Popen(
                    # -P: the caller's cwd must not shadow the launcher's imports (a json.py)
                    [python, "-P", "-m", "twzlinux.launch", mode, program, *args],
                    stdin=fds[0], stdout=fds[1], stderr=fds[2], cwd=cwd, env=child_env,
                    pass_fds=(theirs.fileno(),), start_new_session=True)
            except OSError as e:
                raise RequestError(f"cannot start {program}: {e.strerror}"
                                   + (f" (cwd {cwd})" if e.filename == cwd else "")) from None
            finally:
                theirs.close()
            proc.pid = popen.pid
            prog = Program(self, conn, proc, popen, [program, *args], trace, tuple(fds), ours)
        except BaseException:
            theirs.close()  # idempotent: new_process() may have failed before the Popen
            if popen is not None:
                # Unsupervised, it would run with nobody to serve its calls or reap it.
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
            ours.close()
            if proc is not None:
                self.kernel.process_exit(proc)
            raise
        fds.clear()  # the program's stdio now belongs to prog
        self.programs[prog.pid] = prog
        conn.program = prog
        conn.spawned = True
        log.info("pid %d started (%s): %s", prog.pid, mode, prog.argv)
        return {"pid": prog.pid}

    def program_exited(self, prog: Program) -> None:
        self.programs.pop(prog.pid, None)
        if self.stopping and not self.programs:
            self._finish()

    def _console(self, proc, data: bytes) -> None:
        log.info("console pid %s: %s", proc.pid, data.decode("utf-8", "replace").rstrip("\n"))
        prog = self.programs.get(proc.pid)
        if prog is not None:
            prog.write_stderr(data)

    def _watch_host(self, proc) -> None:
        """A process forked to host a thread: its exit ends the thread (kernel.process_exit)."""
        pidfd = os.pidfd_open(proc.pid)

        def gone():
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            self.kernel.process_exit(proc)
        self.loop.add_reader(pidfd, self.guard(gone))

    # --- life cycle ---------------------------------------------------------------------------

    def _on_accept(self) -> None:
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # The pending connection keeps the socket readable: without a pause this callback
            # would spin. Clients wait in the backlog meanwhile.
            log.warning("out of file descriptors (%d connections, %d programs); not accepting "
                        "for %.0f s", len(self.connections), len(self.programs), ACCEPT_PAUSE)
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
            return
        self.connections.add(Connection(self, sock))

    def _resume_accepting(self) -> None:
        if not self.stopping:
            self.loop.add_reader(self.sock.fileno(), self.guard(self._on_accept))

    def serve(self) -> None:
        """Run until stopped. The caller holds the home's lock."""
        _raise_map_count()
        self.loop = uvloop.new_event_loop()
        self.kernel = Kernel(self.home, self._console)
        self.kernel.control = Control(self)
        self.kernel.objects.lazy.port = UffdPort(self.loop, self.kernel.objects.lazy)
        start_pager(self.loop, self.kernel, self.home)
        self.kernel.on_host = self._watch_host
        if self.sock_path.exists() or self.sock_path.is_symlink():
            self.sock_path.unlink()  # left by a daemon that died; the lock proves it is gone
        self.sock = protocol.new_socket()
        old_umask = os.umask(0o177)  # only our own user may ask us to run programs
        try:
            self.sock.bind(str(self.sock_path))
        finally:
            os.umask(old_umask)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self.guard(self._on_accept))
        # SIGHUP too: a foreground twzd whose terminal closes must not orphan its programs
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.add_signal_handler(signum, self.shutdown, signal.Signals(signum).name)
        log.info("twzd %d serving %s (protocol %d, build %s)", os.getpid(), self.sock_path,
                 protocol.PROTOCOL_VERSION, protocol.BUILD_ID)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()
        log.info("twzd %d stopped", os.getpid())

    def shutdown(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping on %s; %d program(s) running", reason, len(self.programs))
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock_path.unlink(missing_ok=True)
        if not self.programs:
            self._finish()
            return
        for prog in self.programs.values():
            prog.signal(signal.SIGTERM)
        self.loop.call_later(SHUTDOWN_GRACE, self._kill_remaining)

    def _kill_remaining(self) -> None:
        for prog in list(self.programs.values()):
            log.info("pid %d ignored SIGTERM for %.0f s: SIGKILL", prog.pid, SHUTDOWN_GRACE)
            prog.signal(signal.SIGKILL)

    def _finish(self) -> None:
        for conn in list(self.connections):
            conn.close()
        try:
            self.kernel.close()
        finally:
            self.loop.stop()


def _raise_map_count() -> None:
    path = pathlib.Path("/proc/sys/vm/max_map_count")
    try:
        current = int(path.read_text())
    except (OSError, ValueError):
        return
    if current >= MAX_MAP_COUNT:
        return
    if os.geteuid() == 0:
        try:
            path.write_text(str(MAX_MAP_COUNT))
            log.info("raised vm.max_map_count from %d to %d", current, MAX_MAP_COUNT)
            return
        except OSError as e:
            log.warning("cannot raise vm.max_map_count: %s", e.strerror)
    log.warning("vm.max_map_count is %d: a process can map about that many objects at once; "
                "as root: sysctl vm.max_map_count=%d", current, MAX_MAP_COUNT)


class AlreadyRunning(Exception):
    pass


def lock_home(home: pathlib.Path) -> int:
    """Take the home's daemon lock; the fd holds it for the daemon's life."""
    fd = os.open(home / "twzd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunning(f"already running for {home} (pid {other or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def setup_logging(home: pathlib.Path, also_stderr: bool) -> None:
    log_path = home / "twzd.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s "
                                           "%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if also_stderr and not _same_file(2, log_path):
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("twzd: %(message)s"))
        root.addHandler(err)


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        a, b = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def run(home: pathlib.Path) -> int:
    """Serve `home` in the foreground; the exit status for twzd."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = lock_home(home)
    except AlreadyRunning as e:
        print(f"twzd: {e}", file=sys.stderr)
        return protocol.EXIT_ALREADY_RUNNING
    except OSError as e:
        print(f"twzd: cannot use {home} as the home: {e.strerror} (choose a writable directory "
              "with --home or TWZ_HOME)", file=sys.stderr)
        return 1
    setup_logging(home, also_stderr=True)
    path = protocol.socket_path(home)
    if len(os.fsencode(path)) >= 108:
        log.error("socket path %s is longer than a unix socket allows (107 bytes); "
                  "use a shorter --home", path)
        return 1
    try:
        Daemon(home).serve()
    except Exception:
        log.exception("twzd failed")
        return 1
    finally:
        os.close(lock)
    return 0

