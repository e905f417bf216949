"""A persistent key-value store after Twizzler's kvdr (us/bin/twzutils/kvdr.c, reference §9).

Two persistent objects: an index, a hash table of 8-way buckets (64 bytes, one cache line),
each way a persistent pointer to a record in the data object, which holds 16-byte records
(8-byte key, 8-byte value) appended at a bump pointer. Keys hash with 64-bit FNV-1a over their
8 little-endian bytes; a full bucket spills into the next (linear probing over buckets). The
pointers cross objects through the index's FOT, as kvdr's do through twz_ptr_swizzle.

Crash consistency without a log: a new record is written above the bump pointer, the bump
pointer moves, and only then does one aligned 8-byte store publish the record's pointer in its
bucket; an update of an existing key is one aligned 8-byte store of the value. A kill -9 at any
point leaves every put that returned in place and at worst one unreachable record. (Durability
against the machine's death would add a persist.flush per put, as kvdr would add CLWBs.)

One writer at a time, as in kvdr; readers in other processes see each put once it is published.

    twzrun examples/kv.py NAME put KEY VALUE | get KEY | fill N [SEED] [--ack] | check N [SEED]
"""

import random
import struct
import sys

import libtwz
from libtwz import runtime as rt
from twzlinux.abi import constants as c

FNV_OFFSET, FNV_PRIME, M64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
WAYS = 8
HDR = 0x1000                    # index: magic, nbuckets, data (p-ptr) | data: magic, top
BUCKETS = 0x2000                # index: nbuckets * 64 bytes
RECORDS = 0x2000                # data: 16-byte records upward
INDEX_MAGIC, DATA_MAGIC = 0x6B76647269647800, 0x6B76647264617400  # "kvdridx", "kvdrdat"
_LOCAL = c.OBJ_MAXSIZE - 1
_BUCKET = struct.Struct(f"<{WAYS}Q")
_RECORD = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")


def fnv1a(key: int, mask: int = M64) -> int:
    """64-bit FNV-1a of the key's 8 bytes, & mask. A low-bits mask is applied all along: the
    low bits of a product depend only on the low bits of its factors, and Python is faster on
    small ints."""
    h, prime = FNV_OFFSET & mask, FNV_PRIME & mask
    for b in key.to_bytes(8, "little"):
        h = ((h ^ b) * prime) & mask
    return h


class KV:
    def __init__(self, index: libtwz.Object):
        self.index = index
        magic, self.nbuckets = struct.unpack_from("<QQ", index.view(), HDR)
        if magic != INDEX_MAGIC:
            raise libtwz.TwzError(f"object {index.id} is not a kv index (magic {magic:#x})")
        self.mask = self.nbuckets - 1
        self.data, _ = index.load_ptr(HDR + 16)
        self.fot = _U64.unpack_from(index.view(), HDR + 16)[0] >> 30
        self._iview, self._dview = index.view(), self.data.view()
        self._ibase, self._dbase = index.address, self.data.address

    @classmethod
    def create(cls, name: str, capacity: int) -> "KV":
        """A store for `capacity` keys: buckets for twice that, as kvdr sizes its table."""
        nbuckets = 1 << max(1, (2 * capacity - 1) // WAYS).bit_length()
        if BUCKETS + 64 * nbuckets > c.OBJ_TOPDATA or RECORDS + 16 * capacity > c.OBJ_TOPDATA:
            raise ValueError(f"{capacity} keys do not fit in a 1 GiB object")
        data = libtwz.Object.create(persist=True)
        data.write(HDR, struct.pack("<QQ", DATA_MAGIC, RECORDS))
        index = libtwz.Object.create(persist=True)
        index.write(HDR, struct.pack("<QQ", INDEX_MAGIC, nbuckets))
        index.store_ptr(HDR + 16, data, HDR, write=True)
        libtwz.names.assign(name, index.id)   # named last: a store is whole once it has a name
        return cls(index)

    @classmethod
    def open(cls, name: str) -> "KV":
        return cls(libtwz.Object.open(name, write=True))

    def _slot(self, key: int):
        """(bucket slot offset, record offset or 0): where key is, or the free way for it."""
        b = fnv1a(key, self.mask)
        iview, dview, mask = self._iview, self._dview, self.mask
        for probe in range(self.nbuckets):
            off = BUCKETS + (((b + probe) & mask) << 6)
            for way, ptr in enumerate(_BUCKET.unpack_from(iview, off)):
                if not ptr:
                    return off + 8 * way, 0
                if ptr >> 30 != self.fot:
                    raise libtwz.TwzError(f"kv index {self.index.id}: way at {off:#x} points "
                                          "outside the data object")
                if _U64.unpack_from(dview, ptr & _LOCAL)[0] == key:
                    return off + 8 * way, ptr & _LOCAL
        raise libtwz.TwzError(f"kv store {self.index.id} is full ({self.nbuckets} buckets)")

    def get(self, key: int) -> int | None:
        # The common case inline: the key in its home bucket, or the bucket not full.
        dview, fot = self._dview, self.fot
        for ptr in _BUCKET.unpack_from(self._iview, BUCKETS + (fnv1a(key, self.mask) << 6)):
            if not ptr:
                return None
            if ptr >> 30 == fot:
                k, v = _RECORD.unpack_from(dview, ptr & _LOCAL)
                if k == key:
                    return v
        _, rec = self._slot(key)
        return _RECORD.unpack_from(dview, rec)[1] if rec else None

    def put(self, key: int, value: int) -> None:
        slot, rec = self._slot(key)
        if rec:
            rt.store64(self._dbase + rec + 8, value)
            return
        top = _U64.unpack_from(self._dview, HDR + 8)[0]
        if top + 16 > c.OBJ_TOPDATA:
            raise libtwz.TwzError(f"kv data object {self.data.id} is full")
        _RECORD.pack_into(self._dview, top, key, value)
        rt.store64(self._dbase + HDR + 8, top + 16)
        rt.store64(self._ibase + slot, self.fot << 30 | top)

    def __len__(self) -> int:
        return (_U64.unpack_from(self._dview, HDR + 8)[0] - RECORDS) // 16


def keys(n: int, seed: int = 1) -> list[int]:
    """n distinct 63-bit keys (63: sqlite's INTEGER, for the benchmark's baselines)."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add(rng.getrandbits(63))
    return list(out)


def main(argv: list[str]) -> int:
    ack = "--ack" in argv  # fill reports each put once it returned (the crash test)
    argv = [a for a in argv if a != "--ack"]
    if len(argv) < 2:
        print(__doc__.rsplit("\n\n", 1)[1].strip(), file=sys.stderr)
        return 2
    name, cmd, args = argv[0], argv[1], [int(a) for a in argv[2:]]
    if cmd == "fill":
        n, seed = args[0], (args[1] if len(args) > 1 else 1)
        try:
            kv = KV.open(name)
        except libtwz.TwzError:
            kv = KV.create(name, n)
        for k in keys(n, seed):
            kv.put(k, k ^ 0x5555)
            if ack:
                print(k, flush=True)
        return 0
    kv = KV.open(name)
    if cmd == "put":
        kv.put(args[0], args[1])
    elif cmd == "get":
        v = kv.get(args[0])
        print(v if v is not None else "absent")
        return 0 if v is not None else 1
    elif cmd == "check":
        n, seed = args[0], (args[1] if len(args) > 1 else 1)
        bad = [k for k in keys(n, seed) if kv.get(k) != k ^ 0x5555]
        print(f"{n - len(bad)} of {n} present, {len(kv)} records")
        return 1 if bad else 0
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
