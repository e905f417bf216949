"""Objects: create, open, map, and the persistent pointers between them (Twizzler's twz/obj.h)."""

import errno
import functools
import os
import struct
from collections import namedtuple

from twzlinux.abi import constants as c
from twzlinux.abi import structs as st
from twzlinux.abi.slots import slot_address

from . import fault as _faults
from . import runtime as rt
from . import sys as tsys
from .errors import TwzError, make_fault, syscall_error
from .ids import ObjID

_U64 = struct.Struct("<Q")
_load_u64 = _U64.unpack_from
_NULLPAGE = c.OBJ_NULLPAGE_SIZE
_MAXSIZE = c.OBJ_MAXSIZE
_LOCAL_MASK = c.OBJ_MAXSIZE - 1
_RWX = c.FE_READ | c.FE_WRITE | c.FE_EXEC
DEFAULT_PERMS = c.MIP_DFL_READ | c.MIP_DFL_WRITE

Metainfo = namedtuple("Metainfo", "magic flags p_flags fotentries milen nonce kuid sz")
Stat = namedtuple("Stat", "flags cache_mode kso_type nr_sleepers nr_derivations nvreg")


def _addr(cdata) -> int:
    return int(rt.ffi.cast("uintptr_t", cdata))


def stat(oid: int) -> Stat:
    """OSTAT of an object: raises TwzError(ENOENT) if it does not exist."""
    buf = rt.ffi.new("uint8_t[]", st.KERNEL_OSTAT.size)
    tsys.sys_ostat(oid, c.OS_TYPE_OBJ, 0, _addr(buf))
    return Stat(*st.KERNEL_OSTAT.unpack(rt.ffi.unpack(rt.ffi.cast("char *", buf),
                                                      st.KERNEL_OSTAT.size)))


@functools.cache
def _thread_id() -> int:
    return ObjID.parse(os.environ["TWZ_THREAD"])


