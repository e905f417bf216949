"""One handler per syscall-table entry, registered by the entry's name.

A handler is `fn(kernel, proc, mem, *args)` with the arguments decoded by `join_args`; it returns
the syscall's value (or an FdResult) and reports failure only by raising SyscallError. Table
entries without a handler here answer ENOSYS (VMAP for good; thread, attach, become, signal,
kaction, opin, kqueue, ocreate2 and console calls until they are implemented). Semantics follow
reference §1.3; each docstring names the deviations.
"""

from errno import EACCES, EINVAL, ENOENT, ENOSYS, EPERM
from typing import TYPE_CHECKING, Callable

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.abi.syscalls import BY_NAME

from .access import refusal
from .errors import FdResult, MemoryAccess, SyscallError
from .lockdown import hide_inode
from .objects import Obj

if TYPE_CHECKING:
    from .core import Kernel, Process

HANDLERS: dict[str, Callable] = {}

_PERMS = c.FE_READ | c.FE_WRITE | c.FE_EXEC | c.FE_USE


def handles(name: str):
    assert name in BY_NAME, name

    def register(fn):
        HANDLERS[name] = fn
        return fn
    return register


def _object(k: "Kernel", oid: int, hidden: bool = False) -> Obj:
    obj = k.objects.lookup(oid, hidden=hidden)
    if obj is None:
        raise SyscallError(ENOENT, f"no object {s.id_str(oid)}")
    return obj


def _foreign(proc, obj: Obj) -> bool:
    """A view or thread repr that twzd made for another program: readable (default
    permissions), never writable, whatever the caller's context says — writing another
    program's view would redirect its mappings, which run with its rights."""
    return (obj.kernel and obj.kso_type in (c.KSO_VIEW, c.KSO_THREAD)
            and obj.id not in (proc.view_id, proc.thread_id))


def _check_flags(flags: int, valid: int) -> None:
    if flags & ~valid:
        raise SyscallError(EINVAL, f"unknown flags {flags & ~valid:#x}")


def _check_data_range(start: int, length: int) -> None:
    """[start, start + length) must lie in the data region (offsets from the object base)."""
    if start < 0 or length < 0 or start + length > c.OBJ_DATA_SIZE:
        raise SyscallError(EINVAL, "range outside the data region")


@handles("NULL")
def sys_null(k, proc, mem, arg):
    return 0


@handles("DEBUG_PRINT")
def sys_debug_print(k, proc, mem: MemoryAccess, ptr, length):
    if length > c.DEBUG_PRINT_MAX:
        raise SyscallError(EINVAL, "more than 1024 bytes")
    k.console(proc, mem.read(ptr, length) if length else b"")
    return 0


@handles("OCREATE")
def sys_ocreate(k, proc, mem: MemoryAccess, kuid, src, flags, retid):
    """Create an object; EEXIST when ZERONONCE (or HASHDATA) derives an ID already in use.

    Deviations: PERSIST with a source is allowed (Twizzler: ENOTSUP, its NV regions cannot
    clone); the copy is eager, not copy-on-write; a source needs READ under the caller's security
    context (Twizzler's SCP_READ check) else EACCES. A NULL
    retid creates the object without reporting its ID, as in Twizzler. If writing the ID
    faults, the object is deleted again before EFAULT is returned.
    """
    _check_flags(flags, c.OC_VALID_FLAGS)
    if (flags & c.OC_KSO_MASK) >> c.OC_KSO_SHIFT >= c.KSO_MAX:
        raise SyscallError(EINVAL, "KSO type out of range")
    source = _object(k, src) if src else None
    if source is not None:
        k.access.check(proc.ctx, source, c.MIP_DFL_READ, "OCREATE source")
    k.quota.check(proc)
    obj = k.objects.create(kuid, flags, source)
    k.quota.charge(proc, obj.id)
    if retid:
        try:
            mem.write(retid, s.id_pack(obj.id))
        except SyscallError:
            k.objects.delete(obj, immediate=True)
            raise
    return 0


@handles("ODELETE")
def sys_odelete(k, proc, mem, oid, flags):
    """Mark deleted; freed once unreferenced. IMMEDIATE also hides it from new lookups.

    Deviation: the kernel's own objects (root KSO, views, thread reprs) live as long as their
    process and refuse deletion with EPERM.
    """
    _check_flags(flags, c.TWZ_SYS_OD_IMMEDIATE)
    obj = _object(k, oid)
    if obj.kernel:
        raise SyscallError(EPERM, "kernel object")
    k.access.check(proc.ctx, obj, c.MIP_DFL_DEL, "ODELETE")
    k.objects.delete(obj, immediate=bool(flags & c.TWZ_SYS_OD_IMMEDIATE))
    return 0


