"""How many live objects one program may have made: a flood of OCREATEs must not exhaust twzd.

Every volatile object is a memfd that twzd holds open (a persistent one, an open file), so a
program creating objects without end would run twzd out of file descriptors, and then twzd
could no longer accept a connection or start a program: everyone's denial of service. A program
gets TWZ_OBJECT_QUOTA (read by twzd at start; default 4096) live objects of its own making;
beyond that OCREATE is EDQUOT until it deletes some. The limit is per program: its threads share
its kernel record, and the records of processes it forks or starts count against it
(Process.program), so that forking does not multiply it.
"""

import os
import weakref
from errno import EDQUOT

from .errors import SyscallError

DEFAULT = 4096


class Quota:
    def __init__(self, objects, limit: int | None = None):
        self.objects = objects
        self.limit = limit if limit is not None else int(os.environ.get("TWZ_OBJECT_QUOTA",
                                                                        DEFAULT))
        self._made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def check(self, proc) -> None:
        made = self._made.get(proc.program or proc)
        if made is None or len(made) < self.limit:
            return
        # prune what has gone since (deleted and freed), then decide
        made.intersection_update(oid for oid in made
                                 if self.objects.lookup(oid, hidden=True) is not None)
        if len(made) >= self.limit:
            raise SyscallError(EDQUOT, f"this program has {len(made)} live objects of its own, "
                                       f"twzd's limit per program (TWZ_OBJECT_QUOTA); delete some")

    def charge(self, proc, oid: int) -> None:
        self._made.setdefault(proc.program or proc, set()).add(oid)
