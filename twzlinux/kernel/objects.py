"""The object table: create, look up, delete when unreferenced, ties.

An object's backing is freed (memfd closed, file unlinked) only once it is deleted and nothing
references it: no process maps it and no parent ties it. Ties are counted, as in Twizzler's
`core/obj/tie.c`; a freed parent drops every tie it holds, which can free its children in turn.
"""

import errno
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable

from twzlinux.abi import constants as c

from .cow import LazyCopies
from .errors import SyscallError
from .ids import compute_id
from .metainfo import Metainfo
from .reclaim import file_id, mapped_files
from .saved import SavedState
from .store import Backing, Store


@dataclass(eq=False)
class Obj:
    id: int
    backing: Backing
    kso_type: int
    p_flags: int
    kernel: bool = False          # created by the kernel itself (root KSO, views, thread reprs)
    deleted: bool = False
    hidden: bool = False
    source: int | None = None     # the object its contents were copied from (sourced_from)
    derived: set = field(default_factory=set)       # live objects created from this one
    cache_mode: int = c.OC_CM_WB
    mappers: set = field(default_factory=set)       # keys of the processes mapping it
    ties: Counter = field(default_factory=Counter)  # child id -> ties this object holds on it
    tied: int = 0                                   # ties other objects hold on this one

    @property
    def persistent(self) -> bool:
        return self.backing.persistent

    def meta(self) -> Metainfo:
        return Metainfo.unpack(self.backing.pread(c.OBJ_METAINFO_OFFSET, 64))

    def write_meta(self, mi: Metainfo) -> None:
        self.backing.pwrite(c.OBJ_METAINFO_OFFSET, mi.pack())


def _overlay(read: Callable[[int, int], bytes], off0: int, patch: bytes):
    """`read` with `patch` laid over [off0, off0 + len(patch))."""
    def patched(off: int, n: int) -> bytes:
        data = bytearray(read(off, n))
        lo, hi = max(off, off0), min(off + n, off0 + len(patch))
        if lo < hi:
            data[lo - off:hi - off] = patch[lo - off0:hi - off0]
        return bytes(data)
    return patched


_PRUNE_EVERY = 256


def _zeros(off: int, n: int) -> bytes:
    return bytes(n)


