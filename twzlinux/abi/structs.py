"""Byte layouts of Twizzler's in-object and syscall structures (reference/twizzler.md §1.4, §2-§4).

Every structure is a little-endian `struct.Struct` whose size matches the size Twizzler's headers
give (asserted below), plus the fixed offsets of the KSO layouts. IDs travel as 16-byte
little-endian `unsigned __int128`; `id_pack`/`id_unpack` convert them.
"""

import struct

from . import constants as c

ID_BYTES = 16


def id_pack(oid: int) -> bytes:
    return (oid & ((1 << 128) - 1)).to_bytes(16, "little")


def id_unpack(raw: bytes) -> int:
    return int.from_bytes(raw[:16], "little")


def id_lo(oid: int) -> int:
    return oid & 0xFFFFFFFFFFFFFFFF


def id_hi(oid: int) -> int:
    return (oid >> 64) & 0xFFFFFFFFFFFFFFFF


def id_join(lo: int, hi: int) -> int:
    return ((hi & 0xFFFFFFFFFFFFFFFF) << 64) | (lo & 0xFFFFFFFFFFFFFFFF)


def id_str(oid: int) -> str:
    """Twizzler's IDFMT: `%.16lx:%.16lx` of (hi, lo)."""
    return f"{id_hi(oid):016x}:{id_lo(oid):016x}"


# struct metainfo (packed, 64 bytes): magic, flags, p_flags, fotentries, milen, nonce, kuid, sz, pad
METAINFO = struct.Struct("<IHHII16s16sQQ")
METAEXT = struct.Struct("<QQ")  # tag, ptr (a local p-ptr)
FOTENTRY = struct.Struct("<16sQQ")  # id (or name p-ptr + resolver), flags, info
VIEWENTRY = struct.Struct("<16sQII")  # id, res0, flags, res1
KSO_HDR = struct.Struct("<1024sIIQ")  # name, version, resv, resv2
KSO_ATTACHMENT = struct.Struct("<16sQII")  # id, info, type, flags
NAMESPACE_HDR = struct.Struct("<QII")  # magic, version, flags
NAME_ENT = struct.Struct("<16sIHBBQ")  # id, flags, resv0, type, resv1, dlen (then name[])
SYS_INVALIDATE_OP = struct.Struct("<16sQIHH")  # id, offset, length, flags, result
KERNEL_OSTAT = struct.Struct("<QIIIII4x")  # flags, cache_mode, kso_type, nr_sleepers, nr_derivations, nvreg
KERNEL_OSTAT_PAGE = struct.Struct("<QQII")  # pgnr, flags, cowcount, level
SYS_THREAD_SYNC_ARGS = struct.Struct("<QQQQII")  # addr, arg, res, resv, op, flags
TIMESPEC = struct.Struct("<QQ")
# fault-info structures (§3.5), what a fault handler receives
FAULT_OBJECT_INFO = struct.Struct("<16sQQQQ")  # objid, ip, addr, flags, pad
FAULT_NULL_INFO = struct.Struct("<QQ")  # ip, addr
FAULT_EXCEPTION_INFO = struct.Struct("<QQQ")  # ip, code (x86 vector), arg0 (error code / MXCSR)
FAULT_SCTX_INFO = struct.Struct("<16sQQIIQ")  # target, ip, addr, pneed, pad, pad64
FAULT_FAULT_INFO = struct.Struct("<IIII")  # fault_nr, info, len, resv; then the wrapped info
FAULT_PAGE_INFO = struct.Struct("<16sQQQQ")  # objid, vaddr, pgnr, info, ip
FAULT_PPTR_INFO = struct.Struct("<16sQQIIQQQ")  # objid, fote, ip, info, retval, flags, name, ptr
FAULT_SIGNAL_INFO = struct.Struct("<32s")  # long args[4] of the SIGNAL call (OLD Twizzler)

for _s, _n in ((METAINFO, 64), (METAEXT, 16), (FOTENTRY, 32), (VIEWENTRY, 32), (KSO_HDR, 1040),
               (KSO_ATTACHMENT, 32), (NAMESPACE_HDR, 16), (NAME_ENT, 32), (SYS_INVALIDATE_OP, 32),
               (KERNEL_OSTAT, 32), (KERNEL_OSTAT_PAGE, 24), (SYS_THREAD_SYNC_ARGS, 40),
               (TIMESPEC, 16), (FAULT_OBJECT_INFO, 48), (FAULT_NULL_INFO, 16),
               (FAULT_EXCEPTION_INFO, 24), (FAULT_SCTX_INFO, 48), (FAULT_FAULT_INFO, 16),
               (FAULT_PAGE_INFO, 48), (FAULT_PPTR_INFO, 64), (FAULT_SIGNAL_INFO, 32)):
    assert _s.size == _n, (_s.format, _s.size, _n)


def fote_offset(index: int) -> int:
    """Slot offset of FOT entry `index` (>= 1); the FOT grows down from the metainfo."""
    return c.OBJ_METAINFO_OFFSET - c.OBJ_FOTE_SIZE * index


# struct twzview_repr (measured offsets, §3.3)
VIEW_FAULT_HANDLER = 1040
VIEW_DBL_FAULT_HANDLER = 1048
VIEW_FAULT_MASK = 1056
VIEW_FAULT_FLAGS = 1064
VIEW_ENTRIES = 1072
VIEW_EXEC_ID = 4195376
VIEW_LOCK = 4195392
VIEW_BITMAP = 4195408
VIEW_BUCKETS = 4211792
VIEW_CHAIN = 10503248
VIEW_BUCKET = struct.Struct("<16sQIiQQ")  # id, slot, flags, chain, info, refs
assert VIEW_BUCKET.size == 48


def view_entry_offset(slot: int) -> int:
    """Offset of `ves[slot]` from the view object's base (the base is slot offset 0x1000)."""
    return VIEW_ENTRIES + VIEWENTRY.size * slot


# struct kso_root_repr (§3.2)
ROOT_COUNT = 1040
ROOT_FLAGS = 1048
ROOT_ATTACHED = 1056

# struct twzthread_repr (§3.5)
THRD_REPRID = 1040
THRD_SYNCS = 1056
THRD_SYNCINFOS = 2080
THRD_FAULTS = 3104
THRD_ATTACHED = 3328
THRD_FIXED_POINTS = 4352
THRD_SYNC_SPAWNED, THRD_SYNC_READY, THRD_SYNC_EXIT = 0, 1, 2