class Object:
    """A Twizzler object mapped in this process's view.

    `address` is `slot << 30`; offsets everywhere are Twizzler slot offsets, so data starts at
    0x1000 and `view()[off]` is the byte at `address + off`. Handles are shared: opening the same
    object with the same permissions again gives the same handle and slot.
    """

    _handles: dict = {}

    def __init__(self, oid: int, slot: int, perms: int):
        self.id = ObjID(oid)
        self.slot = slot
        self.address = slot_address(slot)
        self.perms = perms
        self._mv = rt.buffer(self.address, c.OBJ_MAXSIZE)
        if not perms & c.FE_WRITE:
            self._mv = self._mv.toreadonly()
        self._fot_cache = {}  # FOT index -> resolved target handle
        self._fot_index = {}  # (target id, flags) -> FOT index, to skip the dedup scan
        self._allocator = None
        self._thread_tie = None  # the thread repr `create` tied this temporary to

    # --- life cycle ------------------------------------------------------------------------
    @classmethod
    def _attach(cls, oid: int, perms: int) -> "Object":
        key = (oid, perms)
        obj = cls._handles.get(key)
        if obj is None:
            obj = cls._handles[key] = cls(oid, rt.slot_alloc(oid, perms), perms)
        return obj

    @classmethod
    def create(cls, *, persist: bool = False, name: str | None = None, perms: int = DEFAULT_PERMS,
               src: "Object | int | None" = None, kuid: int = 0, hashdata: bool = False,
               zero_nonce: bool = False, tied: bool | None = None) -> "Object":
        """Create an object (OCREATE) and map it read-write.

        Like Twizzler's `twz_object_create`, an unnamed volatile object is by default a
        refcounted temporary: tied to this thread and deleted, so it vanishes once the program
        has exited and nothing maps it. Named and persistent objects live until deleted."""
        rt.require()
        flags = perms & (c.MIP_PFLAGS_MASK | c.MIP_DFL_DEL)
        flags |= (c.MIP_HASHDATA if hashdata else 0) | (c.TWZ_SYS_OC_ZERONONCE if zero_nonce else 0)
        flags |= c.TWZ_SYS_OC_PERSIST_ if persist else 0
        src_id = int(src.id if isinstance(src, Object) else (src or 0))
        retid = rt.ffi.new("uint8_t[16]")
        tsys.sys_ocreate(kuid, src_id, flags, _addr(retid))
        oid = st.id_unpack(rt.ffi.unpack(rt.ffi.cast("char *", retid), 16))
        if tied is None:
            tied = not persist and name is None
        if tied:
            tsys.sys_otie(_thread_id(), oid, 0)
            tsys.sys_odelete(oid, 0)
        obj = cls._attach(oid, c.FE_READ | (c.FE_WRITE if perms & c.MIP_DFL_WRITE else 0))
        if tied:
            obj._thread_tie = _thread_id()
        if name is not None:
            from . import names
            try:
                names.assign(name, obj.id)
            except BaseException:
                obj.delete()
                raise
        return obj

    @classmethod
    def open(cls, id_or_name, *, write: bool = False) -> "Object":
        """Open an object by ID (an ObjID, an int, or its `hi:lo` text) or by name."""
        rt.require()
        oid = _lookup(id_or_name)
        try:
            stat(oid)
        except TwzError as e:
            if e.errno != errno.ENOENT:
                raise
            named = f" (named {id_or_name!r})" if isinstance(id_or_name, str) else ""
            raise syscall_error(e.errno, f"no object {ObjID(oid)}{named}") from None
        obj = cls._attach(oid, c.FE_READ | (c.FE_WRITE if write else 0))
        if write and not _writable(oid):
            raise syscall_error(errno.EACCES, f"object {obj.id} does not grant WRITE to this "
                                    f"program (its security context, or p_flags "
                                    f"{obj.meta.p_flags:#x}); open it without write=True")
        return obj

    def delete(self, *, immediate: bool = False) -> None:
        """ODELETE: the object goes once nothing references it (IMMEDIATE also hides it).

        A temporary that `create` tied to this thread is untied too: whoever deletes it is done
        with it, and otherwise it would live (and count against the program's object quota)
        until the thread exits."""
        self.untie()
        tsys.sys_odelete(self.id, c.TWZ_SYS_OD_IMMEDIATE if immediate else 0)

    def untie(self) -> None:
        """Undo the tie `create` made for a temporary (deleted as it was made): the object goes
        once nothing else holds it (delete does this too)."""
        if self._thread_tie is not None:
            tsys.sys_otie(self._thread_tie, self.id, c.OTIE_UNTIE)
            self._thread_tie = None

    def release(self) -> None:
        """Give up this handle's slot (the object itself is untouched)."""
        if Object._handles.get((int(self.id), self.perms)) is self:
            del Object._handles[(int(self.id), self.perms)]
            rt.slot_release(self.slot)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"<libtwz.Object {self.id} slot {self.slot:#x}>"

    # --- memory ------------------------------------------------------------------------------
    def view(self) -> memoryview:
        """The whole 1 GiB window as a memoryview (read-only for a read-only handle)."""
        return self._mv

    @property
    def writable(self) -> bool:
        return bool(self.perms & c.FE_WRITE)

    def read(self, offset: int, n: int) -> bytes:
        """Read bytes at a slot offset; a fault raises at once (unlike a raw view() access)."""
        _check_range(self, offset, n)
        return rt.read(self.address + offset, n)

    def write(self, offset: int, data: bytes) -> None:
        _check_range(self, offset, len(data))
        if not self.writable:
            raise make_fault(c.FAULT_OBJECT, addr=self.address + offset, objid=self.id,
                             slot=self.slot, flags=c.FAULT_OBJECT_WRITE,
                             detail="this handle is read-only; open it with write=True")
        rt.write(self.address + offset, data)

    @property
    def meta(self) -> Metainfo:
        raw = rt.read(self.address + c.OBJ_METAINFO_OFFSET, st.METAINFO.size)
        f = st.METAINFO.unpack(raw)
        return Metainfo(f[0], f[1], f[2], f[3], f[4], int.from_bytes(f[5], "little"),
                        ObjID(st.id_unpack(f[6])), f[7])

    def stat(self) -> Stat:
        return stat(self.id)

    # --- persistent pointers (§2.6) -----------------------------------------------------------
    def store_ptr(self, offset: int, target: "Object", target_offset: int, *,
                  write: bool = False, derive: bool = False) -> int:
        """Store a persistent pointer to `target_offset` in `target` at `offset`; returns it.

        A pointer into this object is local (the plain offset); any other target goes through
        a FOT entry (added, or reused when one with the same ID and flags exists). With
        `derive`, the entry is FE_DERIVE: each program that resolves the pointer gets its own
        writable copy of the target, as it was then."""
        if not 0 <= target_offset < c.OBJ_MAXSIZE:
            raise ValueError(f"target offset {target_offset:#x} is outside a 1 GiB object")
        if target.id == self.id:
            ptr = target_offset
        else:
            flags = c.FE_READ | (c.FE_WRITE if write or derive else 0)
            flags |= c.FE_DERIVE if derive else 0
            ptr = (self.add_fot(target.id, flags) << 30) | target_offset
        self.write(offset, _U64.pack(ptr))
        return ptr

    def load_ptr(self, offset: int):
        """Resolve the persistent pointer at `offset`: (target object, offset), or None for 0."""
        # The hot path of every linked structure: module-level names, no attribute chains.
        if offset < _NULLPAGE:
            _check_range(self, offset, 8)
        ptr = _load_u64(self._mv, offset)[0]
        if ptr < _MAXSIZE:
            return (self, ptr) if ptr else None
        try:
            return self._fot_cache[ptr >> 30], ptr & _LOCAL_MASK
        except KeyError:
            # FAULT_PPTR goes to its handler; one that returns (a fixed FOT) gets a retry
            target = self._fot_cache[ptr >> 30] = _faults.retrying(self._resolve, ptr >> 30, ptr)
        return target, ptr & _LOCAL_MASK

    def _resolve(self, idx: int, ptr: int) -> "Object":
        def fault(info, detail):
            return make_fault(c.FAULT_PPTR, addr=ptr, objid=self.id, slot=self.slot, flags=info,
                              detail=detail)

        if idx >= self.meta.fotentries:
            raise fault(c.FAULT_PPTR_INVALID, f"FOT index {idx} is past the object's FOT "
                                              f"({self.meta.fotentries} entries)")
        raw = rt.read(self.address + st.fote_offset(idx), st.FOTENTRY.size)
        rawid, flags, _info = st.FOTENTRY.unpack(raw)
        oid = st.id_unpack(rawid)
        if not flags & c.FE_VALID_ or not oid:
            raise fault(c.FAULT_PPTR_INVALID, f"FOT entry {idx} is not valid")
        if flags & c.FE_NAME:
            raise fault(c.FAULT_PPTR_RESOLVE, f"FOT entry {idx} is a name (FE_NAME), which this "
                                              "version does not resolve")
        perms = flags & _RWX
        if perms & c.FE_WRITE:
            perms &= ~c.FE_EXEC  # W^X, as twz_object_lea does
        try:
            stat(oid)
            if flags & c.FE_DERIVE:
                # A private copy of the target, as Twizzler's fault path makes one
                # (twz_object_create(DFL_READ|DFL_WRITE, 0, id)): a temporary of this program,
                # copied lazily by twzd where the objects allow it.
                return Object.create(src=oid)
            return Object._attach(oid, perms)
        except TwzError as e:
            raise fault(c.FAULT_PPTR_RESOLVE if e.errno == errno.ENOENT else c.FAULT_PPTR_RESOURCES,
                        f"target object {ObjID(oid)} of FOT entry {idx}: {e}") from None

    def add_fot(self, target: int, flags: int) -> int:
        """Twizzler's twz_object_addfot: reuse an entry with the same ID and flags, or add one."""
        key = (int(target), flags)
        idx = self._fot_index.get(key)
        if idx is not None:
            return idx
        if not self.writable:
            raise syscall_error(errno.EACCES, f"cannot add a FOT entry to {self.id}: the handle is "
                                    "read-only; open it with write=True")
        meta = self.address + c.OBJ_METAINFO_OFFSET
        for i in range(1, self.meta.fotentries):
            rawid, fl, _ = st.FOTENTRY.unpack(rt.read(self.address + st.fote_offset(i), 32))
            if (fl & c.FE_VALID_ and not fl & c.FE_NAME and st.id_unpack(rawid) == target
                    and fl & ~(c.FE_ALLOC_ | c.FE_VALID_) == flags):
                self._fot_index[key] = i
                return i
        # fotentries is the low half of the u64 at metainfo+8 (milen is the high half): a
        # 64-bit fetch_add increments it and, bounded by OBJ_MAXFOTE, never carries.
        idx = rt.fetch_add64(meta + 8, 1) & 0xFFFFFFFF
        if idx == 0:  # entry 0 would overlap the metainfo; it is never used
            idx = rt.fetch_add64(meta + 8, 1) & 0xFFFFFFFF
        if idx >= c.OBJ_MAXFOTE:
            raise syscall_error(errno.ENOSPC, f"the FOT of {self.id} is full")
        fe = self.address + st.fote_offset(idx)
        rt.fetch_or64(fe + 16, c.FE_ALLOC_)
        rt.write(fe, st.id_pack(target))
        rt.store64(fe + 24, 0)
        rt.store64(fe + 16, flags | c.FE_ALLOC_ | c.FE_VALID_)
        self._fot_index[key] = idx
        return idx

    # --- in-object allocation ------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """Allocate `size` bytes inside the object; returns the slot offset (a local p-ptr)."""
        from .alloc import allocator
        return allocator(self).alloc(size)

    def free(self, offset: int) -> None:
        from .alloc import allocator
        allocator(self).free(offset)


def _writable(oid: int) -> bool:
    """Whether twzd lets this program write the object (its security context, or the default
    permissions): the answer is the access mode of the fd it gives."""
    import fcntl
    import os
    fd = tsys.sys_lx_objfd(int(oid), c.FE_READ | c.FE_WRITE)
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    finally:
        os.close(fd)


def _check_range(obj: Object, offset: int, n: int) -> None:
    if n < 0 or offset < 0 or offset + n > c.OBJ_MAXSIZE:
        raise ValueError(f"range [{offset:#x}, {offset + n:#x}) is outside the object")
    if offset < c.OBJ_NULLPAGE_SIZE:
        raise make_fault(c.FAULT_NULL, addr=obj.address + offset, objid=obj.id, slot=obj.slot,
                         detail="the first page of every object is the null page")


def _lookup(id_or_name) -> int:
    if isinstance(id_or_name, Object):
        return int(id_or_name.id)
    if isinstance(id_or_name, int):
        return int(ObjID(id_or_name))
    try:
        return int(ObjID.parse(id_or_name))
    except ValueError:
        from . import names
        return names.resolve(id_or_name)
