"""Names: Twizzler's hierarchical namespace objects (twz/hier.h), as a library.

The root namespace's ID comes from TWZNAME, which twzd sets for every program; twzd keeps that
root persistent, so names outlive programs and restarts. A namespace object holds the header
at its base (slot offset 0x1000) and 16-byte-aligned `twz_name_ent` records after it, ended
by a zero `dlen`; `metainfo.sz` tracks the used length. The record codec is
`twzlinux.abi.namespace`, shared with the kernel that builds the root.

Concurrent writers in different processes serialise on a lock bit: bit 31 of the header's
`flags` word, which Twizzler leaves unused, with the holder's pid in bits 0-30 so that a
writer killed while holding it does not wedge the namespace (a personality addition). A record
becomes visible only when `sz` covers it, so a writer killed half way leaves nothing readers see.
"""

import errno
import os
import struct

from twzlinux.abi import constants as c
from twzlinux.abi import namespace as fmt
from twzlinux.abi import structs as st

from . import runtime as rt
from .errors import syscall_error
from .ids import ObjID
from .plock import PidLock

BASE = c.OBJ_NULLPAGE_SIZE
_LOCK_BIT, _PID_SHIFT = 1 << 63, 32  # of the u64 at BASE+8: flags bit 31, pid in bits 0-30
_ENTRIES = BASE + st.NAMESPACE_HDR.size
_Q = struct.Struct("<Q")


def root_id() -> int:
    text = os.environ.get("TWZNAME")
    if not text:
        raise syscall_error(errno.ENOENT, "no root namespace: TWZNAME is not set (run the "
                                          "program with twzrun)")
    return ObjID.parse(text)


