"""Security-context KSOs in Twizzler's layout (`struct secctx`, reference §3.4), and the
effective-permission formula of `__lookup_perms`.

Offsets below are object-relative (from the object base, slot offset 0x1000), as in the C
struct: kso_hdr (0), userdata[512] (1040; its first u64 is the bump allocator's next free slot
offset for cap/dlg items, as libtwz's sectest keeps an allocator there), gmask u32 (1552), flags
u32 (1556), nbuckets u64 (1560), nchain u64 (1568), buckets[] (1584, 48 bytes each). Bucket =
target % nbuckets; overflow entries are in [nbuckets, nbuckets + nchain), linked by `chain`
(0 = end). A bucket's `data` is the slot offset of its cap/dlg in the same object, or 0 for a
mask entry.

Everything read from a context object is untrusted (a program with WRITE on it may scribble):
sizes are bounded, chain walks are bounded, and items are parsed defensively.
"""

import struct
from dataclasses import dataclass
from typing import Callable, Iterator

from twzlinux.abi import constants as c

from .security import HDR, SCP_ALL, Gates, Verifier, parse

BASE = c.OBJ_NULLPAGE_SIZE
ALLOC, GMASK, FLAGS, NBUCKETS, NCHAIN, BUCKETS = 1040, 1552, 1556, 1560, 1568, 1584
BUCKET = struct.Struct("<16sQQIHHII")  # target, data, flags, gatemask{off,len,align}, pmask, chain
assert BUCKET.size == 48
SCF_GATE = 2
SCF_TYPE_REGRANT_MASK = 2
SCF_REV = 4
DFL_NBUCKETS, DFL_NCHAIN = 1024, 4096
_MAX_ENTRIES = 1 << 20
_MAX_ITEM = 1 << 16
_DFL_RWX = c.MIP_DFL_READ | c.MIP_DFL_WRITE | c.MIP_DFL_EXEC

Read = Callable[[int, int], bytes]      # (slot offset, n) -> bytes
Write = Callable[[int, bytes], None]    # (slot offset, data)


@dataclass
class Bucket:
    index: int
    target: int
    data: int
    flags: int
    gatemask: Gates
    pmask: int
    chain: int

    def pack(self) -> bytes:
        g = self.gatemask
        return BUCKET.pack(self.target.to_bytes(16, "little"), self.data, self.flags, g.offset,
                           g.length, g.align, self.pmask, self.chain)


def _u64(read: Read, off: int) -> int:
    return int.from_bytes(read(BASE + off, 8), "little")


def geometry(read: Read) -> tuple[int, int]:
    """(nbuckets, nchain), validated so that the bucket array fits in the object."""
    nb, nchain = _u64(read, NBUCKETS), _u64(read, NCHAIN)
    if not 0 < nb or nb + nchain > _MAX_ENTRIES:
        raise ValueError(f"not a security context (nbuckets {nb}, nchain {nchain})")
    return nb, nchain


def _bucket(read: Read, i: int) -> Bucket:
    t, data, flags, goff, glen, galign, pmask, chain = BUCKET.unpack(
        read(BASE + BUCKETS + i * BUCKET.size, BUCKET.size))
    return Bucket(i, int.from_bytes(t, "little"), data, flags, Gates(goff, glen, galign), pmask,
                  chain)


def _items_start(nb: int, nchain: int) -> int:
    end = BASE + BUCKETS + (nb + nchain) * BUCKET.size
    return (end + 0xFFF) & ~0xFFF


def init(write: Write, name: str, nbuckets: int = DFL_NBUCKETS, nchain: int = DFL_NCHAIN,
         gmask: int = 0) -> None:
    """Lay out an empty context (the object is fresh, so the buckets read as zeros)."""
    write(BASE, name.encode()[:c.KSO_NAME_MAXLEN - 1].ljust(c.KSO_NAME_MAXLEN, b"\0"))
    write(BASE + ALLOC, _items_start(nbuckets, nchain).to_bytes(8, "little"))
    write(BASE + GMASK, struct.pack("<II", gmask, 0))
    write(BASE + NBUCKETS, struct.pack("<QQ", nbuckets, nchain))


def set_gmask(write: Write, gmask: int) -> None:
    write(BASE + GMASK, struct.pack("<I", gmask))


def gmask(read: Read) -> int:
    return struct.unpack("<I", read(BASE + GMASK, 4))[0]


def chain_of(read: Read, target: int) -> Iterator[Bucket]:
    """The entries for `target`: the head bucket and its chain, bounded against loops."""
    nb, nchain = geometry(read)
    i = target % nb
    for _ in range(nb + nchain + 1):
        b = _bucket(read, i)
        if b.target == target:
            yield b
        if not b.chain or b.chain >= nb + nchain:
            return
        i = b.chain


