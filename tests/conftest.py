"""Fixtures shared by the whole suite: a real twzd for a temporary home, and twzrun against it.

Every integration test runs real processes under the real seccomp filter; nothing is mocked.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def twz_env(home: Path, extra=None) -> dict:
    """The environment for a twzlinux command run from the source tree against `home`."""
    env = dict(os.environ)
    env["TWZ_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def twz(home: Path, *args, timeout=30) -> subprocess.CompletedProcess:
    """`twz --home HOME ARGS...`, output captured as text."""
    return subprocess.run([sys.executable, "-m", "twzlinux.cli.twz", "--home", str(home), *args],
                          env=twz_env(home), capture_output=True, text=True, timeout=timeout)


def daemon_pid(home: Path):
    """The pid of the daemon holding the home's lock, or None."""
    from twzlinux.daemon import client

    if not client.lock_held(home):
        return None  # not kill(pid, 0): a daemon that exited may linger as a zombie
    return int((home / "twzd.lock").read_text().strip())


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def stop_daemon(home: Path, timeout=15.0) -> None:
    """SIGTERM whatever daemon serves `home` and wait for it to go."""
    pid = daemon_pid(home)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: daemon_pid(home) is None, timeout, f"twzd {pid} to stop")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        raise


def start_daemon(home: Path, argv=None, extra_env=None) -> subprocess.Popen:
    """A foreground twzd for `home` (or `argv` in its place), once its socket answers."""
    from twzlinux.daemon import client

    argv = argv or [sys.executable, "-m", "twzlinux.cli.twzd", "--home", str(home),
                    "--foreground"]
    # stderr to a file, not a pipe: nobody would drain a pipe, and a full one would block twzd
    errors = home.parent / f"{home.name}-twzd.stderr"
    with open(errors, "w") as err:
        proc = subprocess.Popen(argv, env=twz_env(home, extra_env), stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)

    def answers():
        if proc.poll() is not None:
            raise AssertionError(f"twzd exited with {proc.returncode}: {errors.read_text()}")
        conn = client.try_connect(home)
        if conn is not None:
            conn.close()
        return conn is not None

    wait_for(answers, 20, "twzd to answer")
    return proc


@pytest.fixture(scope="session")
def twz_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def daemon(twz_home):
    """A twzd serving `twz_home` for the whole session; yields the home."""
    proc = start_daemon(twz_home)
    yield twz_home
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    # A source edit during the session makes twzrun replace the daemon with a detached one
    stop_daemon(twz_home)


@pytest.fixture
def fresh_home(tmp_path):
    """An empty home of the test's own; any daemon started there is stopped afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    yield home
    stop_daemon(home)


def _as_program(program, directory: Path) -> str:
    if isinstance(program, os.PathLike) or ("\n" not in program and os.path.exists(program)):
        return str(program)
    path = directory / f"prog{len(list(directory.glob('prog*.py')))}.py"
    path.write_text(textwrap.dedent(program))
    return str(path)


@pytest.fixture
def twzrun(daemon, tmp_path):
    """run(program, *args, input=None, timeout=60, env=None, cwd=None) -> CompletedProcess.

    `program` is a path, or Python source text (written to a temp file). Runs twzrun against
    the session daemon; `env` entries are added to the environment.
    """
    progdir = tmp_path / "programs"
    progdir.mkdir()

    def run(program, *args, input=None, timeout=60, env=None, cwd=None):
        return subprocess.run(
            [sys.executable, "-m", "twzlinux.cli.twzrun", _as_program(program, progdir),
             *map(str, args)],
            input=input, timeout=timeout, env=twz_env(daemon, env), cwd=cwd,
            capture_output=True, text=True)

    return run


@pytest.fixture
def build_native(tmp_path):
    """build(source, name="prog", flags=()) -> Path: compile C with gcc and twz/*.h."""
    from twzlinux.native import INCLUDE_DIR

    def build(source: str, name: str = "prog", flags=()) -> Path:
        src = tmp_path / f"{name}.c"
        src.write_text(textwrap.dedent(source))
        exe = tmp_path / name
        done = subprocess.run(["gcc", "-O2", "-Wall", f"-I{INCLUDE_DIR}", "-o", str(exe),
                               str(src), *flags], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return exe

    return build
