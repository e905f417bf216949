"""The superuser's side of security: make keys and contexts, sign capabilities and delegations,
edit contexts. twzd runs these for the `twz key|cap|sctx` tools (its `sec` request); programs
never reach them.

Keys are a pair of persistent objects in Twizzler's `key_hdr` layout: the public one (readable
by default, since verifying needs nothing secret) and the private one (no default permissions:
only twzd reads it, to sign). Contexts are persistent KSO_SECCTX objects with no default
permissions, named in the root namespace so `twzrun --sctx NAME` finds them.
"""

from errno import EEXIST, EINVAL, ENOENT, ENOSPC

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.abi.namespace import encode_entry, iter_entries

from . import sctx
from .errors import SyscallError
from .objects import Obj
from .security import (Gates, key_from_object, key_object_bytes, make_cap, make_dlg,
                       new_keypair, parse, perm_str)

_BASE = c.OBJ_NULLPAGE_SIZE
_SZ_AT = c.OBJ_METAINFO_OFFSET + 48
_MIF_AT = c.OBJ_METAINFO_OFFSET + 4


def _write(obj: Obj) -> sctx.Write:
    return obj.backing.pwrite


def _new(k, data: bytes, p_flags: int, kso_type: int = 0, kuid: int = 0) -> Obj:
    obj = k.objects.create(kuid, p_flags | kso_type << c.OC_KSO_SHIFT | c.TWZ_SYS_OC_PERSIST_)
    if data:
        obj.backing.pwrite(_BASE, data)
    return obj


def object_by(k, text: str) -> Obj:
    """An object by `hi:lo` ID or by a name in the root namespace."""
    oid = None
    if ":" in text:
        try:
            hi, lo = text.split(":")
            oid = int(hi, 16) << 64 | int(lo, 16)
        except ValueError:
            oid = None
    if oid is None:
        oid = _names(k).get(text)
    obj = k.objects.lookup(oid) if oid else None
    if obj is None:
        raise SyscallError(ENOENT, f"no object {text!r} (give an ID hi:lo or a name)")
    return obj


def _root_ns(k) -> Obj:
    return k.objects.lookup(k.root_namespace)


def _names(k) -> dict[str, int]:
    ns = _root_ns(k)
    used = int.from_bytes(ns.backing.pread(_SZ_AT, 8), "little")
    buf = ns.backing.pread(_BASE, max(used, s.NAMESPACE_HDR.size))
    return {e.name: e.id for _, e in iter_entries(buf) if e.flags & c.NAME_ENT_VALID}


def bind(k, name: str, oid: int) -> None:
    """Name `oid` in the root namespace (appended as libtwz.names does: record, then sz)."""
    if "/" in name or not name or name in (".", ".."):
        raise SyscallError(EINVAL, f"bad name {name!r}")
    if name in _names(k):
        raise SyscallError(EEXIST, f"the name {name!r} exists already")
    ns = _root_ns(k)
    used = max(int.from_bytes(ns.backing.pread(_SZ_AT, 8), "little"), s.NAMESPACE_HDR.size)
    rec = encode_entry(name, oid, c.NAME_ENT_REGULAR)
    if _BASE + used + len(rec) + s.NAME_ENT.size > c.OBJ_TOPDATA:
        raise SyscallError(ENOSPC, "root namespace full")
    ns.backing.pwrite(_BASE + used, rec)
    ns.backing.pwrite(_SZ_AT, (used + len(rec)).to_bytes(8, "little"))
    flags = int.from_bytes(ns.backing.pread(_MIF_AT, 2), "little")
    ns.backing.pwrite(_MIF_AT, (flags | c.MIF_SZ).to_bytes(2, "little"))


def new_key(k, name: str | None = None) -> tuple[int, int]:
    """(public key object, private key object); the private one is named NAME if given."""
    pub, pri = new_keypair()
    pub_obj = _new(k, key_object_bytes(pub, False), c.MIP_DFL_READ)
    pri_obj = _new(k, key_object_bytes(pri, True), 0, kuid=pub_obj.id)
    if name:
        bind(k, name, pri_obj.id)
    return pub_obj.id, pri_obj.id


def private_key(k, text: str):
    obj = object_by(k, text)
    try:
        key = key_from_object(obj.backing.pread)
    except ValueError:
        key = None
    if key is None or not hasattr(key, "public_key"):
        raise SyscallError(EINVAL, f"{text} is not a private key object (twz key new makes one)")
    return key, obj.meta().kuid  # a private key object's kuid is its public half


def public_key_id(k, text: str) -> int:
    """The public key object for a key named either by its public or its private half."""
    obj = object_by(k, text)
    try:
        key = key_from_object(obj.backing.pread)
    except ValueError:
        raise SyscallError(EINVAL, f"{text} is not a key object") from None
    return obj.meta().kuid if hasattr(key, "public_key") else obj.id


