"""A persistent key-value store after Twizzler's kvdr (us/bin/twzutils/kvdr.c, reference §9).

Two persistent objects: an index, a hash table of 8-way buckets (64 bytes, one cache line),
each way a persistent pointer to a record in the data object, which holds 16-byte records
(8-byte key, 8-byte value) appended at a bump pointer. The bucket count is prime, as kvdr's
(1 982 627), and a key's bucket is the key modulo it; a full bucket spills into the next (linear
probing over buckets). The pointers cross objects through the index's FOT, as kvdr's do through
twz_ptr_swizzle.

kvdr hashes the key with FNV-1a before the modulo: eight multiply-and-xor rounds over its bytes,
one instruction each in C but 0.44 µs in Python, more than py-lmdb's whole lookup. A prime
modulus already spreads a fixed-width integer key, strided keys included. Reads and writes go through the objects'
memoryviews cast to 64-bit words; the two stores that order a put (the bump pointer, then the
bucket way) go through the runtime's store64, so each is one 8-byte store a kill -9 cannot tear.

Crash consistency without a log: a new record is written above the bump pointer, the bump
pointer moves, and only then does one aligned 8-byte store publish the record's pointer in its
bucket; an update of an existing key is one aligned 8-byte store of the value. A kill -9 at any
point leaves every put that returned in place and at worst one unreachable record. (Durability
against the machine's death would add a persist.flush per put, as kvdr would add CLWBs.)

One writer at a time, as in kvdr; readers in other processes see each put once it is published.

    twzrun examples/kv.py NAME new CAPACITY | put KEY VALUE | get KEY
                               | fill N [SEED] [--ack] | check N [SEED]
"""

import random
import struct
import sys

import libtwz
from libtwz import runtime as rt
from twzlinux.abi import constants as c

M64 = (1 << 64) - 1
WAYS = 8
HDR = 0x1000                    # index: magic, nbuckets, data (p-ptr) | data: magic, top
BUCKETS = 0x2000                # index: nbuckets * 64 bytes
RECORDS = 0x2000                # data: 16-byte records upward
# "kvdridx\x01": version 1 buckets by key % a prime (version 0, "kvdridx\0", used FNV-1a)
INDEX_MAGIC, DATA_MAGIC = 0x6B76647269647801, 0x6B76647264617400
_W_TOP = (HDR + 8) >> 3   # the data object's bump pointer, in 64-bit words


def _prime_from(n: int) -> int:
    """The least prime >= n (trial division: n is at most 2^24 buckets in 1 GiB)."""
    while n < 2 or any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


