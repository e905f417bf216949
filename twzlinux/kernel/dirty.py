"""Which pages of a persistent object changed, so that a flush writes only those.

Each process hands twzd a second userfaultfd in WP_ASYNC mode (the first stays synchronous for
lazy copies; a uffd is one or the other as a whole, and ext4 file mappings only accept async
write-protection). A persistent object's mappings are write-protected through it; a write lifts
the protection of its page by itself, with no trap, and PAGEMAP_SCAN of the process's page map
then reports exactly the written pages, protecting them again in the same step.

Tracking an object starts at its first flush (arming costs about a millisecond per mapping, which
objects nobody flushes should not pay): that flush writes whatever the page cache holds dirty,
and so does any flush while a writer cannot be tracked (no second uffd, a mapping whose address
twzd does not know yet, a page map it cannot read). Later flushes write only the pages the
mappers wrote since the previous one.
"""

import os
from errno import EINVAL, EPERM
from typing import TYPE_CHECKING, Hashable

from twzlinux.abi import constants as c

from .errors import SyscallError

if TYPE_CHECKING:
    from .cow import LazyCopies
    from .objects import Obj



def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class DirtyPages:
    def __init__(self, lazy: "LazyCopies"):
        self.lazy = lazy  # its port, and where each process mapped what
        self._armed: dict[int, set[tuple[Hashable, int]]] = {}  # object -> tracked mappings

    def _arm(self, proc, base: int) -> bool:
        err = self.lazy.port.track(proc, base)
        return not err or err == EPERM  # EPERM: a read-only mapping, which writes nothing

    def mapped(self, proc, base: int, obj: "Obj") -> None:
        """LX_MAPPED: a new mapping of a tracked object is tracked from the start."""
        armed = self._armed.get(obj.id)
        if armed is not None and self.lazy.port.can_track(proc) and self._arm(proc, base):
            armed.add((proc, base))

    def flush(self, obj: "Obj") -> int | None:
        """Write obj's changed pages to disk: how many, or None when it had to write whatever
        the page cache held dirty (the first flush, or an untracked writer)."""
        if not obj.persistent:
            raise SyscallError(EINVAL, "a volatile object has nowhere to be flushed")
        port, maps = self.lazy.port, self.lazy.mappings(obj)
        trackable = (port is not None and self.lazy.located(obj)
                     and all(port.can_track(p) for p in obj.mappers))
        armed = self._armed.get(obj.id)
        if not trackable:
            self._armed.pop(obj.id, None)
        elif armed is None:
            if all(self._arm(proc, base) for proc, base in maps):
                self._armed[obj.id] = set(maps)
        else:
            ranges, complete = [], True
            for proc, base in maps:
                got = port.written(proc, base) if (proc, base) in armed else None
                if got is None:  # unreadable, or mapped anew before tracking reached it
                    complete = False
                    if self._arm(proc, base):
                        armed.add((proc, base))
                else:
                    ranges += got
            armed &= set(maps)
            if complete:
                return self._write(obj, _merge(ranges))
        obj.backing.flush()
        return None

    def _write(self, obj: "Obj", ranges: list[tuple[int, int]]) -> int:
        # The host writes back exactly its dirty pages: the written ones, plus any twzd wrote
        # itself (metainfo). Starting each range first (sync_file_range) only cost more.
        os.fdatasync(obj.backing.fd)
        return sum(hi - lo for lo, hi in ranges) // c.PAGE_SIZE
