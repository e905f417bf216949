"""Twizzler's `struct metainfo` (reference §2.3) as a value, packed at slot offset 0x3FFFF800."""

from dataclasses import dataclass

from twzlinux.abi import constants as c
from twzlinux.abi.structs import METAINFO, id_pack, id_unpack


@dataclass
class Metainfo:
    flags: int
    p_flags: int
    fotentries: int = 0
    milen: int = c.METAINFO_LEN_DEFAULT
    nonce: int = 0
    kuid: int = 0
    sz: int = 0
    magic: int = c.MI_MAGIC

    def pack(self) -> bytes:
        return METAINFO.pack(self.magic, self.flags, self.p_flags, self.fotentries, self.milen,
                             id_pack(self.nonce), id_pack(self.kuid), self.sz, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "Metainfo":
        magic, flags, p_flags, fot, milen, nonce, kuid, sz, _ = METAINFO.unpack(raw[:METAINFO.size])
        return cls(flags, p_flags, fot, milen, id_unpack(nonce), id_unpack(kuid), sz, magic)

    @property
    def kso_type(self) -> int:
        # OCREATE stores its flags word (truncated to u16) in metainfo.flags, KSO bits included,
        # which is how a persistent object's KSO type survives a restart.
        return (self.flags & c.OC_KSO_MASK) >> c.OC_KSO_SHIFT
