"""The pager: volatile objects beyond a memory budget go to disk and come back on fault.

A memfd has no backing store (there is no swap here), so twzd gives an evicted object one: an
unnamed file (O_TMPFILE) under $TWZ_HOME/swap holding the evicted pages at their own offsets.
A plain sparse file serves better than a library: the page offset is the key, so there is no
index to keep, and the kernel allocates only what is written. The evicted range then becomes a
debt to that file, exactly like a lazy copy's debt to its source (kernel/cow.py), and comes back
through the same userfaultfd path on first touch.

`balance` runs on a timer in twzd. It counts the resident pages of volatile objects (cachestat,
kernel/pages.py) and, while they exceed the budget, evicts the largest object it may: one no
lazy copy involves, mapped only where twzd can trap (every mapper has a uffd and a writable
mapping it reported). Eviction write-protects the object's mappings, so a store racing it waits
for twzd; copies the data out; punches the memfd (which frees the memory and unmaps the pages
everywhere); records the debt; and lifts the protection.
"""

import os
from pathlib import Path

from twzlinux.abi import constants as c

from .objects import Obj
from .pages import page_stat
from .store import Backing

_EVICT = (c.OBJ_NULLPAGE_SIZE, c.OBJ_METAINFO_OFFSET & ~(c.PAGE_SIZE - 1))  # not the meta page


class Pager:
    def __init__(self, objects, budget_pages: int, swap_dir: Path):
        self.objects, self.lazy = objects, objects.lazy
        self.budget = budget_pages
        self.swap_dir = Path(swap_dir)
        self.swap_dir.mkdir(mode=0o700, exist_ok=True)
        self._swaps: dict[int, Obj] = {}  # evicted object -> its swap file, as a debt's source

    def resident(self) -> dict:
        return {o: page_stat(o, 0)["resident"] for o in self.objects.live()
                if not o.persistent and not o.kernel}

    def balance(self) -> int:
        """Evict until the volatile objects fit the budget (or nothing more may go). Returns
        the pages evicted."""
        self._drop_settled_swaps()
        resident = self.resident()
        total, evicted = sum(resident.values()), 0
        for obj in sorted(resident, key=resident.get, reverse=True):
            if total <= self.budget:
                break
            n = self._evict(obj, resident[obj])
            total, evicted = total - n, evicted + n
        return evicted

    def _evict(self, obj: Obj, resident: int) -> int:
        if obj.id in self._swaps or not self.lazy.can_page_out(obj):
            return 0
        fd = os.open(self.swap_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, c.OBJ_MAXSIZE)
        swap = Obj(-obj.id - 1, Backing(fd), 0, 0, kernel=True)  # no real ID is < 0
        if not self.lazy.page_out(obj, swap, *_EVICT):
            swap.backing.close()
            return 0
        self._swaps[obj.id] = swap
        return resident

    def _drop_settled_swaps(self) -> None:
        """Close swap files nothing owes anything to any more (paged back in, or freed)."""
        for oid, swap in list(self._swaps.items()):
            if not self.lazy.involved(swap.id):
                self.lazy.forget(swap.id)
                swap.backing.close()
                del self._swaps[oid]
