"""twzd's own state survives a crash: a second Kernel on the same home, started while the first
was never closed, is what twzd's restart after kill -9 sees (the real kill -9 runs in
test_crash.py). Object creation is atomic: an interrupted one leaves no object behind."""

import pytest

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.kernel.core import Kernel

from test_kernel import BUF, RW, create, home, mem, objfd, sys  # noqa: F401 (fixtures)

P = RW | c.TWZ_SYS_OC_PERSIST_


def restart(home):
    """A kernel on `home` as twzd's next start builds it, the old one left unclosed."""
    return Kernel(home, print)


def test_deleted_but_mapped_object_is_freed_after_a_crash(home, mem):
    k = restart(home)
    proc = k.new_process()
    oid = create(k, proc, mem, P)
    objfd(k, proc, mem, oid)                 # mapped: the delete has to wait
    sys(k, proc, mem, "ODELETE", oid, 0)
    assert (home / "objects" / s.id_str(oid)).exists()
    k2 = restart(home)                       # the mapping process died with twzd
    assert k2.objects.lookup(oid, hidden=True) is None
    assert not (home / "objects" / s.id_str(oid)).exists()
    k2.close()


def test_ties_between_persistent_objects_and_flags_survive_a_crash(home, mem):
    k = restart(home)
    proc = k.new_process()
    parent, child = create(k, proc, mem, P), create(k, proc, mem, P)
    sys(k, proc, mem, "OTIE", parent, child, 0)
    sys(k, proc, mem, "OTIE", proc.thread_id, child, 0)   # a volatile tie: dies with twzd
    sys(k, proc, mem, "ODELETE", child, c.TWZ_SYS_OD_IMMEDIATE)
    k2 = restart(home)
    kept = k2.objects.lookup(child, hidden=True)
    assert kept is not None and kept.deleted and kept.hidden and kept.tied == 1
    assert k2.objects.lookup(child) is None                  # still hidden from lookups
    k3 = restart(home)                                       # and again, without any change
    assert k3.objects.lookup(child, hidden=True).tied == 1
    sys(k3, k3.new_process(), mem, "ODELETE", parent, 0)
    assert not (home / "objects" / s.id_str(child)).exists()
    assert restart(home).objects.lookup(child, hidden=True) is None


def test_untying_after_a_crash_frees_the_deleted_child(home, mem):
    k = restart(home)
    proc = k.new_process()
    parent, child = create(k, proc, mem, P), create(k, proc, mem, P)
    sys(k, proc, mem, "OTIE", parent, child, 0)
    sys(k, proc, mem, "ODELETE", child, 0)
    k2 = restart(home)
    sys(k2, k2.new_process(), mem, "OTIE", parent, child, c.OTIE_UNTIE)
    assert not (home / "objects" / s.id_str(child)).exists()
    assert (home / "objects" / s.id_str(parent)).exists()
    k2.close()


def test_an_interrupted_creation_leaves_no_object(home, mem):
    k = restart(home)
    proc = k.new_process()
    backing = k.objects.store.persistent(0x1234)   # a creation that never reached publish
    backing.pwrite(0x1000, b"half made")
    assert not k.objects.store.exists(0x1234)
    k2 = restart(home)
    assert k2.objects.lookup(0x1234) is None
    assert [p.name for p in (home / "objects").iterdir() if p.name.startswith(".")] == []
    oid = create(k2, k2.new_process(), mem, P)      # the store works on as before
    assert k2.objects.lookup(oid) is not None
    k2.close()


def test_cache_mode_and_copy_source_survive_a_crash(home, mem):
    k = restart(home)
    proc = k.new_process()
    src, dest = create(k, proc, mem, P), create(k, proc, mem, P)
    sys(k, proc, mem, "OCTL", dest, c.OCO_CACHE_MODE, 0, 0x1000, c.OC_CM_WC)
    mem.write(BUF, s.id_pack(dest) + s.id_pack(src))
    sys(k, proc, mem, "OCOPY", BUF, BUF + 16, 0x1000, 0x1000, 0x1000, 0)
    k2 = restart(home)
    obj = k2.objects.lookup(dest)
    assert obj.cache_mode == c.OC_CM_WC and obj.source == src
    k2.close()


def test_a_corrupt_state_database_is_named_with_what_to_do(home):
    restart(home).close()
    (home / "twzd.db").write_bytes(b"not a database" * 100)
    for leftover in ("twzd.db-wal", "twzd.db-shm"):
        (home / leftover).unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match="twzd.db is not a usable twzd state database.*"
                                           "Move it aside"):
        restart(home)