@handles("OSTAT")
def sys_ostat(k, proc, mem: MemoryAccess, oid, kind, arg, buf):
    """OS_TYPE_OBJ fills kernel_ostat, OS_TYPE_PAGE (arg = page number) kernel_ostat_page:
    OS_PAGE_EXIST if the page holds data, OS_PAGE_COW if a lazy copy still owes it its source's.

    Twizzler (OLD) declares this call but answers ENOSYS; these semantics are ours. Hidden
    (deleted but still referenced) objects are visible here, flagged OS_FLAGS_HIDDEN.
    """
    obj = _object(k, oid, hidden=True)
    if kind == c.OS_TYPE_OBJ:
        flags = ((c.OS_FLAGS_PERSIST if obj.persistent else 0)
                 | (c.OS_FLAGS_HIDDEN if obj.hidden else 0)
                 | (c.OS_FLAGS_KERNEL if obj.kernel else 0)
                 | (c.OS_FLAGS_SOURCED if obj.source is not None else 0))
        out = s.KERNEL_OSTAT.pack(flags, obj.cache_mode, obj.kso_type, 0, len(obj.derived), 0)
    elif kind == c.OS_TYPE_PAGE:
        if not 0 <= arg < c.OBJ_MAXSIZE // c.PAGE_SIZE:
            raise SyscallError(EINVAL, "page beyond the object")
        # A page a lazy copy still owes is Twizzler's copy-on-write page, reported as such
        # (and as its source's page exists), not settled by being looked at.
        debt = k.objects.lazy.creditor(obj.id, arg * c.PAGE_SIZE)
        holder, off, cow = debt or (obj, arg * c.PAGE_SIZE, False)
        exist = holder.backing.has_data(off, c.PAGE_SIZE)
        out = s.KERNEL_OSTAT_PAGE.pack(arg, (c.OS_PAGE_EXIST if exist else 0)
                                       | (c.OS_PAGE_COW if cow else 0), 0, 0)
    else:
        raise SyscallError(EINVAL, "unknown stat type")
    mem.write(buf, out)
    return 0


@handles("OCTL")
def sys_octl(k, proc, mem, oid, op, a1, a2, a3):
    """CACHE_MODE sets the mode of [a1, a1+a2) (data offsets) to a3; MAP pre-populates it.

    Deviations: the host decides caching of shared memory, so the mode is only recorded (one
    per object, reported by OSTAT); MAP allocates the backing pages; a device ID in a3 gives
    ENOENT, as there are no devices yet.
    """
    obj = _object(k, oid)
    k.access.check(proc.ctx, obj, c.MIP_DFL_WRITE, "OCTL")
    if op == c.OCO_CACHE_MODE:
        _check_data_range(a1, a2)
        if a3 not in (c.OC_CM_WB, c.OC_CM_UC, c.OC_CM_WT, c.OC_CM_WC):
            raise SyscallError(EINVAL, "unknown cache mode")
        obj.cache_mode = a3
        k.objects.remember(obj)
    elif op == c.OCO_MAP:
        _check_data_range(a1, a2)
        if a3:
            raise SyscallError(ENOENT, "no device")
        if a2:
            obj.backing.allocate(c.OBJ_NULLPAGE_SIZE + a1, a2)
    else:
        raise SyscallError(EINVAL, "unknown op")
    return 0


@handles("OTIE")
def sys_otie(k, proc, mem, parent, child, flags):
    """Tie child's lifetime to parent (counted); UNTIE removes one tie.

    Deviation: a missing parent or child is ENOENT where Twizzler quietly returns 0.
    """
    _check_flags(flags, c.OTIE_UNTIE)
    if parent == child:
        raise SyscallError(EPERM, "an object cannot tie itself")
    p, ch = _object(k, parent), _object(k, child)
    if flags & c.OTIE_UNTIE:
        if not k.objects.untie(p, ch):
            raise SyscallError(ENOENT, "no such tie")
    else:
        k.objects.tie(p, ch)
    return 0


