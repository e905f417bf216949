"""Secure gates: a call runs under the gate owner's context and returns in the caller's.

Object X (no default permissions) is readable only under context "owner", which serves gate
object G from a Python service. Context "caller" may call G's gate 1 only (EXEC on G, gate
range one gate wide). Through the gate the caller reads X; directly it cannot, before or after.
"""

import subprocess
import sys
import uuid

import pytest

from conftest import _as_program, twz_env
from test_hostile import sec_request
from twzlinux.abi import constants as c
from twzlinux.kernel import security as sec

SECRET = b"gate-guarded"

SERVICE = """
import sys, libtwz
from libtwz import security
x = libtwz.Object.open(sys.argv[2])
security.serve(sys.argv[1], {
    1: lambda off, *_: int.from_bytes(x.read(0x1000 + off, 8), "little"),
    2: lambda *_: 7,
}, ready=lambda: print("ready", flush=True))
"""

CALLER = """
import sys, libtwz
from libtwz import security
g, x = sys.argv[1], libtwz.ObjID.parse(sys.argv[2])

def direct():
    try:
        return "READ " + libtwz.Object.open(x).read(0x1000, 4).decode()
    except libtwz.TwzFault as e:
        return "FAULT " + str(e)

def gate(n, off=None):
    try:
        return security.call(libtwz.ObjID.parse(g), n, 0, offset=off)
    except libtwz.TwzError as e:
        return str(e)

print("before:", direct())
v = gate(1)
print("gate 1:", v.to_bytes(8, "little").decode() if isinstance(v, int) else v)
print("after:", direct())
print("gate 2:", gate(2))
print("non-gate:", gate(1, security.gate_offset(1) + 0x10))
"""


@pytest.fixture(scope="module")
def gate_world(daemon, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    key, owner, caller = f"gkey-{tag}", f"owner-{tag}", f"caller-{tag}"
    sec_request(daemon, cmd="key_new", name=key)
    x = sec_request(daemon, cmd="object_new", key=key, pflags=0,
                    data=__import__("base64").b64encode(SECRET).decode())["id"]
    g = sec_request(daemon, cmd="object_new", key=key, pflags=0)["id"]
    for ctx in (owner, caller):
        sec_request(daemon, cmd="sctx_new", name=ctx, key=key)

    def grant(target, accessor, perms, **kw):
        item = sec_request(daemon, cmd="cap_grant", key=key, target=target, accessor=accessor,
                           perms=perms, **kw)["item"]
        sec_request(daemon, cmd="sctx_add", sctx=accessor, target=target, item=item)

    grant(x, owner, sec.SCP_READ)
    grant(g, owner, sec.SCP_USE)
    grant(g, caller, sec.SCP_EXEC, gate_offset=c.TWZ_GATE_OFFSET + c.TWZ_GATE_SIZE,
          gate_length=c.TWZ_GATE_SIZE, gate_align=5)
    progs = tmp_path_factory.mktemp("gateprogs")
    service = subprocess.Popen(
        [sys.executable, "-m", "twzlinux.cli.twzrun", "--sctx", owner,
         _as_program(SERVICE, progs), g, x],
        env=twz_env(daemon), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert service.stdout.readline().strip() == "ready", service.stderr.read()
    yield dict(home=daemon, x=x, g=g, caller=caller, owner=owner, progs=progs)
    service.terminate()  # twzrun forwards it: the service leaves its WAIT and exits
    assert service.wait(15) == 128 + 15


def twzrun(world, *argv):
    return subprocess.run([sys.executable, "-m", "twzlinux.cli.twzrun", *argv],
                          env=twz_env(world["home"]), capture_output=True, text=True, timeout=60)


def test_a_gate_call_reads_what_only_the_gates_context_may(gate_world):
    w = gate_world
    r = twzrun(w, "--sctx", w["caller"], _as_program(CALLER, w["progs"]), w["g"], w["x"])
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert out["gate 1"] == SECRET[:8].decode(), r.stdout + r.stderr
    for when in ("before", "after"):     # the caller's own context, on both sides of the call
        assert out[when].startswith("FAULT FAULT_SCTX") and "does not grant READ" in out[when]
    # gate 2 exists (the service declares it) but the caller's capability names gate 1 only
    for what in ("gate 2", "non-gate"):
        assert "EACCES" in out[what] and "not a gate open to it" in out[what]
        assert w["g"] in out[what]


def test_without_exec_on_the_gate_object_no_call(gate_world):
    w = gate_world
    r = twzrun(w, "--sctx", w["owner"], _as_program(CALLER, w["progs"]), w["g"], w["x"])
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert out["before"].startswith("READ"), r.stdout + r.stderr   # the owner reads X...
    assert "EACCES" in out["gate 1"] and "lacks EXEC" in out["gate 1"]  # ...but may not call G


def test_native_code_calls_the_gate(gate_world, build_native):
    w = gate_world
    exe = build_native(r"""
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static objid_t parse(const char *s) {
    return ((objid_t)strtoull(s, NULL, 16) << 64) | strtoull(strchr(s, ':') + 1, NULL, 16);
}
int main(int argc, char **argv) {
    uint64_t args[4] = {4, 0, 0, 0};
    long v = sys_lx_gate(LX_GATE_CALL, parse(argv[1]), TWZ_GATE_OFFSET + TWZ_GATE_SIZE,
                         (uint64_t)(uintptr_t)args, 0);
    char text[9] = {0};
    memcpy(text, &v, 8);
    printf("gate 1 at 4: %s\n", text);
    printf("non-gate: %ld\n", sys_lx_gate(LX_GATE_CALL, parse(argv[1]), TWZ_GATE_OFFSET + 8,
                                          (uint64_t)(uintptr_t)args, 0));
    return 0;
}
""", name="gatecall")
    r = twzrun(w, "--sctx", w["caller"], str(exe), w["g"])
    assert r.stdout.splitlines() == [f"gate 1 at 4: {SECRET[4:12].decode()}",
                                     "non-gate: -13"], r.stdout + r.stderr
