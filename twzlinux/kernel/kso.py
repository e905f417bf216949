"""The kernel's writes into KSO objects (reference §3.1-§3.2): names, root attachments, reprid.

Offsets in the structs module are from the object base, which is slot offset 0x1000.
"""

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s

from .objects import Obj

_BASE = c.OBJ_NULLPAGE_SIZE
_U64 = 8


def set_name(obj: Obj, name: str) -> None:
    raw = name.encode()[:c.KSO_NAME_MAXLEN - 1]
    obj.backing.pwrite(_BASE, raw.ljust(c.KSO_NAME_MAXLEN, b"\0"))


def write_reprid(thread: Obj) -> None:
    thread.backing.pwrite(_BASE + s.THRD_REPRID, s.id_pack(thread.id))


def _attachment_offset(i: int) -> int:
    return _BASE + s.ROOT_ATTACHED + s.KSO_ATTACHMENT.size * i


def attachment_ids(root: Obj) -> list[int]:
    count = int.from_bytes(root.backing.pread(_BASE + s.ROOT_COUNT, _U64), "little")
    raw = root.backing.pread(_attachment_offset(0), s.KSO_ATTACHMENT.size * count)
    return [s.id_unpack(raw[i:i + 16]) for i in range(0, len(raw), s.KSO_ATTACHMENT.size)]


def root_attach(root: Obj, child: Obj) -> None:
    """Record `child` in kso_root_repr.attached[], reusing a cleared entry before growing."""
    ids = attachment_ids(root)
    slot = ids.index(0) if 0 in ids else len(ids)
    root.backing.pwrite(_attachment_offset(slot),
                        s.KSO_ATTACHMENT.pack(s.id_pack(child.id), 0, child.kso_type, 0))
    if slot == len(ids):
        root.backing.pwrite(_BASE + s.ROOT_COUNT, (slot + 1).to_bytes(_U64, "little"))


def root_detach(root: Obj, child_id: int) -> None:
    """Clear child's entry, as Twizzler does when a thread exits (`count` stays)."""
    for i, oid in enumerate(attachment_ids(root)):
        if oid == child_id:
            root.backing.pwrite(_attachment_offset(i), bytes(s.KSO_ATTACHMENT.size))
