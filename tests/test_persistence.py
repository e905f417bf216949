"""Persistent objects, and everything their pointers reach, survive `twz daemon stop`."""

import os
import subprocess
import sys
import uuid

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "list.py"


def twz(home, *args):
    return subprocess.run([sys.executable, "-m", "twzlinux.cli.twz", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def run(home, program, *args):
    return subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", str(program), *args],
                          env=dict(os.environ, TWZ_HOME=str(home)), capture_output=True,
                          text=True, timeout=120)


def test_pointer_graph_survives_a_daemon_restart(tmp_path):
    home = tmp_path / "home"
    name = f"/persist/graph-{uuid.uuid4().hex}"
    writer = tmp_path / "w.py"
    writer.write_text(f"""
import libtwz
root = libtwz.Object.create(persist=True, name={name!r})
leaf = libtwz.Object.create(persist=True)
mid = libtwz.Object.create(persist=True)
leaf.write(0x1000, b"leaf payload")
mid.store_ptr(0x1000, leaf, 0x1000)
root.store_ptr(0x1000, mid, 0x1000)
root.write(0x1008, b"root text")
print(root.id, mid.id, leaf.id)
""")
    reader = tmp_path / "r.py"
    reader.write_text(f"""
import libtwz
root = libtwz.Object.open({name!r})
mid, off = root.load_ptr(0x1000)
leaf, loff = mid.load_ptr(off)
print(root.id, mid.id, leaf.id)
print(root.read(0x1008, 9).decode(), leaf.read(loff, 12).decode())
""")
    try:
        w = run(home, writer)
        assert w.returncode == 0, w.stderr
        stop = twz(home, "daemon", "stop")
        assert stop.returncode == 0, stop.stderr
        assert twz(home, "daemon", "status").returncode != 0  # really stopped
        r = run(home, reader)                                  # starts a fresh twzd
        assert r.returncode == 0, r.stderr
        ids, text = r.stdout.splitlines()
        assert ids == w.stdout.strip()
        assert text == "root text leaf payload"
    finally:
        twz(home, "daemon", "stop")


def test_the_list_example_grows_across_restarts(tmp_path):
    home = tmp_path / "home"
    try:
        first = run(home, EXAMPLE, "alpha", "beta")
        assert first.returncode == 0, first.stderr
        assert "2 nodes in 1 objects" in first.stdout
        assert twz(home, "daemon", "stop").returncode == 0
        second = run(home, EXAMPLE, "gamma")
        assert second.returncode == 0, second.stderr
        assert "created" not in second.stdout
        assert "3 nodes in 2 objects" in second.stdout
        texts = [line.split(": ", 1)[1].split("  (")[0] for line in second.stdout.splitlines()
                 if line.startswith("  [")]
        assert texts == ["alpha", "beta", "gamma"]
    finally:
        twz(home, "daemon", "stop")
