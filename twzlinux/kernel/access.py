"""Who may do what: a process's attached security contexts and the permission checks.

A process starts either with the contexts `twzrun --sctx` named (the first one active), or
with none: Twizzler's *temporary* context, under which an object grants its default
permissions (`p_flags`), which is what every program had before contexts existed. No program is
ever Twizzler's bootstrap superuser: twzd and the `twz` tools are.

ATTACH puts a context on the calling process (needs USE on it); DETACH takes it off, now or
around a given syscall (ONENTRY, ONEXIT, REATTACH = off for the call, back after). A context
whose `flags` has UNDETACHABLE (bit 0, as in Rust Twizzler) refuses to come off.

Refusals are SyscallError(EACCES) whose message names the object and the missing permission.
"""

import mmap
import time
from dataclasses import dataclass, field
from errno import EACCES, EINVAL, ENOENT, ENOSPC, EPERM

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s

from . import sctx
from .errors import SyscallError
from .objects import Obj
from .security import Verifier, key_from_object, perm_str

TWZ_DETACH_ONENTRY, TWZ_DETACH_ONEXIT = 1, 2
SCTX_UNDETACHABLE = 1
MAX_ATTACHED = 32  # TWZ_THRD_MAX_SCS
SYS_DETACH = 5


@dataclass
class Contexts:
    attached: list = field(default_factory=list)   # sctx IDs; [] = the temporary context
    active: int | None = None
    pending: list = field(default_factory=list)    # (sysc, flags, [ids]) scheduled detaches

    def inherit(self) -> "Contexts":
        """A new thread's contexts: a copy of its creator's (Twizzler's THRD_SPAWN)."""
        return Contexts(list(self.attached), self.active)