class KV:
    def __init__(self, index: libtwz.Object):
        self.index = index
        hdr = index.view()[HDR:HDR + 24].cast("Q")
        magic, self.nbuckets, data = hdr
        if magic != INDEX_MAGIC:
            hint = " (made by an older kv.py: recreate it)" if magic == INDEX_MAGIC - 1 else ""
            raise libtwz.TwzError(f"object {index.id} is not a kv index (magic {magic:#x}){hint}")
        nways = self.nbuckets * WAYS
        if not 0 < self.nbuckets or BUCKETS + 8 * nways > c.OBJ_TOPDATA:
            raise libtwz.TwzError(f"kv index {index.id}: bad bucket count {self.nbuckets}")
        self.data, _ = index.load_ptr(HDR + 16)
        # A way's pointer XORed with the data object's FOT bits is the record's offset; any
        # other pointer lands past the end of the data object's words (an IndexError).
        self._fb = data >> 30 << 30
        self._bq = index.view()[BUCKETS:BUCKETS + 8 * nways].cast("Q")
        self._dq = self.data.view().cast("Q")
        self._ibase, self._dbase = index.address + BUCKETS, self.data.address
        self.get = self._getter()

    @classmethod
    def create(cls, name: str, capacity: int) -> "KV":
        """A store for `capacity` keys: a bucket (eight ways) per key, so that most lookups
        visit one way. kvdr's table has two ways per key: in C a bucket is one cache line
        whichever way holds the key, but here each way visited costs a Python step and a cache
        miss on its record (measured at 1M keys against py-lmdb's 0.53 µs: 0.52 µs with two
        buckets per eight keys, 0.49 with eight). The price is 64 bytes of index per key."""
        nbuckets = _prime_from(max(2, capacity))
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

    def _find(self, key: int) -> tuple[int | None, int]:
        """(way, record): the word indexes of key's bucket way and of its record in the data
        object, or (the free way it would take, 0), or (None, 0) in a full table. Linear
        probing over buckets makes the ways to search simply the words from the key's bucket
        on, wrapping at the table's end."""
        bq, dq, fb = self._bq, self._dq, self._fb
        w, wrapped = key % self.nbuckets << 3, False
        while True:
            try:
                while ptr := bq[w]:
                    r = (ptr ^ fb) >> 3
                    if dq[r] == key:
                        return w, r
                    w += 1
                return w, 0
            except IndexError:
                if w < len(bq):
                    raise libtwz.TwzError(f"kv index {self.index.id}: way at "
                                          f"{BUCKETS + 8 * w:#x} points outside the data "
                                          "object") from None
                if wrapped:
                    return None, 0      # every way taken, none by key
                w, wrapped = 0, True

    def _getter(self):
        """get(key) -> value or None, as a closure over the store's views: _find's walk,
        inlined, with its constants in cells; the call, the tuple and the attribute loads a
        method would add are over a third of a lookup. The walk's exceptions (the table's
        end, a bad pointer) go to _find itself, which sorts them out."""
        bq, dq, fb, nbuckets, find = self._bq, self._dq, self._fb, self.nbuckets, self._find
        vq = self.data.view()[8:c.OBJ_MAXSIZE - 8].cast("Q")  # vq[r] is dq[r + 1]: a value

        def get(key: int) -> int | None:
            w = key % nbuckets << 3
            try:
                while ptr := bq[w]:
                    r = (ptr ^ fb) >> 3
                    if dq[r] == key:
                        return vq[r]
                    w += 1
                return None
            except IndexError:
                _, r = find(key)
                return vq[r] if r else None
        return get

    def put(self, key: int, value: int) -> None:
        if not (0 <= key <= M64 and 0 <= value <= M64):
            raise ValueError(f"kv keys and values are 64-bit unsigned: {key}, {value}")
        w, r = self._find(key)
        if r:
            rt.store64(self._dbase + 8 * r + 8, value)
            return
        if w is None:
            raise libtwz.TwzError(f"kv store {self.index.id} is full ({self.nbuckets} buckets "
                                  f"of {WAYS} ways): make a bigger one")
        dq = self._dq
        top = dq[_W_TOP]
        if top + 16 > c.OBJ_TOPDATA:
            raise libtwz.TwzError(f"kv data object {self.data.id} is full")
        dq[top >> 3], dq[(top >> 3) + 1] = key, value
        rt.store64(self._dbase + HDR + 8, top + 16)
        rt.store64(self._ibase + 8 * w, self._fb | top)

    def __len__(self) -> int:
        return (self._dq[_W_TOP] - RECORDS) // 16


def keys(n: int, seed: int = 1) -> list[int]:
    """n distinct 63-bit keys (63: sqlite's INTEGER, for the benchmark's baselines)."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add(rng.getrandbits(63))
    return list(out)


ARITY = {"new": (1, 1), "put": (2, 2), "get": (1, 1), "fill": (1, 2), "check": (1, 2)}


def main(argv: list[str]) -> int:
    ack = "--ack" in argv  # fill reports each put once it returned (the crash test)
    argv = [a for a in argv if a != "--ack"]
    usage = __doc__.rsplit("\n\n", 1)[1].strip()
    if len(argv) < 2 or argv[1] not in ARITY:
        print((f"kv: unknown command {argv[1]!r}\n" if len(argv) > 1 else "") + usage,
              file=sys.stderr)
        return 2
    name, cmd = argv[0], argv[1]
    try:
        args = [int(a, 0) for a in argv[2:]]
    except ValueError as e:
        print(f"kv: {e}\n{usage}", file=sys.stderr)
        return 2
    lo, hi = ARITY[cmd]
    if not lo <= len(args) <= hi:
        print(f"kv: {cmd} takes {lo if lo == hi else f'{lo} or {hi}'} numbers\n{usage}",
              file=sys.stderr)
        return 2
    try:
        return run(name, cmd, args, ack)
    except (libtwz.TwzError, ValueError) as e:
        print(f"kv: {e}", file=sys.stderr)
        return 1


def run(name: str, cmd: str, args: list[int], ack: bool) -> int:
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
    if cmd == "new":
        KV.create(name, args[0])
        return 0
    try:
        kv = KV.open(name)
    except libtwz.TwzError as e:
        raise libtwz.TwzError(f"{e}; make the store first: {name} new CAPACITY") from None
    if cmd == "put":
        kv.put(args[0], args[1])
        return 0
    if cmd == "get":
        v = kv.get(args[0])
        print(v if v is not None else "absent")
        return 0 if v is not None else 1
    n, seed = args[0], (args[1] if len(args) > 1 else 1)   # check
    bad = [k for k in keys(n, seed) if kv.get(k) != k ^ 0x5555]
    print(f"{n - len(bad)} of {n} present, {len(kv)} records")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
