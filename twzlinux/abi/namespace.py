"""Twizzler's namespace object format (reference §4.8), as pure functions over bytes.

A namespace object holds at its base (slot offset 0x1000) a `twz_namespace_hdr` {u64 magic,
u32 version, u32 flags} followed by `twz_name_ent` records: a packed 32-byte header {objid id,
u32 flags, u16 resv0, u8 type, u8 resv1, u64 dlen} and `dlen` bytes of name (NUL-terminated,
then for a symlink the NUL-terminated target), padded so each record is (32 + dlen + 15) & ~15
bytes. A record with dlen == 0 ends the list; metainfo.sz holds the used length. Offsets here
are from the namespace base. Names are str, decoded with surrogateescape so any bytes round-trip.
"""

from dataclasses import dataclass
from typing import Iterator

from .constants import NAME_ENT_SYMLINK, NAME_ENT_VALID, NAME_ENT_NAMESPACE, NAMESPACE_MAGIC
from .structs import NAME_ENT, NAMESPACE_HDR, id_pack, id_unpack

ENTRIES_OFFSET = NAMESPACE_HDR.size
NAMESPACE_VERSION = 0  # twz_hier_namespace_new leaves the version zero


@dataclass(frozen=True)
class NameEntry:
    name: str
    id: int
    type: int
    flags: int
    target: str | None
    reclen: int

    @property
    def valid(self) -> bool:
        return bool(self.flags & NAME_ENT_VALID)


def _cstr(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"NUL in name {text!r}")
    return raw + b"\0"


def record_length(dlen: int) -> int:
    return (NAME_ENT.size + dlen + 15) & ~15


def encode_entry(name: str, oid: int, type: int, target: str | None = None,
                 flags: int = NAME_ENT_VALID) -> bytes:
    """One padded record. A symlink (type NAME_ENT_SYMLINK) needs a target; others take none."""
    if not name:
        raise ValueError("empty name")
    if (type == NAME_ENT_SYMLINK) != (target is not None):
        raise ValueError("a target goes with a symlink, and only with one")
    data = _cstr(name) + (_cstr(target) if target is not None else b"")
    rec = NAME_ENT.pack(id_pack(oid), flags, 0, type, 0, len(data)) + data
    return rec.ljust(record_length(len(data)), b"\0")


def header(version: int = NAMESPACE_VERSION, flags: int = 0) -> bytes:
    return NAMESPACE_HDR.pack(NAMESPACE_MAGIC, version, flags)


def is_namespace(buf: bytes) -> bool:
    return len(buf) >= NAMESPACE_HDR.size and NAMESPACE_HDR.unpack_from(buf)[0] == NAMESPACE_MAGIC


def iter_entries(buf: bytes, start: int = ENTRIES_OFFSET) -> Iterator[tuple[int, NameEntry]]:
    """(offset, entry) for each record from `start` up to the terminator or the end of `buf`,
    invalid (removed) entries included so that callers can reuse their space."""
    off = start
    while off + NAME_ENT.size <= len(buf):
        raw_id, flags, _, type, _, dlen = NAME_ENT.unpack_from(buf, off)
        if dlen == 0:
            return
        data = bytes(buf[off + NAME_ENT.size:off + NAME_ENT.size + dlen])
        if len(data) < dlen or b"\0" not in data:
            raise ValueError(f"namespace record at {off:#x} runs past the buffer")
        name, _, rest = data.partition(b"\0")
        target = rest.partition(b"\0")[0] if type == NAME_ENT_SYMLINK else None
        reclen = record_length(dlen)
        yield off, NameEntry(name.decode("utf-8", "surrogateescape"), id_unpack(raw_id), type,
                             flags, None if target is None
                             else target.decode("utf-8", "surrogateescape"), reclen)
        off += reclen


def namespace_bytes(self_id: int, parent_id: int) -> bytes:
    """A new namespace's contents: header, "." and "..". Its length is the used size (sz)."""
    return (header() + encode_entry(".", self_id, NAME_ENT_NAMESPACE)
            + encode_entry("..", parent_id, NAME_ENT_NAMESPACE))