def _components(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    for p in parts:
        if len(p.encode()) > 255:
            raise syscall_error(errno.ENAMETOOLONG, f"name component {p[:32]!r}... is too long")
    return parts


def _open_ns(oid: int, *, write: bool = False):
    from .object import Object
    ns = Object.open(oid, write=write)
    magic = _Q.unpack_from(ns.view(), BASE)[0]
    if magic != c.NAMESPACE_MAGIC:
        raise syscall_error(errno.ENOTDIR, f"object {ns.id} is not a namespace "
                                           f"(magic {magic:#x})")
    return ns


def _entries(ns):
    """Records of a namespace object: (offset from the object base, entry)."""
    used = max(ns.meta.sz, st.NAMESPACE_HDR.size)
    yield from fmt.iter_entries(ns.view()[BASE:BASE + used])


def _find(ns, name: str):
    for off, ent in _entries(ns):
        if ent.flags & c.NAME_ENT_VALID and ent.name == name:
            return off, ent
    return None


def _walk(parts: list[str], *, follow_last: bool = True, depth: int = 0):
    """Resolve path components from the root: the final entry's (id, type)."""
    if depth > c.NAME_MAX_DEPTH:
        raise syscall_error(errno.ELOOP, "too many levels of symbolic links")
    cur = root_id()
    typ = c.NAME_ENT_NAMESPACE
    for i, part in enumerate(parts):
        if typ != c.NAME_ENT_NAMESPACE:
            raise syscall_error(errno.ENOTDIR, f"{'/'.join(parts[:i])!r} is not a namespace")
        hit = _find(_open_ns(cur), part)
        if hit is None:
            raise syscall_error(errno.ENOENT, f"no name /{'/'.join(parts[:i + 1])}")
        ent = hit[1]
        if ent.type == c.NAME_ENT_SYMLINK and (follow_last or i < len(parts) - 1):
            target = _components(ent.target) + parts[i + 1:]
            return _walk(target, follow_last=follow_last, depth=depth + 1)
        cur, typ = ent.id, ent.type
    return cur, typ


def resolve(path: str) -> int:
    """The object ID a name refers to."""
    return ObjID(_walk(_components(path))[0])


def _Locked(ns) -> PidLock:
    return PidLock(ns.address + BASE + 8, _LOCK_BIT, _PID_SHIFT)


def _append(ns, name: str, oid: int, typ: int, target: str | None = None) -> None:
    with _Locked(ns):
        if _find(ns, name) is not None:
            raise syscall_error(errno.EEXIST, f"the name {name!r} exists already in namespace "
                                              f"{ns.id}; open it, or remove it first")
        used = max(ns.meta.sz, st.NAMESPACE_HDR.size)
        rec = fmt.encode_entry(name, oid, typ, target)
        if BASE + used + len(rec) + st.NAME_ENT.size > c.OBJ_TOPDATA:
            raise syscall_error(errno.ENOSPC, f"namespace {ns.id} is full")
        # The record goes in invisible (flags 0), then becomes VALID, then sz covers it, so a
        # reader never sees half a record.
        flags_at = BASE + used + 16
        ns.write(BASE + used, rec[:16] + b"\0" * 4 + rec[20:])
        rt.fetch_or64(ns.address + flags_at, c.NAME_ENT_VALID)
        _set_size(ns, used + len(rec))


def _set_size(ns, size: int) -> None:
    meta = c.OBJ_METAINFO_OFFSET
    flags = struct.unpack("<H", ns.read(meta + 4, 2))[0]
    ns.write(meta + 48, _Q.pack(size))
    ns.write(meta + 4, struct.pack("<H", flags | c.MIF_SZ))


def _new_namespace(parent: int):
    from .object import Object
    ns = Object.create(persist=True, tied=False)
    ns.write(BASE, fmt.namespace_bytes(ns.id, parent))
    _set_size(ns, len(fmt.namespace_bytes(ns.id, parent)))
    return ns


def _parent(parts: list[str], *, create: bool):
    """The namespace that holds the last component, creating missing ones when asked."""
    cur = root_id()
    for i, part in enumerate(parts[:-1]):
        ns = _open_ns(cur, write=create)
        hit = _find(ns, part)
        if hit is None:
            if not create:
                raise syscall_error(errno.ENOENT, f"no namespace /{'/'.join(parts[:i + 1])}")
            child = _new_namespace(cur)
            try:
                _append(ns, part, child.id, c.NAME_ENT_NAMESPACE)
            except BaseException:
                child.delete()
                raise
            cur = child.id
        else:
            if hit[1].type == c.NAME_ENT_SYMLINK:
                cur = _walk(parts[:i + 1])[0]
            elif hit[1].type != c.NAME_ENT_NAMESPACE:
                raise syscall_error(errno.ENOTDIR, f"/{'/'.join(parts[:i + 1])} is not a "
                                                   "namespace")
            else:
                cur = hit[1].id
    return _open_ns(cur, write=True)


def assign(path: str, oid: int, *, kind: int = c.NAME_ENT_REGULAR, target: str | None = None):
    """Give object `oid` the name `path` (Twizzler's twz_name_assign); missing parent
    namespaces are created, persistent, like `mkdir -p`."""
    parts = _components(path)
    if not parts:
        raise syscall_error(errno.EINVAL, "cannot assign the root name '/'")
    _append(_parent(parts, create=True), parts[-1], oid, kind, target)


def symlink(path: str, target: str) -> None:
    assign(path, 0, kind=c.NAME_ENT_SYMLINK, target=target)


def mkdir(path: str) -> ObjID:
    parts = _components(path)
    parent = _parent(parts, create=True)
    ns = _new_namespace(parent.id)
    _append(parent, parts[-1], ns.id, c.NAME_ENT_NAMESPACE)
    return ns.id


def remove(path: str) -> None:
    """Remove a name (the object itself is untouched)."""
    parts = _components(path)
    ns = _parent(parts, create=False)
    with _Locked(ns):
        hit = _find(ns, parts[-1])
        if hit is None:
            raise syscall_error(errno.ENOENT, f"no name {path}")
        rt.fetch_and64(ns.address + BASE + hit[0] + 16, ~c.NAME_ENT_VALID & (2**64 - 1))


def listdir(path: str = "/") -> list:
    """(name, ObjID, type) for each valid name in a namespace, '.' and '..' left out."""
    oid, typ = _walk(_components(path))
    if typ != c.NAME_ENT_NAMESPACE:
        raise syscall_error(errno.ENOTDIR, f"{path} is not a namespace")
    return [(e.name, ObjID(e.id), e.type) for _, e in _entries(_open_ns(oid))
            if e.flags & c.NAME_ENT_VALID and e.name not in (".", "..")]
