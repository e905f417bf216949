"""The client side of twzd's socket, used by twzrun and twz: find or start the daemon, handshake.

Starting is race-safe without a lock of our own: any number of clients may start a daemon at
once; the home's flock lets exactly one of them serve, the others exit at once, and every client
simply connects to whichever daemon answers.
"""

import fcntl
import os
import pathlib
import socket
import subprocess
import sys
import time

from twzlinux.daemon import protocol

START_TIMEOUT = 10.0
HELLO_TIMEOUT = 5.0
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class ClientError(Exception):
    """Something the user must act on; the message says what to do."""


def default_home() -> pathlib.Path:
    env = os.environ.get("TWZ_HOME")
    if env:
        return pathlib.Path(env).resolve()
    return pathlib.Path.home() / ".local" / "share" / "twzlinux"


def home_from(arg) -> pathlib.Path:
    return pathlib.Path(arg).resolve() if arg else default_home()


class Connection:
    """A handshaken connection to a home's twzd. `hello` holds the daemon's handshake reply."""

    def __init__(self, sock: socket.socket, home: pathlib.Path, hello: dict):
        self.sock, self.home, self.hello = sock, home, hello

    def send(self, msg: dict, fds=()) -> None:
        protocol.send(self.sock, msg, fds)

    def recv(self) -> dict:
        """The next message; ClientError if the daemon went away."""
        try:
            got = protocol.recv(self.sock)
        except (ConnectionResetError, protocol.ProtocolError) as e:
            raise ClientError(f"lost the connection to twzd ({e}); see {self.home}/twzd.log")
        if got is None:
            raise ClientError(f"twzd closed the connection; see {self.home}/twzd.log")
        msg, fds = got
        for fd in fds:
            os.close(fd)  # twzd never sends fds to clients
        return msg

    def request(self, msg: dict, fds=()) -> dict:
        self.send(msg, fds)
        reply = self.recv()
        if "error" in reply:
            raise ClientError(f"twzd: {reply['error']}")
        return reply

    def close(self) -> None:
        self.sock.close()


def try_connect(home: pathlib.Path):
    """A handshaken connection to `home`'s daemon, or None if none is listening."""
    path = protocol.socket_path(home)
    sock = protocol.new_socket()
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as e:
        sock.close()
        raise ClientError(f"cannot connect to {path}: {e.strerror or e}") from None
    sock.settimeout(HELLO_TIMEOUT)  # a wedged (or SIGSTOPped) daemon must not hang the client
    try:
        protocol.send(sock, {"op": "hello", "version": protocol.PROTOCOL_VERSION,
                             "build": protocol.BUILD_ID})
        got = protocol.recv(sock)
    except (ConnectionResetError, BrokenPipeError, protocol.ProtocolError):
        got = None  # a daemon that is shutting down: treat it as absent
    except TimeoutError:
        sock.close()
        raise ClientError(f"twzd for {home} accepts connections but does not answer within "
                          f"{HELLO_TIMEOUT:.0f} s; see {home}/twzd.log, or restart it with "
                          f"`twz --home {home} daemon stop`") from None
    if got is None:
        sock.close()
        return None
    sock.settimeout(None)
    for fd in got[1]:
        os.close(fd)
    return Connection(sock, home, got[0])


def _spawn_daemon(home: pathlib.Path) -> subprocess.Popen:
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ClientError(f"cannot use {home} as the home: {e.strerror} (choose a writable "
                          "directory with --home or TWZ_HOME)") from None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(home / "twzd.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "twzlinux.cli.twzd", "--home", str(home), "--foreground"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env,
            start_new_session=True)


def start(home: pathlib.Path) -> Connection:
    """Connect to `home`'s daemon, starting a detached one if none answers."""
    conn = try_connect(home)
    if conn is not None:
        return conn
    deadline = time.monotonic() + START_TIMEOUT
    child = _spawn_daemon(home)
    while time.monotonic() < deadline:
        time.sleep(0.02)
        conn = try_connect(home)
        if conn is not None:
            return conn
        if child.poll() is None:
            continue
        if child.returncode != protocol.EXIT_ALREADY_RUNNING:
            raise ClientError(f"twzd for {home} failed to start:\n{_log_tail(home)}\n"
                              f"(full log: {home}/twzd.log)")
        if not lock_held(home):
            child = _spawn_daemon(home)  # the daemon that held the home (stopping?) is gone
    raise ClientError(f"twzd for {home} did not start within {START_TIMEOUT:.0f} s; "
                      f"see {home}/twzd.log")


def _log_tail(home: pathlib.Path, lines: int = 5) -> str:
    try:
        text = (home / "twzd.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def lock_held(home: pathlib.Path) -> bool:
    """Whether a daemon holds `home`'s lock right now."""
    try:
        fd = os.open(home / "twzd.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock if it took one


def wait_stopped(home: pathlib.Path, timeout: float = START_TIMEOUT) -> bool:
    """Wait until no daemon holds `home`'s lock."""
    deadline = time.monotonic() + timeout
    while lock_held(home):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def connect(home: pathlib.Path) -> Connection:
    """A connection to a daemon running this very code, replacing an idle stale one."""
    conn = start(home)
    hello = conn.hello
    if (hello.get("version"), hello.get("build")) == (protocol.PROTOCOL_VERSION, protocol.BUILD_ID):
        return conn
    stale = (f"twzd (pid {hello.get('pid')}) for {home} runs other code (protocol "
             f"{hello.get('version')}, build {hello.get('build')}; this is protocol "
             f"{protocol.PROTOCOL_VERSION}, build {protocol.BUILD_ID})")
    if hello.get("programs"):
        conn.close()
        raise ClientError(f"{stale} and has {hello['programs']} program(s) running; when they "
                          f"finish, run `twz --home {home} daemon stop` and try again")
    print(f"{stale}; restarting it", file=sys.stderr)
    conn.request({"op": "stop"})
    conn.close()
    if not wait_stopped(home):
        raise ClientError(f"the stale twzd for {home} did not stop; run `twz --home {home} "
                          "daemon stop` or kill it")
    return start(home)
