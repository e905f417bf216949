"""BECOME (twzd through ptrace, the runtime for the view): a native program becomes another
entry point, with new registers and a stack of its own, in another view."""

import subprocess
import sys
from pathlib import Path

from conftest import twz_env

SOURCE = Path(__file__).resolve().parent / "native" / "become.c"


def _build(tmp_path, flags=()):
    from twzlinux.native import INCLUDE_DIR

    exe = tmp_path / "become"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{INCLUDE_DIR}", "-o", str(exe),
                    str(SOURCE), *flags], check=True)
    return exe


def test_become_another_entry_point_in_another_view(twzrun, tmp_path):
    r = twzrun(_build(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "not a view: -22",                       # EINVAL, and nothing changed
        "no such view: -2, still here: old",     # ENOENT; the old view is back in place
        "bad args: -14",                         # EFAULT
        # the new entry runs with BECOME's registers (rdi, rsi, rsp) in the new view, whose
        # entry for the shared slot maps the same object
        "entry a=42 b=0xfeed shared=hello from the old view valid=1",
        "old slot in the new view: 0",
        "old slot unmapped: FAULT_OBJECT 0x9 slot 0x10101",  # READ|NOMAP: only the old view had it
    ]


def test_become_is_traced(daemon, tmp_path):
    r = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--trace",
                        str(_build(tmp_path))], env=twz_env(daemon), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    becomes = [line for line in r.stderr.splitlines() if "] BECOME(" in line]
    assert [line.rsplit(" = ", 1)[1] for line in becomes] == ["-1 EINVAL", "-1 EFAULT", "0"]


def test_a_second_thread_becomes_and_a_racing_exit_leaves_twzd_serving(twzrun, tmp_path):
    exe = _build(tmp_path, ("-pthread",))
    r = twzrun(exe, "thread")
    assert (r.returncode, r.stdout) == (0, "thread became: a=7\n"), r.stderr
    for _ in range(20):
        assert twzrun(exe, "race").returncode == 5
    assert twzrun("print('serving')").stdout == "serving\n"
