"""Capabilities, delegations and security contexts in the sans-I/O kernel core.

Real signatures (ECDSA P-256 through `cryptography`), real context objects in Twizzler's layout;
the kernel is driven directly, as in test_kernel.py.
"""

import errno
import struct
import time

import pytest

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.abi.syscalls import BY_NAME, split_args
from twzlinux.kernel import sctx, secadmin
from twzlinux.kernel import security as sec
from twzlinux.kernel.core import FdResult, Kernel, SyscallError

R, W, X, U, D, CD = sec.SCP_READ, sec.SCP_WRITE, sec.SCP_EXEC, sec.SCP_USE, sec.SCP_DEL, sec.SCP_CD


class NoMemory:
    def read(self, addr, n):
        raise SyscallError(errno.EFAULT)

    def write(self, addr, data):
        raise SyscallError(errno.EFAULT)


@pytest.fixture
def k(tmp_path):
    kernel = Kernel(tmp_path / "home", lambda proc, data: None)
    yield kernel
    kernel.close()


@pytest.fixture
def world(k):
    """alice's key signs for object X (no default permissions) and for contexts A and B."""
    pub, pri = secadmin.new_key(k, "alice.key")
    x = secadmin.new_object(k, b"secret", 0, pub)
    a = secadmin.new_sctx(k, "A", kuid=pub)
    b = secadmin.new_sctx(k, "B", kuid=pub)
    return dict(pub=pub, x=x, a=a, b=b, X=s.id_str(x))


def perms(k, ctx_id, oid):
    return k.access.context_perms(ctx_id, k.objects.lookup(oid))


def call(k, proc, name, *args):
    entry = BY_NAME[name]
    return k.syscall(proc, entry.linux_nr, split_args(entry, list(args)) + [0] * 6, NoMemory())


def test_struct_layouts_are_twizzlers():
    assert sec.HDR.size == 72 and sctx.BUCKET.size == 48
    assert sec.MAGIC_OFFSET == 60 and (sctx.GMASK, sctx.NBUCKETS, sctx.BUCKETS) == (1552, 1560,
                                                                                     1584)


def test_cap_grants_its_perms_and_records_the_modern_scheme(k, world):
    cap = secadmin.grant(k, "alice.key", world["X"], "A", R)
    item = sec.parse(cap)
    assert (item.magic, item.htype, item.etype, len(item.sig)) == (
        sec.SC_CAP_MAGIC, sec.SCHASH_SHA256, sec.SCENC_ECDSA_P256, 64)
    assert struct.unpack_from("<H", cap, 68)[0] == 64  # slen, signed with the header
    secadmin.sctx_add(k, "A", world["X"], cap)
    assert perms(k, world["a"], world["x"]).perms == R
    assert perms(k, world["b"], world["x"]).perms == 0


def test_every_altered_byte_makes_a_capability_worthless(k, world):
    cap = secadmin.grant(k, "alice.key", world["X"], "A", R | W)
    v = k.access.verifier
    assert v.evaluate(cap, world["x"], world["a"])[0] == R | W
    for i in range(len(cap)):
        bad = bytearray(cap)
        bad[i] ^= 0x01
        assert v.evaluate(bytes(bad), world["x"], world["a"])[0] == 0, f"byte {i}"


def test_every_altered_byte_makes_a_delegation_worthless(k, world):
    cap = secadmin.grant(k, "alice.key", world["X"], "A", R | W | CD)
    dlg = secadmin.delegate(k, "alice.key", cap, "B", R)
    v = k.access.verifier
    assert v.evaluate(dlg, world["x"], world["b"])[0] == R
    for i in range(len(dlg)):
        bad = bytearray(dlg)
        bad[i] ^= 0x80
        assert v.evaluate(bytes(bad), world["x"], world["b"])[0] == 0, f"byte {i}"


