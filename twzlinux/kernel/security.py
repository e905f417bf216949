"""Keys, capabilities and delegations in Twizzler's layouts (reference §3.4), signed anew.

`struct sccap` and `struct scdlg` are Twizzler's, byte for byte; only the crypto differs:
Twizzler signs with DSA over SHA-1 (`SCHASH_SHA1 0`, `SCENC_DSA 0`), which is broken. We sign
with ECDSA P-256 over SHA-256 and record it in the fields Twizzler reserves for the choice:
`htype = SCHASH_SHA256 (1)`, `etype = SCENC_ECDSA_P256 (1)`. The signature is the raw
`r || s` (64 bytes), so `slen` is known before signing and the signed header is stable.

What is signed, as in Twizzler: a cap's 72-byte header (with `slen` set); a dlg's header followed
by its `data` (the nested cap or dlg). The verification key is the public-key object named by
the target's `metainfo.kuid` for a cap, by the delegator's for a dlg.

Deviations: revocation times are checked (Twizzler never did): an item is valid from
`rev.create` (ns since the epoch, 0 = always) until `rev.valid` (0 = forever). Verified
signatures are cached, keyed by the exact signed bytes and signature, so an altered byte misses
the cache and is verified (and refused) afresh.
"""

import struct
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)

SCP_READ, SCP_WRITE, SCP_EXEC, SCP_USE, SCP_DEL = 0x4, 0x8, 0x10, 0x20, 0x40
SCP_CD = 0x1000
SCP_ALL = SCP_READ | SCP_WRITE | SCP_EXEC | SCP_USE | SCP_DEL | SCP_CD
PERM_NAMES = {SCP_READ: "READ", SCP_WRITE: "WRITE", SCP_EXEC: "EXEC", SCP_USE: "USE",
              SCP_DEL: "DEL", SCP_CD: "CD"}
PERM_LETTERS = {"R": SCP_READ, "W": SCP_WRITE, "X": SCP_EXEC, "U": SCP_USE, "D": SCP_DEL,
                "C": SCP_CD}

SC_CAP_MAGIC = 0xCA55
SC_DLG_MAGIC = 0xDF55
SCHASH_SHA1, SCHASH_SHA256 = 0, 1          # SHA1 is Twizzler's; we only accept SHA256
SCENC_DSA, SCENC_ECDSA_P256 = 0, 1         # DSA is Twizzler's; we only accept ECDSA P-256
SIG_LEN = 64
TWZ_KEY_PRI = 1

# target/delegatee, accessor/delegator, rev {create, valid}, gates {offset, length, align},
# perms/mask, magic, flags, htype, etype, slen, pad/dlen
HDR = struct.Struct("<16s16sQQIHHIHHHHHH")
assert HDR.size == 72
MAGIC_OFFSET = 60
KEY_HDR = struct.Struct("<QQII")           # keydata (object offset), keydatalen, type, flags

_MAX_DEPTH = 16                            # longest delegation chain we follow


def perm_str(perms: int) -> str:
    return "|".join(n for b, n in PERM_NAMES.items() if perms & b) or "none"


def parse_perms(text: str) -> int:
    """'RW', 'RWXUDC' (letters) or a number."""
    if text.isdigit() or text.startswith("0x"):
        return int(text, 0)
    try:
        return sum(PERM_LETTERS[ch] for ch in set(text.upper()))
    except KeyError as e:
        raise ValueError(f"unknown permission letter {e} (use R W X U D C)") from None


@dataclass(frozen=True)
class Gates:
    offset: int = 0
    length: int = 0
    align: int = 0

    def contains(self, off: int) -> bool:
        """Twizzler's __in_gate: inside [offset, offset+length) and aligned to 2^align."""
        return self.offset <= off < self.offset + self.length and off % (1 << self.align) == 0

    def limit(self, other: "Gates | None") -> "Gates":
        """The intersection (__limit_gates): what both allow."""
        if other is None or not other.length:
            return self
        if not self.length:
            return other
        lo = max(self.offset, other.offset)
        hi = min(self.offset + self.length, other.offset + other.length)
        return Gates(lo, max(hi - lo, 0), max(self.align, other.align))


