"""`twz key|object|cap|sctx`: a person makes a key, an object, a context and a capability, reads
what the context holds, and runs a program under it."""

import subprocess
import sys
import uuid

from conftest import _as_program, twz, twz_env


def test_tools_make_a_context_a_program_runs_under(daemon, tmp_path):
    tag = uuid.uuid4().hex[:8]
    key, ctx, sub = f"k-{tag}", f"ctx-{tag}", f"sub-{tag}"
    data = tmp_path / "data"
    data.write_bytes(b"tool-made")

    def ok(*args):
        r = twz(daemon, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert ok("key", "new", key).startswith(f"key {key}: public ")
    x = ok("object", "new", "--key", key, "--data", str(data))
    assert ok("sctx", "new", ctx, "--key", key).startswith(f"security context {ctx}: ")
    ok("cap", "grant", "--key", key, x, ctx, "RC", "--add", "-o", str(tmp_path / "c.cap"))
    ok("sctx", "new", sub, "--key", key)
    ok("cap", "delegate", "--key", key, str(tmp_path / "c.cap"), sub, "R", "-o",
       str(tmp_path / "d.cap"))
    ok("sctx", "add", sub, x, str(tmp_path / "d.cap"))
    shown = ok("sctx", "show", sub)
    assert f"security context {sub}" in shown and f"{x}  dlg" in shown and "grants READ" in shown
    prog = _as_program("import sys, libtwz\nprint(libtwz.Object.open(sys.argv[1])"
                       ".read(0x1000, 9).decode())\n", tmp_path)
    for c in (ctx, sub):
        r = subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", "--sctx", c, prog, x],
                           env=twz_env(daemon), capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == "tool-made", r.stderr
    assert ok("sctx", "rm", sub, x) == f"removed 1 entries for {x} from {sub}"
    bad = twz(daemon, "cap", "grant", "--key", key, x, "no-such-ctx", "R")
    assert bad.returncode == 1 and "no object 'no-such-ctx'" in bad.stderr