def test_delegation_is_limited_by_its_mask_and_needs_cd(k, world):
    delegable = secadmin.grant(k, "alice.key", world["X"], "A", R | W | CD)
    dlg = secadmin.delegate(k, "alice.key", delegable, "B", R)
    secadmin.sctx_add(k, "B", world["X"], dlg)
    assert perms(k, world["b"], world["x"]).perms == R       # not W: the mask
    plain = secadmin.grant(k, "alice.key", world["X"], "A", R | W)
    no_cd = secadmin.delegate(k, "alice.key", plain, "B", R | W)
    assert k.access.verifier.evaluate(no_cd, world["x"], world["b"])[:1] == (0,)
    assert "CD" in k.access.verifier.evaluate(no_cd, world["x"], world["b"])[2]


def test_a_two_level_chain_goes_no_further_than_each_link(k, world):
    c_id = secadmin.new_sctx(k, "C", kuid=world["pub"])
    cap = secadmin.grant(k, "alice.key", world["X"], "A", R | W | CD)
    ab = secadmin.delegate(k, "alice.key", cap, "B", R | W | CD)
    bc = secadmin.delegate(k, "alice.key", ab, "C", R | W)
    assert k.access.verifier.evaluate(bc, world["x"], c_id)[0] == R | W
    ab_no_cd = secadmin.delegate(k, "alice.key", cap, "B", R | W)
    bc2 = secadmin.delegate(k, "alice.key", ab_no_cd, "C", R | W)
    assert k.access.verifier.evaluate(bc2, world["x"], c_id)[0] == 0
    # the delegation to B does not serve C directly, nor A's capability B
    assert k.access.verifier.evaluate(ab, world["x"], c_id)[0] == 0
    assert k.access.verifier.evaluate(cap, world["x"], world["b"])[0] == 0


def test_expired_not_yet_valid_and_revoked_capabilities_give_nothing(k, world):
    key, _ = secadmin.private_key(k, "alice.key")
    now = time.time_ns()
    expired = sec.make_cap(key, world["x"], world["a"], R, valid=now - 1)
    future = sec.make_cap(key, world["x"], world["a"], R, create=now + 10**12)
    v = k.access.verifier
    assert v.evaluate(expired, world["x"], world["a"])[:3] == (0, None, "expired or revoked")
    assert v.evaluate(future, world["x"], world["a"])[:3] == (0, None, "not valid yet")
    good = secadmin.grant(k, "alice.key", world["X"], "A", R)
    secadmin.sctx_add(k, "A", world["X"], good, revoked=True)
    assert perms(k, world["a"], world["x"]).perms == 0


def test_a_capability_expiring_later_is_honoured_until_then(k, world):
    key, _ = secadmin.private_key(k, "alice.key")
    soon = sec.make_cap(key, world["x"], world["a"], R, valid=time.time_ns() + 300_000_000)
    secadmin.sctx_add(k, "A", world["X"], soon)
    assert perms(k, world["a"], world["x"]).perms == R       # cached now...
    time.sleep(0.35)
    assert perms(k, world["a"], world["x"]).perms == 0       # ...but not past its expiry


def test_a_key_other_than_the_targets_kuid_signs_nothing(k, world):
    secadmin.new_key(k, "mallory.key")
    with pytest.raises(SyscallError):
        secadmin.grant(k, "mallory.key", world["X"], "A", R)
    key, _ = secadmin.private_key(k, "mallory.key")
    forged = sec.make_cap(key, world["x"], world["a"], R | W)
    assert k.access.verifier.evaluate(forged, world["x"], world["a"])[:3] == (0, None,
                                                                             "bad signature")