@handles("OCOPY")
def sys_ocopy(k, proc, mem: MemoryAccess, destp, srcp, doff, soff, length, flags):
    """Copy src's [soff, soff+len) to dest's [doff, doff+len) (slot offsets, 4 KiB aligned);
    a zero src ID zero-fills. IDs are read through the pointers.

    Deviations: the copy is lazy between volatile objects (kernel/cow.py) and eager otherwise,
    and a destination may owe pages to several sources, so Twizzler's one-source-per-destination
    rule does not apply; overlapping ranges within one object are EINVAL; flags must be 0.
    """
    dest_id = s.id_unpack(mem.read(destp, s.ID_BYTES))
    src_id = s.id_unpack(mem.read(srcp, s.ID_BYTES))
    _check_flags(flags, 0)
    if (doff | soff | length) % c.PAGE_SIZE:
        raise SyscallError(EINVAL, "offsets and length must be page aligned")
    if doff + length > c.OBJ_MAXSIZE or soff + length > c.OBJ_MAXSIZE:
        raise SyscallError(EINVAL, "range beyond the object")
    dest = _object(k, dest_id)
    src = _object(k, src_id) if src_id else None
    if _foreign(proc, dest):
        raise SyscallError(EPERM, "another program's view or thread")
    k.access.check(proc.ctx, dest, c.MIP_DFL_WRITE, "OCOPY destination")
    if src is not None:
        k.access.check(proc.ctx, src, c.MIP_DFL_READ, "OCOPY source")
    if src is dest and abs(doff - soff) < length:
        raise SyscallError(EINVAL, "overlapping ranges")
    if not length:
        return 0
    if src is None:
        dest.backing.punch(doff, length)
    else:
        k.objects.lazy.copy(dest, doff, src, soff, length)
        dest.source = src.id
        k.objects.remember(dest)
    return 0


@handles("INVL_KSO")
def sys_invl_kso(k, proc, mem: MemoryAccess, ops, count):
    """Invalidate view mappings; returns how many ops succeeded, each op's result written back.

    An op succeeds when its target is a view KSO. The unmapping itself happens in the caller's
    runtime (it owns its mappings), so the kernel only validates and reports.
    """
    if count > c.INVL_MAX_OPS:
        raise SyscallError(EINVAL, "too many ops")
    if not count:
        return 0
    size = s.SYS_INVALIDATE_OP.size
    raw = bytearray(mem.read(ops, size * count))
    done = 0
    for i in range(count):
        oid, offset, length, flags, _ = s.SYS_INVALIDATE_OP.unpack_from(raw, i * size)
        if not flags & c.KSOI_VALID:
            continue
        target = s.id_unpack(oid)
        if flags & c.KSOI_CURRENT:
            target = proc.view_id if target == c.KSO_CURRENT_VIEW else 0
        obj = k.objects.lookup(target) if target else None
        ok = obj is not None and obj.kso_type == c.KSO_VIEW
        done += ok
        s.SYS_INVALIDATE_OP.pack_into(raw, i * size, oid, offset, length, flags,
                                      c.KSO_INVL_RES_OK if ok else c.KSO_INVL_RES_ERR)
    mem.write(ops, bytes(raw))
    return done


@handles("KCONF")
def sys_kconf(k, proc, mem, cmd, arg):
    """RDRESET gives this boot's reset code. Deviation: TSC_PSPERIOD is EINVAL (no TSC
    calibration on the host side yet)."""
    if cmd == c.KCONF_RDRESET:
        return k.reset_code
    raise SyscallError(EINVAL, "unknown kconf command")


@handles("LX_OBJFD")
def sys_lx_objfd(k, proc: "Process", mem, oid, perms):
    """An fd for `oid` with access perms & what the caller's security context grants.

    Bits outside READ|WRITE|EXEC|USE are ignored, so view-entry flags (VE_VALID...) can be
    passed as they are. The fd is read-only unless WRITE is granted; READ, and EXEC when asked
    for, must be granted (EACCES naming the object and the permission): the runtime maps an
    EXEC entry executable, so EXEC is refused here rather than left to the mapping. The process
    counts as mapping the object until it exits.
    """
    obj = _object(k, oid)
    have, why = k.access.perms(proc.ctx, obj) if not _foreign(proc, obj) else (
        obj.p_flags & ~c.MIP_DFL_WRITE, "another program's view or thread")
    granted = perms & _PERMS & have
    missing = (perms & (c.FE_READ | c.FE_EXEC) | c.FE_READ) & ~granted
    if missing:
        raise SyscallError(EACCES, refusal(oid, missing, "map", why))
    hide_inode(obj.backing)
    if granted & c.FE_WRITE:
        k.access.mapped_writable(obj)
    k.objects.lazy.objfd(proc, obj)
    fd = obj.backing.open_fd(writable=bool(granted & c.FE_WRITE))
    k.objects.map(obj, proc)
    return FdResult(fd)