class ObjectTable:
    def __init__(self, store: Store):
        self.store = store
        self._objs: dict[int, Obj] = {}
        self._mapped_by: dict[Hashable, set[int]] = {}
        self._until_prune: dict[Hashable, int] = {}  # key -> deletes before its next prune
        self.lazy = LazyCopies()
        self.saved = SavedState(store.dir.parent / "twzd.db")
        self._recover()

    def _recover(self) -> None:
        """Bring back what twzd knew about persistent objects; free those deleted while
        referenced, now that whatever referenced them (processes, volatile parents) is gone."""
        self.store.sweep()
        for oid, saved in self.saved.objects().items():
            obj = self._load(oid)
            if obj is None:  # freed, and the crash came before its row went
                self.saved.forget(oid)
                continue
            obj.deleted, obj.hidden, obj.source = saved.deleted, saved.hidden, saved.source
            obj.cache_mode = saved.cache_mode
        for parent, child, n in self.saved.ties():
            p, ch = (self._objs.get(oid) or self._load(oid) for oid in (parent, child))
            if p is None or ch is None:
                self.saved.set_tie(parent, child, 0)
                continue
            p.ties[child] += n
            ch.tied += n
        for obj in list(self._objs.values()):
            source = self._objs.get(obj.source)
            if source is not None:
                source.derived.add(obj.id)
        for obj in list(self._objs.values()):
            self._release(obj)

    def remember(self, obj: Obj) -> None:
        """Record what only twzd knows of a persistent object (after changing source or
        cache_mode; the table records deletes itself), so that a restart brings it back."""
        if obj.persistent:
            self.saved.save(obj.id, obj.deleted, obj.hidden, obj.source, obj.cache_mode)

    def _save_tie(self, parent: Obj, child: Obj) -> None:
        if parent.persistent and child.persistent:
            self.saved.set_tie(parent.id, child.id, parent.ties[child.id])

    def live(self) -> list[Obj]:
        """Every object in the table now (loaded persistent ones included)."""
        return list(self._objs.values())

    def lookup(self, oid: int, hidden: bool = False) -> Obj | None:
        """The live object `oid` (hidden ones only if asked), loading persistent ones lazily."""
        obj = self._objs.get(oid)
        if obj is None and oid:
            obj = self._load(oid)
        if obj is None or (obj.hidden and not hidden):
            return None
        return obj

    def _load(self, oid: int) -> Obj | None:
        backing = self.store.find(oid)
        if backing is None:
            return None
        mi = Metainfo.unpack(backing.pread(c.OBJ_METAINFO_OFFSET, 64))
        if mi.magic != c.MI_MAGIC:
            backing.close()
            return None
        obj = self._objs[oid] = Obj(oid, backing, mi.kso_type, mi.p_flags)
        return obj

    def create(self, kuid: int, flags: int, src: Obj | None = None, *,
               fixed_id: int | None = None, kernel: bool = False) -> Obj:
        """Twizzler's OCREATE on the table: write a fresh metainfo, derive the ID.

        With a source, the whole image is copied first (cow.py). Deviation: where Twizzler
        zeroes them, the new metainfo keeps the source's `fotentries`, so the copied FOT stays
        reachable, and its `sz` (with MIF_SZ) so that a HASHDATA copy is addressed by the data
        it holds; a HASHDATA copy of a source without MIF_SZ gets as sz the end of the source's
        allocated data. The ID is still exactly obj_compute_id of the resulting image.
        `fixed_id` (the root KSO) skips derivation.
        """
        nonce = 0 if flags & c.TWZ_SYS_OC_ZERONONCE else int.from_bytes(os.urandom(16), "little")
        mi = Metainfo(flags=flags & 0xFFFF, p_flags=flags & c.MIP_PFLAGS_MASK, nonce=nonce,
                      kuid=kuid)
        read = _zeros
        if src is not None:
            smi = src.meta()
            mi.fotentries = smi.fotentries
            if smi.flags & c.MIF_SZ:
                mi.sz, mi.flags = smi.sz, mi.flags | c.MIF_SZ
            elif mi.p_flags & c.MIP_HASHDATA:
                end = src.backing.data_end(c.OBJ_NULLPAGE_SIZE, c.OBJ_DATA_SIZE)
                mi.sz, mi.flags = end - c.OBJ_NULLPAGE_SIZE, mi.flags | c.MIF_SZ
            read = src.backing.pread
        oid = fixed_id if fixed_id is not None else compute_id(
            mi, _overlay(read, c.OBJ_METAINFO_OFFSET, mi.pack()))
        # A random 128-bit nonce does not collide; only a deterministic ID (ZERONONCE, a fixed
        # ID) can name an object that exists, perhaps only on disk so far.
        deterministic = fixed_id is not None or not nonce
        if oid in self._objs or (deterministic and self.store.exists(oid)):
            raise SyscallError(errno.EEXIST, "an object with this ID exists")
        backing = (self.store.persistent if flags & c.TWZ_SYS_OC_PERSIST_ else
                   self.store.volatile)(oid)
        obj = Obj(oid, backing, mi.kso_type, mi.p_flags, kernel=kernel)
        if src is not None:
            self.lazy.copy(obj, 0, src, 0, c.OBJ_MAXSIZE)
            src.derived.add(oid)
            obj.source = src.id
        obj.write_meta(mi)
        if obj.persistent:
            if src is not None:
                self.remember(obj)
            self.store.publish(backing)
        self._objs[oid] = obj
        return obj

    def delete(self, obj: Obj, immediate: bool = False) -> None:
        """ODELETE: free now if unreferenced, else when the last reference goes."""
        obj.deleted = True
        obj.hidden = obj.hidden or immediate
        self.remember(obj)
        self._release(obj)
        for key in list(obj.mappers):
            left = self._until_prune.get(key, _PRUNE_EVERY) - 1
            if left > 0:
                self._until_prune[key] = left
            else:
                self._prune(key)

    def _prune(self, key: Hashable) -> None:
        """Drop `key`'s references to the deleted objects it no longer maps (reclaim.py)."""
        held = [self._objs[oid] for oid in self._mapped_by.get(key, ())
                if oid in self._objs and self._objs[oid].deleted]
        files = mapped_files(key.pid) if getattr(key, "pid", None) else None
        kept = len(held)
        if files is not None:
            for obj in held:
                if file_id(obj.backing.fd) not in files:
                    kept -= 1
                    obj.mappers.discard(key)
                    self._mapped_by[key].discard(obj.id)
                    self._release(obj)
        # A process that keeps what it maps makes prunes rarer: O(1) a delete, amortised.
        self._until_prune[key] = _PRUNE_EVERY + kept

    def map(self, obj: Obj, key: Hashable) -> None:
        obj.mappers.add(key)
        self._mapped_by.setdefault(key, set()).add(obj.id)

    def unmap_all(self, key: Hashable) -> None:
        self._until_prune.pop(key, None)
        for oid in self._mapped_by.pop(key, ()):
            obj = self._objs.get(oid)
            if obj is not None:
                obj.mappers.discard(key)
                self._release(obj)

    def tie(self, parent: Obj, child: Obj) -> None:
        parent.ties[child.id] += 1
        child.tied += 1
        self._save_tie(parent, child)

    def untie(self, parent: Obj, child: Obj) -> bool:
        if not parent.ties[child.id]:
            return False
        parent.ties[child.id] -= 1
        if not parent.ties[child.id]:
            del parent.ties[child.id]
        child.tied -= 1
        self._save_tie(parent, child)
        self._release(child)
        return True

    def drop_ties(self, parent: Obj) -> None:
        ties, parent.ties = parent.ties, Counter()
        for cid, n in ties.items():
            child = self._objs.get(cid)
            if child is not None:
                child.tied -= n
                self._save_tie(parent, child)
                self._release(child)

    def _release(self, obj: Obj) -> None:
        if obj.deleted and not obj.mappers and not obj.tied and self._objs.get(obj.id) is obj:
            self.lazy.forget(obj.id)  # before the backing goes: copies take what they owe it
            del self._objs[obj.id]
            obj.backing.free()
            if obj.persistent:
                self.saved.forget(obj.id)
            source = self._objs.get(obj.source)
            if source is not None:
                source.derived.discard(obj.id)
            self.drop_ties(obj)

    def close(self) -> None:
        """Release every backing. With the kernel gone, so are the processes and the volatile
        objects: their mappings and ties go first, which frees the deleted objects they held
        (a deleted persistent object tied by a persistent one stays, as it would on restart)."""
        self.lazy.clear()  # volatile copies die with twzd: settling their debts would be waste
        for key in list(self._mapped_by):
            self.unmap_all(key)
        for obj in list(self._objs.values()):
            if not obj.persistent:
                self.drop_ties(obj)
        for obj in self._objs.values():
            if obj.deleted and not obj.persistent:
                obj.backing.free()
            else:
                obj.backing.flush()
                obj.backing.close()
        self._objs.clear()
        self._mapped_by.clear()
        self.saved.close()