def test_effective_permission_formula_with_masks(k, world):
    """EP = perms | (((dfl & ~gmask) | (dfl & remask)) & ~mask)."""
    y = secadmin.new_object(k, b"", c.MIP_DFL_READ | c.MIP_DFL_WRITE, world["pub"])
    Y = s.id_str(y)
    assert perms(k, world["a"], y).perms == R | W                  # defaults
    secadmin.sctx_add(k, "A", Y, pmask=W, mask=True)
    assert perms(k, world["a"], y).perms == R                      # masked
    secadmin.sctx_gmask(k, "B", R | W | X)
    assert perms(k, world["b"], y).perms == 0                      # global mask
    secadmin.sctx_add(k, "B", Y, pmask=R, regrant=True)
    assert perms(k, world["b"], y).perms == R                      # regranted
    cap = secadmin.grant(k, "alice.key", Y, "B", W)
    secadmin.sctx_add(k, "B", Y, cap)
    assert perms(k, world["b"], y).perms == R | W                  # caps are never masked
    assert secadmin.sctx_rm(k, "B", Y) == 2
    assert perms(k, world["b"], y).perms == 0


def test_bucket_chains_hold_colliding_targets(k, world):
    """Targets in the same bucket (ID % nbuckets) go to the overflow chain."""
    ctx = k.objects.lookup(world["a"])
    read, write = ctx.backing.pread, ctx.backing.pwrite
    targets = [world["x"] + i * sctx.DFL_NBUCKETS for i in range(1, 5)]
    for i, t in enumerate(targets):
        sctx.add_mask(read, write, t, 1 << i)
    for i, t in enumerate(targets):
        assert [b.pmask for b in sctx.chain_of(read, t)] == [1 << i]
    assert sctx.remove(read, write, targets[1]) == 1
    assert [b.pmask for b in sctx.chain_of(read, targets[2])] == [4]


def test_a_scribbled_context_is_refused_not_crashed_on(k, world):
    ctx = k.objects.lookup(world["a"])
    # a chain loop and an item pointing outside the object
    head = world["x"] % sctx.DFL_NBUCKETS
    b = sctx.Bucket(head, world["x"], 0x7FFFFFFF0000, 0, sec.Gates(), R, head)
    ctx.backing.pwrite(sctx.BASE + sctx.BUCKETS + head * 48, b.pack())
    assert perms(k, world["a"], world["x"]).perms == 0
    ctx.backing.pwrite(sctx.BASE + sctx.NBUCKETS, struct.pack("<QQ", 0, 1 << 40))
    k.access.invalidate(world["a"])
    r = perms(k, world["a"], world["x"])
    assert r.perms == 0 and "not a security context" in r.why


def test_verification_is_cached_by_the_signed_bytes(k, world):
    cap = secadmin.grant(k, "alice.key", world["X"], "A", R)
    v = k.access.verifier
    calls = []
    real = sec.verify_raw
    sec_verify = lambda *a: calls.append(1) or real(*a)  # noqa: E731
    import twzlinux.kernel.security as mod
    mod.verify_raw = sec_verify
    try:
        for _ in range(3):
            assert v.evaluate(cap, world["x"], world["a"])[0] == R
        bad = bytearray(cap)
        bad[-1] ^= 1
        assert v.evaluate(bytes(bad), world["x"], world["a"])[0] == 0
    finally:
        mod.verify_raw = real
    assert len(calls) == 2


# --- the kernel's checks --------------------------------------------------------------------