@dataclass(frozen=True)
class Item:
    """A parsed cap (magic SC_CAP_MAGIC) or dlg (SC_DLG_MAGIC)."""
    magic: int
    first: int      # cap: target; dlg: delegatee
    second: int     # cap: accessor; dlg: delegator
    create: int
    valid: int
    gates: Gates
    perms: int      # cap: perms; dlg: mask
    flags: int
    htype: int
    etype: int
    signed: bytes
    sig: bytes
    data: bytes     # dlg: the nested item

    @property
    def is_cap(self) -> bool:
        return self.magic == SC_CAP_MAGIC

    @property
    def size(self) -> int:
        return HDR.size + len(self.data) + len(self.sig)


def _id_bytes(oid: int) -> bytes:
    return oid.to_bytes(16, "little")


def _header(magic: int, first: int, second: int, perms: int, create: int, valid: int,
            gates: Gates, flags: int, dlen: int) -> bytes:
    return HDR.pack(_id_bytes(first), _id_bytes(second), create, valid, gates.offset,
                    gates.length, gates.align, perms, magic, flags, SCHASH_SHA256,
                    SCENC_ECDSA_P256, SIG_LEN, dlen)


def parse(buf: bytes) -> Item:
    """Parse one item (and nothing after it). ValueError if malformed."""
    if len(buf) < HDR.size:
        raise ValueError("shorter than a capability header")
    (first, second, create, valid, goff, glen, galign, perms, magic, flags, htype, etype, slen,
     last) = HDR.unpack_from(buf)
    if magic not in (SC_CAP_MAGIC, SC_DLG_MAGIC):
        raise ValueError(f"bad magic {magic:#x}")
    dlen = last if magic == SC_DLG_MAGIC else 0
    end = HDR.size + dlen + slen
    if len(buf) < end:
        raise ValueError("truncated")
    return Item(magic, int.from_bytes(first, "little"), int.from_bytes(second, "little"),
                create, valid, Gates(goff, glen, galign), perms, flags, htype, etype,
                bytes(buf[:HDR.size + dlen]), bytes(buf[HDR.size + dlen:end]),
                bytes(buf[HDR.size:HDR.size + dlen]))


def item_length(buf: bytes) -> int:
    """The length of the item at the start of `buf` (which may hold more)."""
    return parse(buf).size


# --- keys ---------------------------------------------------------------------------------

