"""An allocator inside an object, after Twizzler's `oa`/`twz_object_alloc`: programs build
linked structures in objects and refer to the pieces by local persistent pointers (offsets).

Layout (this personality's; Twizzler's slab layout is not reproduced): the first data page
[0x1000, 0x2000) is the object's root area and never allocated, so a program can keep its
root structure at the object base. The allocator's header sits at HEADER (0x2000) and is found
through the ALLOC_METAINFO_TAG metaext, as in Twizzler; blocks come from [0x3000, OBJ_TOPDATA).

    header: magic, lock, top (bump pointer), end, free[NCLASSES] (size-class lists), large
    block:  [size u64][state u64][payload ...]   payload offset is what alloc returns

Small requests are rounded to a power of two (16 .. 2048 bytes) and recycled per class; larger
ones are whole pages, recycled first-fit. A lock word in the header (CAS, shared between
processes that map the object) serialises changes.
"""

import errno
import struct

from twzlinux.abi import constants as c

from . import runtime as rt
from .errors import TwzError, syscall_error
from .plock import PidLock

HEADER = 0x2000
HEAP_START = 0x3000
MAGIC = 0x74777A6F61000001  # "twzoa", version 1
NCLASSES = 8  # 16, 32, ..., 2048
MAX_SMALL = 16 << (NCLASSES - 1)
PREFIX = 16
STATE_USED = 0xA110C0DE
STATE_FREE = 0xF4EEB10C

_MAGIC, _LOCK, _TOP, _END, _FREE = 0, 8, 16, 24, 32
_LARGE = _FREE + 8 * NCLASSES
_Q = struct.Struct("<Q")
_EXTS = c.OBJ_METAINFO_OFFSET + 64


def _size_class(n: int) -> int:
    return max(0, (n - 1).bit_length() - 4)


class Allocator:
    def __init__(self, obj):
        self.obj = obj
        self.base = obj.address
        self._ensure_header()

    def _u64(self, off: int) -> int:
        return _Q.unpack_from(self.obj.view(), off)[0]

    def _set(self, off: int, v: int) -> None:
        _Q.pack_into(self.obj.view(), off, v)

    def _ensure_header(self) -> None:
        magic_addr = self.base + HEADER + _MAGIC
        if rt.load64(magic_addr) == MAGIC:
            return
        if not self.obj.writable:
            raise syscall_error(errno.EACCES, f"object {self.obj.id} has no allocator and the "
                                              "handle is read-only")
        lock = self._locked()
        if rt.load64(magic_addr) != 0 or rt.load64(lock.addr) & ~lock.mask:
            raise TwzError(f"object {self.obj.id}: the allocator area at {HEADER:#x} holds "
                           "other data (the allocator needs [0x2000, 0x3000) free)")
        # Under the lock, so a process killed half way leaves the magic 0 and the next one
        # simply initialises again (every step is idempotent).
        with lock:
            if rt.load64(magic_addr) != MAGIC:
                self._set(HEADER + _TOP, HEAP_START)
                self._set(HEADER + _END, c.OBJ_TOPDATA)
                self._register_ext()
                rt.store64(magic_addr, MAGIC)

    def _register_ext(self) -> None:
        for i in range((c.METAINFO_LEN_DEFAULT - 64) // 16):
            ext = self.base + _EXTS + 16 * i
            if rt.cas64(ext, 0, c.ALLOC_METAINFO_TAG) in (0, c.ALLOC_METAINFO_TAG):
                rt.store64(ext + 8, HEADER)
                return

    def _locked(self) -> PidLock:
        # A holder killed half way leaves at worst a block that is neither free nor handed out.
        return PidLock(self.base + HEADER + _LOCK, 1, 1)

    def alloc(self, size: int) -> int:
        if size <= 0:
            raise ValueError(f"cannot allocate {size} bytes")
        if size <= MAX_SMALL:
            cls = _size_class(size)
            block, head = 16 << cls, HEADER + _FREE + 8 * cls
        else:
            block, head = -(-(size + PREFIX) // c.PAGE_SIZE) * c.PAGE_SIZE - PREFIX, None
        with self._locked():
            off = self._pop(head, block)
            if not off:
                top = self._u64(HEADER + _TOP)
                if top + PREFIX + block > self._u64(HEADER + _END):
                    raise syscall_error(errno.ENOMEM, f"object {self.obj.id} is full "
                                                      f"(asked for {size} bytes)")
                self._set(HEADER + _TOP, top + PREFIX + block)
                off = top + PREFIX
                self._set(off - PREFIX, block)
            self._set(off - PREFIX + 8, STATE_USED)
            return off

    def _pop(self, head, block) -> int:
        if head is not None:
            off = self._u64(head)
            if off:
                self._set(head, self._u64(off))
            return off
        prev, off = HEADER + _LARGE, self._u64(HEADER + _LARGE)
        while off and self._u64(off - PREFIX) < block:
            prev, off = off, self._u64(off)
        if off:
            self._set(prev, self._u64(off))
        return off

    def free(self, off: int) -> None:
        if not HEAP_START + PREFIX <= off < c.OBJ_TOPDATA or off % 16:
            raise ValueError(f"{off:#x} was not returned by alloc() in object {self.obj.id}")
        with self._locked():
            state = self._u64(off - PREFIX + 8)
            if state != STATE_USED:
                what = "freed twice" if state == STATE_FREE else "not returned by alloc()"
                raise ValueError(f"{off:#x} in object {self.obj.id} was {what}")
            block = self._u64(off - PREFIX)
            head = (HEADER + _FREE + 8 * _size_class(block) if block <= MAX_SMALL
                    else HEADER + _LARGE)
            self._set(off - PREFIX + 8, STATE_FREE)
            self._set(off, self._u64(head))
            self._set(head, off)


def allocator(obj) -> Allocator:
    a = obj._allocator
    if a is None:
        a = obj._allocator = Allocator(obj)
    return a