def entries(read: Read) -> Iterator[Bucket]:
    nb, nchain = geometry(read)
    for i in range(nb + nchain):
        b = _bucket(read, i)
        if b.target:
            yield b


def read_item(read: Read, off: int) -> bytes:
    """The cap/dlg at slot offset `off`, bounded (ValueError when it cannot be one)."""
    if not BASE <= off < c.OBJ_METAINFO_OFFSET - HDR.size:
        raise ValueError(f"item offset {off:#x} outside the object")
    hdr = read(off, HDR.size)
    slen, last = struct.unpack_from("<HH", hdr, 68)
    magic = struct.unpack_from("<H", hdr, 60)[0]
    n = HDR.size + slen + (last if magic == 0xDF55 else 0)
    if n > _MAX_ITEM or off + n > c.OBJ_METAINFO_OFFSET:
        raise ValueError("item too long")
    return read(off, n)


def _store(read: Read, write: Write, bucket: Bucket) -> None:
    """Place a new entry for bucket.target: in its head bucket if free, else at the end of the
    head's chain in a free overflow entry."""
    nb, nchain = geometry(read)
    head = _bucket(read, bucket.target % nb)
    if not head.target and not head.chain:
        bucket.index = head.index
    else:
        tail = head
        for _ in range(nb + nchain):
            if not tail.chain:
                break
            tail = _bucket(read, tail.chain)
        free = next((i for i in range(nb, nb + nchain) if not _bucket(read, i).target), None)
        if free is None:
            raise ValueError("security context full (no free chain entry)")
        bucket.index = free
        tail.chain = free
        write(BASE + BUCKETS + tail.index * BUCKET.size, tail.pack())
    bucket.chain = 0
    write(BASE + BUCKETS + bucket.index * BUCKET.size, bucket.pack())


def add(read: Read, write: Write, target: int, item: bytes, pmask: int = SCP_ALL,
        gatemask: Gates | None = None) -> Bucket:
    """Add a cap or dlg for `target` (copied into the object), limited by `pmask`."""
    parse(item)
    off = _u64(read, ALLOC)
    if off + len(item) > c.OBJ_METAINFO_OFFSET or off < BASE:
        raise ValueError("security context full (no room for the item)")
    write(off, item)
    write(BASE + ALLOC, (off + len(item) + 7 & ~7).to_bytes(8, "little"))
    b = Bucket(0, target, off, SCF_GATE if gatemask else 0, gatemask or Gates(), pmask, 0)
    _store(read, write, b)
    return b


def add_mask(read: Read, write: Write, target: int, pmask: int, regrant: bool = False) -> Bucket:
    """A data-less entry: a mask removing `pmask` from target's rights here, or (regrant) a
    regrant mask giving back default permissions that the global mask removed."""
    b = Bucket(0, target, 0, SCF_TYPE_REGRANT_MASK if regrant else 0, Gates(), pmask, 0)
    _store(read, write, b)
    return b


def remove(read: Read, write: Write, target: int) -> int:
    """Drop every entry for `target` (relinking the others); returns how many went."""
    kept = [b for b in entries(read) if b.target != target]
    gone = sum(1 for b in entries(read) if b.target == target)
    nb, nchain = geometry(read)
    write(BASE + BUCKETS, bytes((nb + nchain) * BUCKET.size))
    for b in kept:
        _store(read, write, b)
    return gone


@dataclass
class Lookup:
    perms: int
    gates: Gates | None
    why: str            # why a capability present gave nothing ("" if none or all fine)
    until: int = 0      # when a capability's validity starts or ends (ns; 0 = never)


def lookup(read: Read, sctx_id: int, target: int, p_flags: int, verifier: Verifier) -> Lookup:
    """Twizzler's __lookup_perms:
    EP = perms | (((dfl & ~gmask) | (dfl & remask)) & ~mask), dfl = p_flags & (R|W|X)."""
    perms = mask = remask = until = 0
    gates = None
    why = []
    for b in chain_of(read, target):
        if b.data:
            if b.flags & SCF_REV:
                why.append("revoked in this context")
                continue
            try:
                item = read_item(read, b.data)
            except ValueError as e:
                why.append(str(e))
                continue
            p, g, reason, t = verifier.evaluate(item, target, sctx_id)
            until = min(until, t) if until and t else until or t
            if reason:
                why.append(reason)
            perms |= p & b.pmask
            if g is not None:
                g = g.limit(b.gatemask) if b.flags & SCF_GATE else g
                gates = g if gates is None else gates.limit(g)
        elif b.flags & SCF_TYPE_REGRANT_MASK:
            remask |= b.pmask
        else:
            mask |= b.pmask
    dfl = p_flags & _DFL_RWX
    ep = perms | (((dfl & ~gmask(read)) | (dfl & remask)) & ~mask)
    return Lookup(ep, gates, "; ".join(why), until)
