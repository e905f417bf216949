"""Object ID derivation, exactly Twizzler's `obj_compute_id` (reference §2.5).

BLAKE2b-256 over nonce (16 bytes LE), p_flags (u16 LE) and kuid (16 bytes LE); with
MIP_HASHDATA also over the data [0x1000, 0x1000 + sz) and the metadata tail (FOT and metainfo
page) to the end of the object. The 32-byte digest is folded to 16 (h[i] ^ h[i+16]) and read
as a little-endian 128-bit integer.
"""

import hashlib
from typing import Callable, Iterator

from twzlinux.abi import constants as c
from twzlinux.abi.structs import id_pack

from .metainfo import Metainfo

_CHUNK = 1 << 20


def hashed_ranges(mi: Metainfo) -> list[tuple[int, int]]:
    """The (offset, length) ranges of the object image hashed after the header fields."""
    if not mi.p_flags & c.MIP_HASHDATA:
        return []
    sz = min(mi.sz, c.OBJ_DATA_SIZE)
    tail = c.OBJ_METAPAGE_SIZE + c.OBJ_FOTE_SIZE * min(mi.fotentries, c.OBJ_MAXFOTE)
    return [(c.OBJ_NULLPAGE_SIZE, sz), (c.OBJ_MAXSIZE - tail, tail)]


def _chunks(read: Callable[[int, int], bytes], off: int, n: int) -> Iterator[bytes]:
    end = off + n
    while off < end:
        step = min(_CHUNK, end - off)
        yield read(off, step)
        off += step


def fold(digest: bytes) -> int:
    """id[i] = h[i] ^ h[i+16], read little-endian: the XOR of the two halves as integers."""
    return int.from_bytes(digest[:16], "little") ^ int.from_bytes(digest[16:32], "little")


def compute_id(mi: Metainfo, read: Callable[[int, int], bytes]) -> int:
    """The ID of an object whose metainfo is `mi` and whose image `read(offset, n)` returns."""
    h = hashlib.blake2b(digest_size=32)
    h.update(id_pack(mi.nonce) + (mi.p_flags & 0xFFFF).to_bytes(2, "little") + id_pack(mi.kuid))
    for off, n in hashed_ranges(mi):
        for chunk in _chunks(read, off, n):
            h.update(chunk)
    return fold(h.digest())
