"""Lazy copies: the pages a copy still owes its source, settled on first touch (sans-I/O).

OCOPY and OCREATE with a source make the copy in O(1): the copy's range becomes *runs* of pages
it owes a source (copy offset, source ID, source offset), and the copy's own image is punched to
holes there. A page leaves its run ("is settled": the source's page is copied into the copy's
image) when
- a process touches it: the copy's mappings trap missing pages to twzd (userfaultfd MISSING),
  which settles the page and the owed pages after it (FILL_RUN, doubling up to FILL_MAX while
  the process reads on in order) and wakes the process;
- twzd itself reads or writes it: objects involved in lazy copies carry a `LazyBacking`;
- its source page is about to change: the source's mappings are write-protected (userfaultfd WP)
  where copies owe pages the source holds, and twzd's own writes to a source go through
  `LazyBacking`, so the old contents reach every copy first. A hole of the source needs no
  protection (which costs about 1 ms per GiB of mapping): touching it traps as a missing page,
  and copies owing it take it, as a hole, before it gets a page.

What the I/O edge must do is the `Port`: trap a process's slot, write-protect a range in it,
fill a hole with zeros. Only volatile objects (memfds) copy lazily, because userfaultfd cannot
trap missing pages of, nor synchronously write-protect, ext4 file mappings; a copy from or to a
persistent object stays eager. So does a copy that some mapper could see untrapped (a process
without a userfaultfd, or one that has not said where it mapped the object).
"""

from bisect import bisect_right
import os
from errno import ENXIO, EPERM
from typing import TYPE_CHECKING, Hashable, Protocol

from twzlinux.abi import constants as c

from .errors import MemoryAccess

if TYPE_CHECKING:
    from .objects import Obj

PAGE = c.PAGE_SIZE
SLOT = c.OBJ_MAXSIZE
FILL_RUN = 16 * PAGE      # pages settled per trapped fault: batching is the throughput lever
FILL_MAX = 256 * PAGE     # doubled up to this while a process reads on in order (readahead)
_BUF = bytearray(FILL_MAX)  # one fill at a time: twzd is single-threaded
_MAPPED = (c.OBJ_NULLPAGE_SIZE, SLOT)  # the part of a slot the runtime maps