def test_map_time_grants_are_the_contexts(k, world):
    secadmin.sctx_add(k, "A", world["X"], secadmin.grant(k, "alice.key", world["X"], "A", R))
    proc = k.new_process([k.objects.lookup(world["a"])])
    res = call(k, proc, "LX_OBJFD", world["x"], c.FE_READ | c.FE_WRITE)
    assert isinstance(res, FdResult)
    import fcntl
    import os
    assert fcntl.fcntl(res.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    os.close(res.fd)
    with pytest.raises(SyscallError) as ei:
        call(k, proc, "LX_OBJFD", world["x"], c.FE_READ | c.FE_EXEC)
    assert ei.value.errno == errno.EACCES
    assert "EXEC" in str(ei.value) and world["X"] in str(ei.value)
    other = k.new_process()           # the temporary context: X has no default permissions
    with pytest.raises(SyscallError) as ei:
        call(k, other, "LX_OBJFD", world["x"], c.FE_READ)
    assert "READ" in str(ei.value) and world["X"] in str(ei.value)


def test_del_guards_deletion_and_write_guards_ocopy(k, world):
    secadmin.sctx_add(k, "A", world["X"], secadmin.grant(k, "alice.key", world["X"], "A", R))
    proc = k.new_process([k.objects.lookup(world["a"])])
    with pytest.raises(SyscallError) as ei:
        call(k, proc, "ODELETE", world["x"], 0)
    assert ei.value.errno == errno.EACCES and "DEL" in str(ei.value)
    assert k.objects.lookup(world["x"]) is not None
    with pytest.raises(SyscallError) as ei:
        call(k, proc, "OCTL", world["x"], c.OCO_MAP, 0, 4096, 0)
    assert "WRITE" in str(ei.value)
    secadmin.sctx_add(k, "A", world["X"],
                      secadmin.grant(k, "alice.key", world["X"], "A", D))
    assert call(k, proc, "ODELETE", world["x"], 0) == 0


def test_attach_needs_use_and_detach_honours_every_flag(k, world):
    a, b = world["a"], world["b"]
    proc = k.new_process()
    with pytest.raises(SyscallError) as ei:     # contexts have no default permissions
        call(k, proc, "ATTACH", 0, a, c.KSO_SECCTX)
    assert ei.value.errno == errno.EACCES and "USE" in str(ei.value)
    proc = k.new_process([k.objects.lookup(a)])
    secadmin.sctx_add(k, "A", "B", secadmin.grant(k, "alice.key", "B", "A", U))
    secadmin.sctx_add(k, "A", world["X"], secadmin.grant(k, "alice.key", world["X"], "A", R))
    assert call(k, proc, "ATTACH", 0, b, c.KSO_SECCTX) == 0
    assert proc.ctx.attached == [a, b] and proc.ctx.active == a
    kconf = BY_NAME["KCONF"].nr  # (not NULL: syscall 0 means DETACH's default, "now")

    def active_during(sysc_name):
        seen = []
        handler = k.access.around

        def spy(ctxs, nr, run, *args):
            return handler(ctxs, nr, lambda: seen.append(list(ctxs.attached)) or run(*args))
        k.access.around = spy
        try:
            call(k, proc, sysc_name, c.KCONF_RDRESET, 0)
        finally:
            k.access.around = handler
        return seen[0]

    # REATTACH (no flag): off for the call, back after
    assert call(k, proc, "DETACH", 0, b, c.KSO_SECCTX | kconf << 16) == 0
    assert active_during("KCONF") == [a]
    assert proc.ctx.attached == [a, b]
    # ONEXIT: on during, off after
    call(k, proc, "DETACH", 0, b, c.KSO_SECCTX | kconf << 16 | 2 << 32)
    assert active_during("KCONF") == [a, b] and proc.ctx.attached == [a]
    call(k, proc, "ATTACH", 0, b, c.KSO_SECCTX)
    # ONENTRY: off before it runs, stays off
    call(k, proc, "DETACH", 0, b, c.KSO_SECCTX | kconf << 16 | 1 << 32)
    assert active_during("KCONF") == [a] and proc.ctx.attached == [a]
    # DETACH itself (sysc 0): now; detaching everything leaves no rights at all
    call(k, proc, "DETACH", 0, 0, c.KSO_SECCTX)
    assert proc.ctx.attached == []
    with pytest.raises(SyscallError):
        call(k, proc, "LX_OBJFD", world["x"], c.FE_READ)
    with pytest.raises(SyscallError) as ei:
        call(k, proc, "DETACH", 0, a, c.KSO_SECCTX | 4 << 32)
    assert ei.value.errno == errno.EINVAL


def test_an_undetachable_context_stays(k, world):
    u = secadmin.new_sctx(k, "U", kuid=world["pub"], undetachable=True)
    proc = k.new_process([k.objects.lookup(u)])
    with pytest.raises(SyscallError) as ei:
        call(k, proc, "DETACH", 0, u, c.KSO_SECCTX)
    assert ei.value.errno == errno.EPERM and proc.ctx.attached == [u]