class Access:
    def __init__(self, objects):
        self.objects = objects
        self.verifier = Verifier(self._kuid_of, self._public_key, time.time_ns)
        self._kuids: dict[int, int] = {}
        self._keys: dict[int, object] = {}
        self._maps: dict[int, mmap.mmap] = {}
        # sctx -> target -> Lookup. Valid while the context is unchanged: twzd's own edits call
        # invalidate(); a context a program may write (mapped writable) is never cached.
        self._cache: dict[int, dict[int, sctx.Lookup]] = {}
        self._writable: set[int] = set()

    # --- object access for the verifier and the context reader -----------------------------
    def _kuid_of(self, oid: int) -> int | None:
        kuid = self._kuids.get(oid)
        if kuid is None:
            obj = self.objects.lookup(oid, hidden=True)
            if obj is None:
                return None
            # An ID is derived from its kuid, so an object's kuid never changes.
            kuid = self._kuids[oid] = obj.meta().kuid
        return kuid

    def _public_key(self, kuid: int):
        key = self._keys.get(kuid)
        if key is None:
            obj = self.objects.lookup(kuid, hidden=True)
            if obj is None:
                return None
            try:
                key = key_from_object(obj.backing.pread)
            except ValueError:
                return None
            if hasattr(key, "public_key"):
                return None  # a private key object never verifies (and never leaks by use)
            self._keys[kuid] = key
        return key

    def reader(self, obj: Obj) -> sctx.Read:
        """Read a context through a read-only mapping in twzd: no syscall per field."""
        m = self._maps.get(obj.id)
        if m is None or m.closed:
            m = self._maps[obj.id] = mmap.mmap(obj.backing.fd, c.OBJ_MAXSIZE, mmap.MAP_SHARED,
                                               mmap.PROT_READ)
        return lambda off, n: m[off:off + n]

    def invalidate(self, sctx_id: int) -> None:
        self._cache.pop(sctx_id, None)

    def mapped_writable(self, obj: Obj) -> None:
        """A program got a writable fd of obj: if it is a context, stop trusting the cache."""
        if obj.kso_type == c.KSO_SECCTX:
            self._writable.add(obj.id)
            self.invalidate(obj.id)

    # --- permissions -----------------------------------------------------------------------
    def context_perms(self, sctx_id: int, obj: Obj) -> sctx.Lookup:
        cached = self._cache.get(sctx_id)
        hit = cached.get(obj.id) if cached is not None else None
        if hit is not None and (not hit.until or time.time_ns() < hit.until):
            return hit
        ctx = self.objects.lookup(sctx_id, hidden=True)
        if ctx is None:
            return sctx.Lookup(0, None, "security context gone")
        try:
            r = sctx.lookup(self.reader(ctx), sctx_id, obj.id, obj.p_flags, self.verifier)
        except ValueError as e:
            return sctx.Lookup(0, None, str(e))
        if sctx_id not in self._writable:
            self._cache.setdefault(sctx_id, {})[obj.id] = r
        return r

    def perms(self, ctxs: Contexts, obj: Obj) -> tuple[int, str]:
        """(effective permissions, why a capability gave nothing) under the active context."""
        if ctxs.active is None:
            return obj.p_flags, ""
        r = self.context_perms(ctxs.active, obj)
        return r.perms, r.why

    def gates(self, ctxs: Contexts, obj: Obj):
        """The gate range the active context's capabilities allow on obj (None: no limit
        beyond the object's own gates)."""
        if not ctxs.active:
            return None
        return self.context_perms(ctxs.active, obj).gates

    def check(self, ctxs: Contexts, obj: Obj, need: int, what: str) -> None:
        if ctxs.active is None and need & c.MIP_DFL_DEL:
            need &= ~c.MIP_DFL_DEL  # the temporary context may delete, as before contexts
        have, why = self.perms(ctxs, obj)
        missing = need & ~have
        if missing:
            raise SyscallError(EACCES, refusal(obj.id, missing, what, why))

    # --- attach / detach ---------------------------------------------------------------------
    def attach(self, ctxs: Contexts, child: Obj) -> None:
        if child.kso_type != c.KSO_SECCTX:
            raise SyscallError(EINVAL, f"{s.id_str(child.id)} is not a security context")
        try:
            sctx.geometry(self.reader(child))
        except ValueError as e:
            raise SyscallError(EINVAL, str(e)) from None
        if child.id in ctxs.attached:
            return
        if len(ctxs.attached) >= MAX_ATTACHED:
            raise SyscallError(ENOSPC, f"already {MAX_ATTACHED} contexts attached")
        ctxs.attached.append(child.id)
        if ctxs.active is None:
            ctxs.active = child.id  # the first real context replaces the temporary one

    def detach(self, ctxs: Contexts, child_id: int) -> None:
        """Take `child_id` (0 = all) off now."""
        ids = list(ctxs.attached) if not child_id else [child_id]
        for oid in ids:
            if oid not in ctxs.attached:
                raise SyscallError(ENOENT, f"{s.id_str(oid)} is not attached")
            obj = self.objects.lookup(oid, hidden=True)
            if obj is not None and sctx_flags(self.reader(obj)) & SCTX_UNDETACHABLE:
                raise SyscallError(EPERM, f"security context {s.id_str(oid)} is undetachable")
        for oid in ids:
            ctxs.attached.remove(oid)
        if ctxs.active not in ctxs.attached:
            ctxs.active = ctxs.attached[0] if ctxs.attached else None
            if ctxs.active is None and ids:
                # Detaching everything leaves an empty context (no rights), not the temporary one: a
                # program must not regain default rights its context's masks took away.
                ctxs.active = 0

    def schedule(self, ctxs: Contexts, child_id: int, sysc: int, flags: int) -> None:
        if sysc in (0, SYS_DETACH):
            if flags & (TWZ_DETACH_ONENTRY | TWZ_DETACH_ONEXIT) or not flags:
                self.detach(ctxs, child_id)
            return
        ids = list(ctxs.attached) if not child_id else [child_id]
        ctxs.pending.append((sysc, flags, ids))

    def around(self, ctxs: Contexts, sysc: int, run, *args):
        """run(*args), a syscall, with its scheduled detaches applied (each schedule is used
        once)."""
        if not ctxs.pending:  # the common case, on every call: nothing scheduled at all
            return run(*args)
        due = [p for p in ctxs.pending if p[0] == sysc]
        if not due:
            return run(*args)
        ctxs.pending = [p for p in ctxs.pending if p[0] != sysc]
        back = []
        for _, flags, ids in due:
            if flags & TWZ_DETACH_ONEXIT:
                continue
            for oid in ids:
                if oid in ctxs.attached:
                    self.detach(ctxs, oid)
                    if not flags & TWZ_DETACH_ONENTRY:
                        back.append(oid)  # REATTACH
        try:
            return run(*args)
        finally:
            for _, flags, ids in due:
                if flags & TWZ_DETACH_ONEXIT:
                    for oid in ids:
                        if oid in ctxs.attached:
                            self.detach(ctxs, oid)
            for oid in back:
                obj = self.objects.lookup(oid, hidden=True)
                if obj is not None:
                    if ctxs.active == 0:
                        ctxs.active = None
                    self.attach(ctxs, obj)


def sctx_flags(read: sctx.Read) -> int:
    return int.from_bytes(read(sctx.BASE + sctx.FLAGS, 4), "little")


def refusal(oid: int, missing: int, what: str, why: str = "") -> str:
    text = f"{what}: the security context does not grant {perm_str(missing)} on object " \
           f"{s.id_str(oid)}"
    return f"{text} ({why})" if why else text
