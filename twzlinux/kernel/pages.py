"""Page-level facts about an object (`twz stat`) and point-in-time copies (`twz snapshot`).

Residency comes from the host's page cache, asked with cachestat(2) (Linux 6.5+) on the
backing file, so neither twzd nor any process has to map or touch the object: resident pages
are the ones in memory, dirty ones those not yet written back (a memfd has no backing store, so
every page of a volatile object it holds counts as dirty there).
"""

from twzlinux.abi import constants as c

from .errors import SyscallError
from .store import cachestat


def page_stat(obj, owed: int) -> dict:
    """Counts of obj's pages: resident, dirty, writeback, evicted (host page cache) and owed
    (still to be copied from a lazy copy's source, kernel/cow.py)."""
    try:
        cache, dirty, writeback, evicted, _ = cachestat(obj.backing.fd, 0, c.OBJ_MAXSIZE)
    except OSError as e:
        raise SyscallError(e.errno, e.strerror) from None
    return {"resident": cache, "dirty": dirty, "writeback": writeback, "evicted": evicted,
            "owed": owed, "persistent": obj.persistent}


def snapshot(objects, obj):
    """A new object holding obj's contents as of now: a lazy copy when it can be one (exact at
    this instant, kernel/cow.py); otherwise an eager copy, which is point-in-time only if
    nothing writes obj meanwhile (the caller pauses its writers)."""
    # never HASHDATA: the snapshot of an unchanged object would derive the same ID
    flags = (obj.p_flags & c.MIP_PFLAGS_MASK & ~c.MIP_HASHDATA
             | (c.TWZ_SYS_OC_PERSIST_ if obj.persistent else 0))
    return objects.create(0, flags, obj)