def new_object(k, data: bytes, p_flags: int, kuid: int) -> int:
    """A persistent object whose capabilities the key `kuid` signs."""
    return _new(k, data, p_flags, kuid=kuid).id


def new_sctx(k, name: str | None, kuid: int = 0, gmask: int = 0,
             undetachable: bool = False) -> int:
    obj = _new(k, b"", 0, c.KSO_SECCTX, kuid)
    sctx.init(_write(obj), name or "sctx", gmask=gmask)
    if undetachable:
        obj.backing.pwrite(_BASE + sctx.FLAGS, (1).to_bytes(4, "little"))
    if name:
        bind(k, name, obj.id)
    return obj.id


def grant(k, key: str, target: str, accessor: str, perms: int, valid: int = 0,
          gates: Gates = Gates()) -> bytes:
    """A capability signed with `key`, which must be the key that signs for `target` (its
    kuid); the kernel would refuse any other."""
    pri, pub_id = private_key(k, key)
    t = object_by(k, target)
    if t.meta().kuid != pub_id:
        raise SyscallError(EINVAL, f"object {target} is signed for by key "
                                   f"{s.id_str(t.meta().kuid)}, not by {key}")
    return make_cap(pri, t.id, object_by(k, accessor).id, perms, valid=valid, gates=gates)


def delegate(k, key: str, inner: bytes, delegatee: str, mask: int, valid: int = 0) -> bytes:
    """A delegation of `inner` (a cap or dlg whose accessor is the delegator) to `delegatee`,
    signed with the delegator context's key (its kuid)."""
    item = parse(inner)
    delegator = item.second if item.is_cap else item.first  # who holds `inner`
    pri, pub_id = private_key(k, key)
    d = k.objects.lookup(delegator)
    if d is None or d.meta().kuid != pub_id:
        raise SyscallError(EINVAL, f"the delegator {s.id_str(delegator)} is not signed for by "
                                   f"{key}")
    return make_dlg(pri, inner, object_by(k, delegatee).id, delegator, mask, valid=valid)


def context(k, text: str) -> Obj:
    obj = object_by(k, text)
    if obj.kso_type != c.KSO_SECCTX:
        raise SyscallError(EINVAL, f"{text} is not a security context")
    return obj


def sctx_add(k, ctx: str, target: str, item: bytes | None = None, pmask: int | None = None,
             mask: bool = False, regrant: bool = False, revoked: bool = False) -> None:
    obj = context(k, ctx)
    t = object_by(k, target)
    read, write = obj.backing.pread, _write(obj)
    try:
        if item is not None:
            b = sctx.add(read, write, t.id, item, sctx.SCP_ALL if pmask is None else pmask)
            if revoked:
                b.flags |= sctx.SCF_REV
                write(sctx.BASE + sctx.BUCKETS + b.index * sctx.BUCKET.size, b.pack())
        else:
            sctx.add_mask(read, write, t.id, pmask or 0, regrant=regrant or not mask)
    except ValueError as e:
        raise SyscallError(ENOSPC, str(e)) from None
    finally:
        k.access.invalidate(obj.id)


def sctx_rm(k, ctx: str, target: str) -> int:
    obj = context(k, ctx)
    try:
        return sctx.remove(obj.backing.pread, _write(obj), object_by(k, target).id)
    finally:
        k.access.invalidate(obj.id)


def sctx_gmask(k, ctx: str, gmask: int) -> None:
    obj = context(k, ctx)
    sctx.set_gmask(_write(obj), gmask)
    k.access.invalidate(obj.id)


def sctx_show(k, ctx: str) -> dict:
    obj = context(k, ctx)
    read = obj.backing.pread
    out = []
    for b in sctx.entries(read):
        ent = {"target": s.id_str(b.target), "pmask": perm_str(b.pmask)}
        if b.data:
            try:
                item = parse(sctx.read_item(read, b.data))
                ent["kind"] = "cap" if item.is_cap else "dlg"
                ent["perms"] = perm_str(k.access.context_perms(obj.id, k.objects.lookup(b.target)
                                                               ).perms) \
                    if k.objects.lookup(b.target) else "object gone"
                ent["valid"] = item.valid
            except ValueError as e:
                ent["kind"] = f"bad item ({e})"
            if b.flags & sctx.SCF_REV:
                ent["revoked"] = True
        else:
            ent["kind"] = "regrant mask" if b.flags & sctx.SCF_TYPE_REGRANT_MASK else "mask"
        out.append(ent)
    name = obj.backing.pread(_BASE, 64).split(b"\0")[0].decode(errors="replace")
    return {"id": s.id_str(obj.id), "name": name, "gmask": perm_str(sctx.gmask(read)),
            "kuid": s.id_str(obj.meta().kuid), "entries": out}