@handles("ATTACH")
def sys_attach(k, proc: "Process", mem, parent, child, xflags):
    """Attach security context `child` to the calling process (parent 0 or its own thread).

    Needs USE on the context. Deviation: contexts belong to the whole program (all its
    threads), and a KSO other than a context (Twizzler has no other attach op) is EINVAL.
    """
    kind = xflags & 0xFFFF
    if kind != c.KSO_SECCTX or parent not in (0, proc.thread_id):
        raise SyscallError(EINVAL, "only a security context attaches, to the calling thread")
    obj = _object(k, child)
    k.access.check(proc.ctx, obj, c.MIP_DFL_USE, "ATTACH")
    k.access.attach(proc.ctx, obj)
    return 0


@handles("DETACH")
def sys_detach(k, proc: "Process", mem, parent, child, xflags):
    """Detach `child` (0 = every context) now, or around syscall `(xflags >> 16) & 0xFFFF`:
    ONENTRY (off before it runs), ONEXIT (off after), neither = REATTACH (off for its duration).

    Deviation: a schedule serves once (the next such call); DETACH itself as the syscall (the
    default, 0) means now.
    """
    kind, sysc, flags = xflags & 0xFFFF, (xflags >> 16) & 0xFFFF, xflags >> 32
    if kind != c.KSO_SECCTX or parent not in (0, proc.thread_id):
        raise SyscallError(EINVAL, "only a security context detaches, from the calling thread")
    if flags & ~3:
        raise SyscallError(EINVAL, f"unknown detach flags {flags:#x}")
    if child and child not in proc.ctx.attached:
        raise SyscallError(ENOENT, f"{s.id_str(child)} is not attached")
    k.access.schedule(proc.ctx, child, sysc, flags)
    return 0


@handles("LX_UFFD")
def sys_lx_uffd(k, proc: "Process", mem, fd, wfd):
    """Adopt the caller's userfaultfds (its fd numbers; wfd -1 for none). ENOSYS when twzd has
    no userfaultfd adapter, EINVAL if one is not a userfaultfd.

    The runtime hands them over right after exec, so the call also says the caller's mm is
    new. A caller that is not `proc`'s own process is a program that a process of this one
    started (vfork and exec): it gets a record of its own, as a fork does (LX_FORKED), else
    its mappings would count as trapped under its parent's. `proc`'s own process calling again
    has exec'd: what it mapped went with its old mm."""
    port = k.objects.lazy.port
    if port is None:
        raise SyscallError(ENOSYS, "this kernel serves no userfaultfd")
    pid = port.tgid(k.caller) if k.caller is not None else proc.pid
    if pid != proc.pid:
        proc = k.host_process(proc.view_id, proc.thread_id, pid, proc)
    elif port.can_trap(proc):
        k.objects.lazy.new_mm(proc)
        k.objects.unmap_all(proc)
    port.adopt(proc, fd, wfd)
    return 0


@handles("LX_FORKED")
def sys_lx_forked(k, proc: "Process", mem, view_out):
    """The caller is a Linux fork of `proc`: it gets a record of its own (proc's thread and
    contexts; its exit ends no thread), under which its userfaultfds and mappings are kept, and
    a copy of proc's view (its ID into *view_out; freed with the child), so that the slots it
    allocates and releases are its own, not its parent's."""
    if k.caller is None or k.caller == proc.pid or k.caller in k.hosted:
        raise SyscallError(EINVAL, "only a forked child reports its fork, once")
    child = k.host_process(proc.view_id, proc.thread_id, k.caller, proc)  # a live process?
    view = k.clone_view(proc.view_id)
    child.view_id, child.owned = view.id, (view.id,)
    try:
        mem.write(view_out, s.id_pack(view.id))
    except SyscallError:
        k.process_exit(child)
        raise
    return 0


@handles("LX_MAPPED")
def sys_lx_mapped(k, proc: "Process", mem, base, oid):
    """Record that the caller mapped `oid` (opened with LX_OBJFD) at slot `base`."""
    if not base or base % c.OBJ_MAXSIZE or base >> 47:
        raise SyscallError(EINVAL, "base is not a slot address")
    obj = _object(k, oid)
    if proc not in obj.mappers:
        raise SyscallError(EINVAL, "the object was not opened with LX_OBJFD")
    k.objects.lazy.mapped(proc, base, obj)
    k.dirty.mapped(proc, base, obj)
    return 0


@handles("LX_FLUSH")
def sys_lx_flush(k, proc: "Process", mem, oid):
    """Write persistent `oid`'s changed pages to disk; the count, or the object's page count
    when twzd could not tell which changed and wrote all its dirty pages (kernel/dirty.py)."""
    obj = _object(k, oid)
    written = k.dirty.flush(obj)
    return c.OBJ_MAXSIZE // c.PAGE_SIZE if written is None else written