def new_keypair() -> tuple[bytes, bytes]:
    """(public PEM, private PEM) of a fresh P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    pri = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pub, pri


def key_object_bytes(pem: bytes, private: bool) -> bytes:
    """The contents of a key object from its data start: Twizzler's `key_hdr`, then the PEM.
    `keydata` is the object offset (slot offset) of the PEM text."""
    return KEY_HDR.pack(0x1000 + KEY_HDR.size, len(pem), SCENC_ECDSA_P256,
                        TWZ_KEY_PRI if private else 0) + pem


def key_from_object(read: Callable[[int, int], bytes]):
    """The key held by a key object (read(slot offset, n)). ValueError if it is none."""
    ptr, n, etype, flags = KEY_HDR.unpack(read(0x1000, KEY_HDR.size))
    if etype != SCENC_ECDSA_P256 or not 0x1000 <= ptr < 0x100000 or not 0 < n <= 4096:
        raise ValueError("not a key object")
    pem = read(ptr, n)
    if flags & TWZ_KEY_PRI:
        return serialization.load_pem_private_key(pem, None)
    return serialization.load_pem_public_key(pem)


def _sign(private_key, data: bytes) -> bytes:
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_raw(public_key, data: bytes, sig: bytes) -> bool:
    """One ECDSA verification, uncached."""
    if len(sig) != SIG_LEN:
        return False
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def make_cap(private_key, target: int, accessor: int, perms: int, *, create: int = 0,
             valid: int = 0, gates: Gates = Gates(), flags: int = 0) -> bytes:
    hdr = _header(SC_CAP_MAGIC, target, accessor, perms, create, valid, gates, flags, 0)
    return hdr + _sign(private_key, hdr)


def make_dlg(private_key, inner: bytes, delegatee: int, delegator: int, mask: int, *,
             create: int = 0, valid: int = 0, gates: Gates = Gates(), flags: int = 0) -> bytes:
    signed = _header(SC_DLG_MAGIC, delegatee, delegator, mask, create, valid, gates, flags,
                     len(inner)) + inner
    return signed + _sign(private_key, signed)


# --- verification -------------------------------------------------------------------------

class Verifier:
    """Evaluates caps and delegation chains; caches signature checks by the signed bytes.

    `kuid_of(oid)` gives an object's kuid (None if there is no such object); `public_key(kuid)`
    the key in that key object (None if it holds none). `now()` gives ns since the epoch.
    """

    CACHE_MAX = 4096

    def __init__(self, kuid_of: Callable[[int], int | None], public_key: Callable[[int], object],
                 now: Callable[[], int]):
        self.kuid_of, self.public_key, self.now = kuid_of, public_key, now
        self._verified: dict[tuple[int, bytes, bytes], bool] = {}

    def _signature_ok(self, signer: int, item: Item) -> bool:
        kuid = self.kuid_of(signer)
        if not kuid:
            return False
        key = (kuid, item.signed, item.sig)
        ok = self._verified.get(key)
        if ok is None:
            pub = self.public_key(kuid)
            ok = pub is not None and verify_raw(pub, item.signed, item.sig)
            if len(self._verified) >= self.CACHE_MAX:
                self._verified.clear()
            self._verified[key] = ok
        return ok

    def evaluate(self, buf: bytes, target: int, accessor: int):
        """(perms, gates, why, until) that the item in `buf` grants `accessor` on `target`,
        `until` being when that answer may change (ns; 0 = never).

        perms is 0 with a reason when the item is worthless: bad format or crypto types, wrong
        target or accessor, bad signature, outside its validity, or a chain link without CD.
        """
        self._until = 0
        try:
            perms, gates, why = self._evaluate(parse(buf), target, accessor, 0)
        except ValueError as e:
            perms, gates, why = 0, None, str(e)
        return perms, gates, why, self._until

    def _bound(self, t: int) -> None:
        if t and (not self._until or t < self._until):
            self._until = t

    def _evaluate(self, item: Item, target: int, accessor: int, depth: int):
        if depth > _MAX_DEPTH:
            return 0, None, "delegation chain too long"
        if item.htype != SCHASH_SHA256 or item.etype != SCENC_ECDSA_P256:
            return 0, None, f"unsupported hash/signature type {item.htype}/{item.etype}"
        now = self.now()
        if item.create > now:
            self._bound(item.create)
            return 0, None, "not valid yet"
        if item.valid and now >= item.valid:
            return 0, None, "expired or revoked"
        self._bound(item.valid)
        if item.is_cap:
            if item.first != target:
                return 0, None, "capability for another object"
            if item.second != accessor:
                return 0, None, "capability for another security context"
            if not self._signature_ok(target, item):
                return 0, None, "bad signature"
            return item.perms & SCP_ALL, item.gates if item.gates.length else None, ""
        if item.first != accessor:
            return 0, None, "delegation to another security context"
        if not self._signature_ok(item.second, item):
            return 0, None, "bad delegation signature"
        inner_perms, inner_gates, why = self._evaluate(parse(item.data), target, item.second,
                                                       depth + 1)
        if not inner_perms & SCP_CD:
            return 0, None, why or "delegated a capability that is not delegable (no CD)"
        gates = inner_gates.limit(item.gates if item.gates.length else None) if inner_gates \
            else (item.gates if item.gates.length else None)
        return inner_perms & item.perms, gates, ""
