"""Object IDs against BLAKE2b computed outside the implementation, by coreutils `b2sum -l 256`.

The hash inputs are spelled out as hex here (fields little-endian, per reference §2.3/§2.5)
and turned into bytes by `xxd -r -p` in a shell, so neither the input layout nor the hash comes
from twzlinux. The literal digests were computed the same way once, e.g.
    printf '%s' '<nonce hex><p_flags hex><kuid hex>' | xxd -r -p | b2sum -l 256
"""

import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from twzlinux.abi import constants as c
from twzlinux.kernel.ids import compute_id
from twzlinux.kernel.metainfo import Metainfo

ZERO16 = "00" * 16
NONCE = "0102030405060708090a0b0c0d0e0f10"
KUID = "1112131415161718191a1b1c1d1e1f20"
# A metainfo with flags MIF_SZ, p_flags HASHDATA|DFL_READ, fotentries 1, milen 192, sz 5.
MI_HEX = ("4f5a5754" "0100" "0500" "01000000" "c0000000" + ZERO16 + ZERO16
          + "0500000000000000" "0000000000000000")
FOTE_HEX = "aa" * 16 + "0400000000000000" "0000000000000000"  # id 0xaa.., flags FE_READ
MI_TAIL_ZEROS = c.OBJ_METAPAGE_SIZE - 64


def b2sum_of(shell_stream: str) -> bytes:
    out = subprocess.run(["sh", "-c", f"{{ {shell_stream} ; }} | b2sum -l 256"], check=True,
                         capture_output=True, text=True).stdout
    return bytes.fromhex(out.split()[0])


def xxd(hexstr: str) -> str:
    return f"printf '%s' '{hexstr}' | xxd -r -p"


def folded(digest: bytes) -> int:
    return int.from_bytes(bytes(digest[i] ^ digest[i + 16] for i in range(16)), "little")


def le(hexstr: str) -> int:
    return int.from_bytes(bytes.fromhex(hexstr), "little")


def hashdata_image():
    """Reader over an object image: "hello" as data, one FOT entry, the metainfo above."""
    regions = {c.OBJ_NULLPAGE_SIZE: b"hello",
               c.OBJ_METAINFO_OFFSET - 32: bytes.fromhex(FOTE_HEX),
               c.OBJ_METAINFO_OFFSET: bytes.fromhex(MI_HEX)}

    def read(off, n):
        buf = bytearray(n)
        for start, data in regions.items():
            lo, hi = max(off, start), min(off + n, start + len(data))
            if lo < hi:
                buf[lo - off:hi - off] = data[lo - start:hi - start]
        return bytes(buf)
    return read


def no_data(off, n):
    raise AssertionError("a non-HASHDATA ID must not read the object")


LITERAL = [
    # (nonce, p_flags, kuid, b2sum digest)
    (ZERO16, 0, ZERO16, "cf077d276686ba64c0404b9eb2d15556782113c5a1985f262b70f9964d3bbd7f"),
    (NONCE, c.MIP_DFL_READ | c.MIP_DFL_WRITE, KUID,
     "69fa738185ddf26d08aa71cb3e665fc4910eccef1925bfd35f8dbe86a2f2f8fd"),
]


@pytest.mark.parametrize("nonce,p_flags,kuid,digest", LITERAL)
def test_literal_vectors(nonce, p_flags, kuid, digest):
    mi = Metainfo(flags=0, p_flags=p_flags, nonce=le(nonce), kuid=le(kuid))
    assert compute_id(mi, no_data) == folded(bytes.fromhex(digest))


def test_literal_fold():
    # The fold of the first vector, worked out by hand from its digest's two halves.
    assert folded(bytes.fromhex(LITERAL[0][3])) == 0x29e8eaff08b230eb42e51ec7e26e26b7


def test_literal_hashdata_vector():
    mi = Metainfo.unpack(bytes.fromhex(MI_HEX))
    assert mi.pack() == bytes.fromhex(MI_HEX)
    assert compute_id(mi, hashdata_image()) == folded(bytes.fromhex(
        "42217c7650c123a9af2d2fbd167aa2fc616686d6ab83671f935716925c16beb5"))


def test_live_hashdata_vector():
    stream = "; ".join([xxd(ZERO16 + "0500" + ZERO16), "printf hello",
                        xxd(FOTE_HEX + MI_HEX), f"head -c {MI_TAIL_ZEROS} /dev/zero"])
    mi = Metainfo.unpack(bytes.fromhex(MI_HEX))
    assert compute_id(mi, hashdata_image()) == folded(b2sum_of(stream))


@settings(max_examples=15, deadline=None)
@given(nonce=st.binary(min_size=16, max_size=16), kuid=st.binary(min_size=16, max_size=16),
       p_flags=st.integers(0, 0xFFFF).filter(lambda f: not f & c.MIP_HASHDATA))
def test_live_header_vectors(nonce, kuid, p_flags):
    stream = xxd(nonce.hex() + p_flags.to_bytes(2, "little").hex() + kuid.hex())
    mi = Metainfo(flags=0, p_flags=p_flags, nonce=int.from_bytes(nonce, "little"),
                  kuid=int.from_bytes(kuid, "little"))
    assert compute_id(mi, no_data) == folded(b2sum_of(stream))


def test_hashdata_covers_data_and_tail_only():
    mi = Metainfo.unpack(bytes.fromhex(MI_HEX))
    base = compute_id(mi, hashdata_image())
    read = hashdata_image()

    def beyond_sz(off, n):  # bytes past sz and below the tail do not count
        buf = bytearray(read(off, n))
        if off <= c.OBJ_NULLPAGE_SIZE + 5 < off + n:
            buf[c.OBJ_NULLPAGE_SIZE + 5 - off] = 0xFF
        return bytes(buf)
    assert compute_id(mi, beyond_sz) == base
    mi.sz = 4
    assert compute_id(mi, read) != base