def _pages(off: int, n: int) -> tuple[int, int]:
    """[off, off + n) widened to whole pages: debts are paid a page at a time."""
    return off & ~(PAGE - 1), -(-(off + n) // PAGE) * PAGE


class Port(Protocol):
    """twzd's userfaultfd adapter, as the kernel core sees it. Every method tolerates a process
    that has died meanwhile."""

    def can_trap(self, proc: Hashable) -> bool: ...
    def tgid(self, tid: int) -> int: ...                           # the thread's process
    def register(self, proc: Hashable, base: int, wp: bool) -> int: ...  # MISSING[|WP]; errno
    def unregister(self, proc: Hashable, base: int) -> None: ...
    def protect(self, proc: Hashable, addr: int, n: int, on: bool) -> None: ...
    def zero(self, proc: Hashable, addr: int) -> None: ...        # a zero page, if none there
    def forget(self, proc: Hashable) -> None: ...                 # the process is gone


class LazyBacking:
    """A backing whose reads and writes by twzd settle the owed pages they touch first."""

    def __init__(self, raw, lazy: "LazyCopies", oid: int):
        self.raw, self.lazy, self.oid = raw, lazy, oid

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def pread(self, off: int, n: int) -> bytes:
        self.lazy.settle(self.oid, off, n)
        return self.raw.pread(off, n)

    def data_extents(self, off: int, n: int):
        self.lazy.settle(self.oid, off, n)
        return self.raw.data_extents(off, n)

    def data_end(self, off: int, n: int) -> int:
        self.lazy.settle(self.oid, off, n)
        return self.raw.data_end(off, n)

    def has_data(self, off: int, n: int) -> bool:
        self.lazy.settle(self.oid, off, n)
        return self.raw.has_data(off, n)

    def pwrite(self, off: int, data: bytes) -> None:
        self.lazy.before_write(self.oid, off, len(data), keep=True)
        self.raw.pwrite(off, data)

    def allocate(self, off: int, n: int) -> None:
        self.lazy.before_write(self.oid, off, n, keep=True)
        self.raw.allocate(off, n)

    def punch(self, off: int, n: int) -> None:
        self.lazy.before_write(self.oid, off, n, keep=False)
        self.raw.punch(off, n)

    def copy_from(self, src, soff: int, doff: int, n: int) -> None:
        self.lazy.before_write(self.oid, doff, n, keep=False)
        self.raw.copy_from(src, soff, doff, n)  # src.data_extents settles a lazy source


class _Guarded:
    """A process's memory as twzd's syscall handlers reach it, made safe first: twzd reading a
    trapped page through /proc/PID/mem would fault into its own userfaultfd and wait forever."""

    def __init__(self, lazy: "LazyCopies", proc, mem: MemoryAccess):
        self.lazy, self.proc, self.mem = lazy, proc, mem

    def read(self, addr: int, n: int) -> bytes:
        self.lazy.prepare_access(self.proc, addr, n, write=False)
        return self.mem.read(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        self.lazy.prepare_access(self.proc, addr, len(data), write=True)
        self.mem.write(addr, data)


class LazyCopies:
    def __init__(self):
        self.port: Port | None = None
        self._objs: dict[int, "Obj"] = {}            # every object with debts or creditors
        self._runs: dict[int, list[list[int]]] = {}  # copy -> sorted [start, end, src, soff]
        self._copies: dict[int, set[int]] = {}       # source -> copies owing it pages
        self._slots: dict[Hashable, dict[int, int]] = {}   # proc -> slot base -> object
        self._trapped: dict[Hashable, dict[int, bool]] = {}  # proc -> registered base -> WP
        self._opening: dict[Hashable, set[int]] = {}       # proc -> fds given, not yet mapped
        self._ahead: dict[Hashable, tuple[int, int]] = {}  # proc -> (next fault addr, run)

    # --- queries ------------------------------------------------------------------------------

    def involved(self, oid: int) -> bool:
        return oid in self._runs or bool(self._copies.get(oid))

    def creditor(self, oid: int, off: int) -> tuple["Obj", int, bool] | None:
        """If `oid` still owes the page at `off`: (object, offset) of the page it will get, and
        whether that is copy-on-write (not when the creditor is the pager's store: an evicted
        page the object still has). Else None. No debt is owed to a debtor: a copy settles its
        source's debts first (copy), and only objects in no copy are paged out."""
        runs = self._runs.get(oid, ())
        i = bisect_right(runs, [off, SLOT]) - 1
        if i < 0 or not runs[i][0] <= off < runs[i][1]:
            return None
        start, _, src, soff = runs[i]
        return self._objs[src], soff + off - start, src >= 0

    def owed_pages(self, oid: int) -> int:
        return sum(end - start for start, end, _, _ in self._runs.get(oid, ())) // PAGE

    def _can_trap(self, proc) -> bool:
        return self.port is not None and self.port.can_trap(proc)

    def mappings(self, obj: "Obj") -> list[tuple[Hashable, int]]:
        """(process, slot base) of every mapping of obj that twzd knows of."""
        return [(p, b) for p in obj.mappers for b in self._bases(p, obj.id)]

    def located(self, obj: "Obj") -> bool:
        """Whether every process given an fd for obj (with a uffd) has said where it mapped it."""
        return all(obj.id not in self._opening.get(p, ()) for p in obj.mappers)

    def _bases(self, proc, oid: int) -> list[int]:
        return [b for b, o in self._slots.get(proc, {}).items() if o == oid]

    def can_copy_lazily(self, src: "Obj") -> bool:
        """Whether a volatile copy of src would be lazy (exact at this instant)."""
        return not src.persistent and self._trappable(src)

    def _trappable(self, obj: "Obj") -> bool:
        """Every process that can reach obj's pages is one twzd can trap: it has a uffd, and it
        has said where it mapped each fd it got (a slot since mapped with another object no
        longer maps this one)."""
        return all(self._can_trap(p) and obj.id not in self._opening.get(p, ())
                   for p in obj.mappers)

    def _trap_all(self, obj: "Obj", writers_only: bool, wp: bool) -> bool:
        """Trap every mapping of `obj`. A read-only mapping cannot be registered (userfaultfd
        wants VM_MAYWRITE); with writers_only that is fine, as it cannot write."""
        ok = True
        for proc in obj.mappers:
            for base in self._bases(proc, obj.id):
                err = self._trap(proc, base, wp)
                ok = ok and (not err or (writers_only and err == EPERM))
        return ok

    # --- making copies ------------------------------------------------------------------------

    def copy(self, dest: "Obj", doff: int, src: "Obj", soff: int, n: int) -> None:
        """Make dest's [doff, doff + n) a copy of src's [soff, soff + n): lazily if it can be
        exact, else eagerly. Ranges are page aligned and, within one object, disjoint."""
        if (dest.persistent or src.persistent or not self._trappable(dest)
                or not self._trappable(src)):
            dest.backing.copy_from(src.backing, soff, doff, n)
            return
        for obj in (dest, src):
            self._objs[obj.id] = obj
            if not isinstance(obj.backing, LazyBacking):
                obj.backing = LazyBacking(obj.backing, self, obj.id)
        # The copy's old contents leave: copies owing them get them first. A run the copy
        # owes its source's own source could be re-pointed; settling it is simpler and rare.
        self.before_write(dest.id, doff, n, keep=False)
        self.settle(src.id, soff, n)
        if not (self._trap_all(dest, writers_only=False, wp=False)
                and self._trap_all(src, writers_only=True, wp=True)):
            self._retire(dest.id)
            self._retire(src.id)
            dest.backing.copy_from(src.backing, soff, doff, n)
            return
        dest.backing.raw.punch(doff, n)
        runs = self._runs.setdefault(dest.id, [])
        runs.insert(bisect_right(runs, [doff]), [doff, doff + n, src.id, soff])
        self._copies.setdefault(src.id, set()).add(dest.id)
        present = src.backing.raw.page_extents(soff, n)
        for proc in src.mappers:
            for base in self._bases(proc, src.id):
                for lo, hi in present:
                    self._protect(proc, base, lo, hi - lo)

    def _protect(self, proc, base: int, off: int, n: int, on: bool = True) -> None:
        lo, hi = max(off, _MAPPED[0]), min(off + n, _MAPPED[1])
        if lo < hi and self._trapped.get(proc, {}).get(base):
            self.port.protect(proc, base + lo, hi - lo, on)

    # --- paging (kernel/pager.py) -------------------------------------------------------------

    def can_page_out(self, obj: "Obj") -> bool:
        return (self.port is not None and not obj.persistent and not self.involved(obj.id)
                and self._trappable(obj))

    def page_out(self, obj: "Obj", store: "Obj", lo: int, hi: int) -> bool:
        """Move obj's [lo, hi) into `store` (a file twzd alone holds) and make obj owe it back.
        False if some mapping cannot be trapped (a read-only one would read holes)."""
        if not self._trap_all(obj, writers_only=False, wp=True):
            self._retire(obj.id)
            return False
        maps = self.mappings(obj)
        for proc, base in maps:  # a store racing the eviction waits for twzd
            self._protect(proc, base, lo, hi - lo)
        self._objs[obj.id], self._objs[store.id] = obj, store
        if not isinstance(obj.backing, LazyBacking):
            obj.backing = LazyBacking(obj.backing, self, obj.id)
        store.backing.copy_from(obj.backing.raw, lo, lo, hi - lo)
        obj.backing.raw.punch(lo, hi - lo)
        runs = self._runs.setdefault(obj.id, [])
        runs.insert(bisect_right(runs, [lo]), [lo, hi, store.id, lo])
        self._copies.setdefault(store.id, set()).add(obj.id)
        for proc, base in maps:
            self._protect(proc, base, lo, hi - lo, on=False)
        return True

    def _trap(self, proc, base: int, wp: bool) -> int:
        """Register proc's slot at `base` for missing pages and, with wp, for writes to
        protected pages (registering it again adds WP); 0 or the errno it failed with.
        WP is only asked for where pages will be protected: it turns off the kernel's
        fault-around, so a reader of a WP-registered copy takes a fault for every page that
        twzd filled, where it would otherwise map 16 at a time."""
        trapped = self._trapped.setdefault(proc, {})
        if base in trapped and (trapped[base] or not wp):
            return 0
        err = self.port.register(proc, base, wp)
        if not err:
            trapped[base] = wp
        return err

    def _retire(self, oid: int) -> None:
        """`oid` owes nothing and is owed nothing: its mappings need no trap any more (a
        trapped hole costs a trip to twzd on first touch)."""
        if self.involved(oid):
            return
        for proc, slots in self._slots.items():
            trapped = self._trapped.get(proc, {})
            for base, o in slots.items():
                if o == oid and base in trapped:
                    self.port.unregister(proc, base)
                    del trapped[base]

    # --- settling -----------------------------------------------------------------------------

    def settle(self, oid: int, off: int, n: int, fill: bool = True) -> bool:
        """Give `oid`'s [off, off + n) its own contents (fill=False: drop the debt, the range
        is about to be overwritten). True if any page was owed."""
        runs = self._runs.get(oid)
        if not runs:
            return False
        off, end = _pages(off, n)
        hit = False
        i = max(bisect_right(runs, [off]) - 1, 0)
        while i < len(runs):
            start, stop, src, soff = runs[i]
            if start >= end:
                break
            lo, hi = max(start, off), min(stop, end)
            if lo >= hi:
                i += 1
                continue
            hit = True
            if fill:
                self._fill(oid, lo, src, soff + lo - start, hi - lo)
            pieces = [p for p in ([start, lo, src, soff], [hi, stop, src, soff + hi - start])
                      if p[0] < p[1]]
            runs[i:i + 1] = pieces
            i += len(pieces)
        if not runs:
            del self._runs[oid]
        self._drop_unowed(oid)
        return hit

    def _fill(self, oid: int, doff: int, src_id: int, soff: int, n: int) -> None:
        dest, src = self._objs[oid], self._objs[src_id]
        if n > FILL_MAX:  # walking the extents keeps holes holes, and pays off when large
            dest.backing.raw.copy_from(src.backing, soff, doff, n)
            return
        # The fault path: one pread and one pwrite through a reused buffer. Finding where the
        # data ends (SEEK_HOLE) would walk every page of it, so only a range with no data at all
        # (SEEK_DATA beyond it) stays a hole.
        self.settle(src_id, soff, n)  # a source that is itself a copy
        try:
            data = os.lseek(src.backing.fd, soff, os.SEEK_DATA)
        except OSError as e:
            if e.errno != ENXIO:
                raise
            return
        if data >= soff + n:
            return
        view = memoryview(_BUF)[:n]
        got = os.preadv(src.backing.fd, [view], soff)
        os.pwrite(dest.backing.fd, view[:got], doff)

    def _drop_unowed(self, oid: int) -> None:
        """Forget source links of `oid` that no run uses any more."""
        runs = self._runs.get(oid, ())
        for src, copies in list(self._copies.items()):
            if oid in copies and not any(r[2] == src for r in runs):
                copies.discard(oid)
                if not copies:
                    del self._copies[src]
                    self._retire(src)
        self._retire(oid)

    def release_source(self, src_id: int, off: int, n: int) -> None:
        """Before src's [off, off + n) changes: every copy owing those pages gets them now."""
        off, end = _pages(off, n)
        for oid in list(self._copies.get(src_id, ())):
            for start, stop, s, soff in list(self._runs.get(oid, ())):
                if s != src_id:
                    continue
                lo, hi = max(soff, off), min(soff + stop - start, end)
                if lo < hi:
                    self.settle(oid, start + lo - soff, hi - lo)

    def before_write(self, oid: int, off: int, n: int, keep: bool) -> None:
        """Before twzd writes `oid`'s [off, off + n): with keep=False the whole range is
        overwritten, so its debt is dropped rather than paid (pages only partly covered are
        paid: their other bytes stay)."""
        self.release_source(oid, off, n)
        if keep or (off | n) % PAGE:
            self.settle(oid, off, n)
        else:
            self.settle(oid, off, n, fill=False)

    def forget(self, oid: int) -> None:
        """`oid` is being freed: its copies take what they owe it, its own debts go."""
        self.release_source(oid, 0, SLOT)
        self._runs.pop(oid, None)
        self._drop_unowed(oid)
        self._objs.pop(oid, None)

    def settle_all(self, oid: int) -> None:
        self.release_source(oid, 0, SLOT)
        self.settle(oid, 0, SLOT)

    def clear(self) -> None:
        """twzd is stopping: volatile objects die with it, so nothing owed needs settling."""
        self._runs.clear()
        self._copies.clear()
        self._objs.clear()

    # --- processes ----------------------------------------------------------------------------

    def objfd(self, proc, obj: "Obj") -> None:
        """A process is about to get an fd for `obj`: one that cannot be trapped must not see
        owed pages as holes, nor write a source behind its copies' backs."""
        if not self._can_trap(proc):
            if self.involved(obj.id):
                self.settle_all(obj.id)
            return
        self._opening.setdefault(proc, set()).add(obj.id)

    def mapped(self, proc, base: int, obj: "Obj") -> None:
        """LX_MAPPED: `proc` mapped `obj` at slot `base` (a fresh, untrapped mapping)."""
        self._slots.setdefault(proc, {})[base] = obj.id
        self._trapped.get(proc, {}).pop(base, None)
        self._opening.get(proc, set()).discard(obj.id)
        if not self.involved(obj.id):
            return
        wp = bool(self._copies.get(obj.id))  # a source: its pages get protected
        err = self._trap(proc, base, wp) if self._can_trap(proc) else EPERM
        if err and (err != EPERM or obj.id in self._runs):
            self.settle_all(obj.id)  # an untrapped writer, or an untrapped copy
            return
        for oid in self._copies.get(obj.id, ()):
            for start, stop, s, soff in self._runs.get(oid, ()):
                if s == obj.id:
                    for lo, hi in obj.backing.raw.page_extents(soff, stop - start):
                        self._protect(proc, base, lo, hi - lo)

    def new_mm(self, proc) -> None:
        """proc's process says its mm is new (it exec'd): what it mapped is forgotten. One that
        did not exec keeps those mappings, untrapped from now on, so everything it maps or was
        given that a lazy copy involves is settled first: no copy can tell, whoever owns it."""
        for oid in {*self._slots.get(proc, {}).values(), *self._opening.get(proc, ())}:
            if self.involved(oid):
                self.settle_all(oid)
        self.process_exit(proc)

    def process_exit(self, proc) -> None:
        self._slots.pop(proc, None)
        self._trapped.pop(proc, None)
        self._opening.pop(proc, None)
        self._ahead.pop(proc, None)
        if self.port is not None:
            self.port.forget(proc)

    def guard(self, proc, mem: MemoryAccess) -> MemoryAccess:
        return _Guarded(self, proc, mem) if self._trapped.get(proc) else mem

    def prepare_access(self, proc, addr: int, n: int, write: bool) -> None:
        """Make [addr, addr + n) of proc reachable by twzd without a trap: owed pages
        settled, source pages released (holes get zero pages, mapped writable), and (for a
        write) unprotected in proc."""
        slots, end = self._slots.get(proc, {}), addr + n
        for base, wp in sorted(self._trapped.get(proc, {}).items()):
            lo, hi = max(addr, base + _MAPPED[0]), min(end, base + _MAPPED[1])
            obj = self._objs.get(slots.get(base, 0))
            if lo >= hi or obj is None:
                continue
            lo, hi = _pages(lo, hi - lo)
            self.release_source(obj.id, lo - base, hi - lo)
            if write and wp:
                self.port.protect(proc, lo, hi - lo, False)
            self.settle(obj.id, lo - base, hi - lo)
            for page in range(lo, hi, PAGE):
                self.port.zero(proc, page)

    def fault(self, proc, addr: int, wp: bool) -> str:
        """A trapped fault at `addr` in proc. Returns what the port must do to let it go on:
        "wake" (the page is in the image now), "zero" (a hole: a zero page) or "unprotect"."""
        base, off = addr & ~(SLOT - 1), addr & (SLOT - 1) & ~(PAGE - 1)
        oid = self._slots.get(proc, {}).get(base, 0)
        if wp:
            self.release_source(oid, off, PAGE)
            return "unprotect"
        expected, run = self._ahead.get(proc, (None, 0))
        run = min(run * 2, FILL_MAX) if addr == expected else FILL_RUN
        run = min(run, SLOT - off)
        self._ahead[proc] = (addr + run, run)
        if self.settle(oid, off, run):
            return "wake"
        # A zero page is mapped writable (UFFDIO_ZEROPAGE has no WP mode), so copies owing
        # this hole of a source take it now: otherwise the source's next write would reach them.
        self.release_source(oid, off, PAGE)
        return "zero"
