"""The sans-I/O kernel core, driven directly: every syscall's success and error paths.

Caller memory is a bytearray behind the MemoryAccess protocol; registers are built from the
syscall table with split_args, as libtwz does.
"""

import errno
import fcntl
import json
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from twzlinux.abi import constants as c
from twzlinux.abi import structs as s
from twzlinux.abi.namespace import iter_entries
from twzlinux.abi.syscalls import BY_NAME, SYSCALL_BASE, TABLE, split_args
from twzlinux.kernel.core import FdResult, Kernel, SyscallError
from twzlinux.kernel.ids import compute_id

BASE = 0x10000
SCRATCH = BASE + 0x100   # an ID or struct slot
BUF = BASE + 0x1000      # a larger buffer
BAD = 0xDEAD0000         # unmapped in the fake memory
RW = c.MIP_DFL_READ | c.MIP_DFL_WRITE


class FakeMemory:
    def __init__(self, size=0x10000):
        self.buf = bytearray(size)

    def _range(self, addr, n):
        if addr < BASE or addr + n > BASE + len(self.buf):
            raise SyscallError(errno.EFAULT)
        return addr - BASE, addr - BASE + n

    def read(self, addr, n):
        lo, hi = self._range(addr, n)
        return bytes(self.buf[lo:hi])

    def write(self, addr, data):
        lo, hi = self._range(addr, len(data))
        self.buf[lo:hi] = data


@pytest.fixture
def home(tmp_path):
    return tmp_path / "twz"


@pytest.fixture
def console():
    return []


@pytest.fixture
def k(home, console):
    kernel = Kernel(home, lambda proc, data: console.append((proc, data)))
    yield kernel
    kernel.close()


@pytest.fixture
def mem():
    return FakeMemory()


@pytest.fixture
def proc(k):
    return k.new_process()


def sys(k, proc, mem, name, *args):
    regs = split_args(BY_NAME[name], args)
    return k.syscall(proc, BY_NAME[name].linux_nr, regs + [0] * (6 - len(regs)), mem)


def fails(code, k, proc, mem, name, *args):
    with pytest.raises(SyscallError) as ei:
        sys(k, proc, mem, name, *args)
    assert ei.value.errno == code, (name, errno.errorcode.get(ei.value.errno))


def create(k, proc, mem, flags=RW, src=0, kuid=0):
    assert sys(k, proc, mem, "OCREATE", kuid, src, flags, SCRATCH) == 0
    return s.id_unpack(mem.read(SCRATCH, 16))


def objfd(k, proc, mem, oid, perms=c.FE_READ | c.FE_WRITE):
    res = sys(k, proc, mem, "LX_OBJFD", oid, perms)
    assert isinstance(res, FdResult)
    return res.fd


def access_mode(fd):
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def put_id(mem, addr, oid):
    mem.write(addr, s.id_pack(oid))
    return addr


def exists(k, proc, mem, oid):
    try:
        os.close(objfd(k, proc, mem, oid, c.FE_READ))
        return True
    except SyscallError as e:
        assert e.errno == errno.ENOENT
        return False


def ostat(k, proc, mem, oid):
    sys(k, proc, mem, "OSTAT", oid, c.OS_TYPE_OBJ, 0, BUF)
    return s.KERNEL_OSTAT.unpack(mem.read(BUF, s.KERNEL_OSTAT.size))


def page_exists(k, proc, mem, oid, pgnr):
    sys(k, proc, mem, "OSTAT", oid, c.OS_TYPE_PAGE, pgnr, BUF)
    got_pgnr, flags, _, _ = s.KERNEL_OSTAT_PAGE.unpack(mem.read(BUF, s.KERNEL_OSTAT_PAGE.size))
    assert got_pgnr == pgnr
    return bool(flags & c.OS_PAGE_EXIST)


def write_obj(k, proc, mem, oid, off, data):
    fd = objfd(k, proc, mem, oid)
    os.pwrite(fd, data, off)
    os.close(fd)


def read_obj(k, proc, mem, oid, off, n):
    fd = objfd(k, proc, mem, oid, c.FE_READ)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


# --- dispatch ------------------------------------------------------------------------------

def test_null(k, proc, mem):
    assert sys(k, proc, mem, "NULL", 0x1234) == 0


@pytest.mark.parametrize("nr", [SYSCALL_BASE + 99, SYSCALL_BASE + 0x1FF, 0, 60])
def test_unknown_numbers_are_enosys(k, proc, mem, nr):
    with pytest.raises(SyscallError) as ei:
        k.syscall(proc, nr, [0] * 6, mem)
    assert ei.value.errno == errno.ENOSYS


def test_registers_are_taken_as_u64(k, proc, mem):
    mem.write(BUF, b"hi")
    regs = [BUF - (1 << 64), 2, 0, 0, 0, 0]  # an adapter passing signed values
    assert k.syscall(proc, BY_NAME["DEBUG_PRINT"].linux_nr, regs, mem) == 0


@pytest.mark.parametrize("name", ["VMAP", "THRD_SYNC", "BECOME",
                                  "KQUEUE", "OCREATE2"])
def test_entries_without_handler_are_enosys(k, proc, mem, name):
    with pytest.raises(SyscallError) as ei:
        k.syscall(proc, BY_NAME[name].linux_nr, [0] * 6, mem)
    assert ei.value.errno == errno.ENOSYS


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(nr=st.sampled_from([t.linux_nr for t in TABLE]),
       regs=st.lists(st.one_of(st.integers(0, 0x20000), st.integers(0, (1 << 64) - 1),
                               st.sampled_from([BASE, SCRATCH, BUF, 1, c.KSO_ROOT_ID])),
                     min_size=6, max_size=6))
def test_arbitrary_arguments_raise_only_syscall_errors(k, proc, mem, nr, regs):
    try:
        res = k.syscall(proc, nr, regs, mem)
    except SyscallError:
        return
    if isinstance(res, FdResult):
        os.close(res.fd)
    else:
        assert isinstance(res, int)


# --- DEBUG_PRINT ---------------------------------------------------------------------------

def test_debug_print(k, proc, mem, console):
    mem.write(BUF, b"hello, kernel")
    assert sys(k, proc, mem, "DEBUG_PRINT", BUF, 13) == 0
    assert sys(k, proc, mem, "DEBUG_PRINT", BUF, 0) == 0
    mem.write(BUF, b"x" * 1024)
    assert sys(k, proc, mem, "DEBUG_PRINT", BUF, 1024) == 0
    assert console == [(proc, b"hello, kernel"), (proc, b""), (proc, b"x" * 1024)]


def test_debug_print_errors(k, proc, mem, console):
    fails(errno.EINVAL, k, proc, mem, "DEBUG_PRINT", BUF, 1025)
    fails(errno.EFAULT, k, proc, mem, "DEBUG_PRINT", BAD, 4)
    assert console == []


# --- OCREATE -------------------------------------------------------------------------------

def test_ocreate_writes_twizzler_metainfo(k, proc, mem):
    kuid = 0x1234 << 64 | 0x5678
    oid = create(k, proc, mem, RW | c.MIP_DFL_DEL | (c.KSO_SECCTX << c.OC_KSO_SHIFT), kuid=kuid)
    raw = read_obj(k, proc, mem, oid, c.OBJ_METAINFO_OFFSET, 64)
    magic, flags, p_flags, fot, milen, nonce, got_kuid, sz, pad = s.METAINFO.unpack(raw)
    assert (magic, p_flags, fot, milen, sz) == (c.MI_MAGIC, RW, 0, 192, 0)
    assert flags == RW | c.MIP_DFL_DEL | c.KSO_SECCTX << c.OC_KSO_SHIFT  # DFL_DEL not in p_flags
    assert s.id_unpack(got_kuid) == kuid and s.id_unpack(nonce) != 0
    assert ostat(k, proc, mem, oid)[2] == c.KSO_SECCTX
    assert read_obj(k, proc, mem, oid, 0x1000, 16) == bytes(16)


def test_ocreate_id_is_derived_from_metainfo(k, proc, mem):
    from twzlinux.kernel.metainfo import Metainfo
    oid = create(k, proc, mem)
    mi = Metainfo.unpack(read_obj(k, proc, mem, oid, c.OBJ_METAINFO_OFFSET, 64))
    assert compute_id(mi, lambda off, n: bytes(n)) == oid


def test_ocreate_ids_are_distinct_with_random_nonces(k, proc, mem):
    assert len({create(k, proc, mem) for _ in range(5)}) == 5


def test_zerononce_is_deterministic_and_collides(k, proc, mem):
    flags = RW | c.TWZ_SYS_OC_ZERONONCE
    oid = create(k, proc, mem, flags, kuid=7)
    fails(errno.EEXIST, k, proc, mem, "OCREATE", 7, 0, flags, SCRATCH)
    assert create(k, proc, mem, flags, kuid=8) != oid


@pytest.mark.parametrize("flags", [0x80, 0x8000, 1 << 20, c.KSO_MAX << c.OC_KSO_SHIFT,
                                   0xF << c.OC_KSO_SHIFT])
def test_ocreate_bad_flags(k, proc, mem, flags):
    fails(errno.EINVAL, k, proc, mem, "OCREATE", 0, 0, RW | flags, SCRATCH)


def test_ocreate_missing_source(k, proc, mem):
    fails(errno.ENOENT, k, proc, mem, "OCREATE", 0, 0xABCDEF, RW, SCRATCH)


def test_ocreate_unreadable_source(k, proc, mem):
    src = create(k, proc, mem, c.MIP_DFL_WRITE)
    fails(errno.EACCES, k, proc, mem, "OCREATE", 0, src, RW, SCRATCH)


def test_ocreate_bad_retid_leaves_no_object(k, proc, mem):
    flags = RW | c.TWZ_SYS_OC_ZERONONCE
    fails(errno.EFAULT, k, proc, mem, "OCREATE", 3, 0, flags, BAD)
    create(k, proc, mem, flags, kuid=3)  # no EEXIST: the first attempt was undone


def test_ocreate_null_retid_creates(k, proc, mem):
    flags = RW | c.TWZ_SYS_OC_ZERONONCE
    assert sys(k, proc, mem, "OCREATE", 4, 0, flags, 0) == 0
    fails(errno.EEXIST, k, proc, mem, "OCREATE", 4, 0, flags, SCRATCH)


def test_ocreate_persist_makes_a_file(k, proc, mem, home):
    oid = create(k, proc, mem, RW | c.TWZ_SYS_OC_PERSIST_)
    path = home / "objects" / s.id_str(oid)
    assert path.stat().st_size == c.OBJ_MAXSIZE
    assert path.stat().st_blocks * 512 < 1 << 20  # sparse
    assert ostat(k, proc, mem, oid)[0] & c.OS_FLAGS_PERSIST
    assert not ostat(k, proc, mem, create(k, proc, mem))[0] & c.OS_FLAGS_PERSIST


def test_ocreate_from_source_copies_eagerly_and_stays_sparse(k, proc, mem):
    src = create(k, proc, mem)
    write_obj(k, proc, mem, src, 0x1000, b"page one")
    write_obj(k, proc, mem, src, 0x5000, b"page five")
    new = create(k, proc, mem, RW, src=src)
    write_obj(k, proc, mem, src, 0x1000, b"changed!")  # a copy, not a share
    assert read_obj(k, proc, mem, new, 0x1000, 8) == b"page one"
    assert read_obj(k, proc, mem, new, 0x5000, 9) == b"page five"
    assert [page_exists(k, proc, mem, new, p) for p in range(1, 7)] == [
        True, False, False, False, True, False]
    assert ostat(k, proc, mem, src)[4] == 1  # nr_derivations
    assert ostat(k, proc, mem, new)[0] & c.OS_FLAGS_SOURCED
    k.process_exit(proc)  # drop the mappings read_obj made
    sys(k, proc, mem, "ODELETE", new, 0)
    assert ostat(k, proc, mem, src)[4] == 0


def test_ocreate_persistent_from_volatile_source(k, proc, mem):
    src = create(k, proc, mem)
    write_obj(k, proc, mem, src, 0x3000, b"across filesystems")
    new = create(k, proc, mem, RW | c.TWZ_SYS_OC_PERSIST_, src=src)
    assert read_obj(k, proc, mem, new, 0x3000, 18) == b"across filesystems"


def _sized_source(k, proc, mem, data):
    src = create(k, proc, mem)
    write_obj(k, proc, mem, src, 0x1000, data)
    fd = objfd(k, proc, mem, src)
    raw = bytearray(os.pread(fd, 64, c.OBJ_METAINFO_OFFSET))
    s.METAINFO.pack_into(raw, 0, *(s.METAINFO.unpack(raw)[:1]), c.MIF_SZ,
                         *s.METAINFO.unpack(raw)[2:7], len(data), 0)
    os.pwrite(fd, bytes(raw), c.OBJ_METAINFO_OFFSET)
    os.close(fd)
    return src


def test_hashdata_id_depends_on_source_data(k, proc, mem):
    flags = c.MIP_HASHDATA | c.MIP_DFL_READ | c.TWZ_SYS_OC_ZERONONCE
    a = create(k, proc, mem, flags, src=_sized_source(k, proc, mem, b"content A"))
    b = create(k, proc, mem, flags, src=_sized_source(k, proc, mem, b"content B"))
    assert a != b
    # the same content from a different source is the same object
    fails(errno.EEXIST, k, proc, mem, "OCREATE", 0,
          _sized_source(k, proc, mem, b"content A"), flags, SCRATCH)
    assert read_obj(k, proc, mem, a, 0x1000, 9) == b"content A"


def test_hashdata_copy_of_unsized_source_covers_its_data(k, proc, mem):
    from twzlinux.kernel.metainfo import Metainfo
    flags = c.MIP_HASHDATA | c.MIP_DFL_READ | c.TWZ_SYS_OC_ZERONONCE
    src = create(k, proc, mem)
    write_obj(k, proc, mem, src, 0x3000, b"third page")
    a = create(k, proc, mem, flags, src=src)
    mi = Metainfo.unpack(read_obj(k, proc, mem, a, c.OBJ_METAINFO_OFFSET, 64))
    assert mi.flags & c.MIF_SZ and mi.sz == 0x3000  # up to the end of the last data page
    write_obj(k, proc, mem, src, 0x3000, b"THIRD PAGE")
    assert create(k, proc, mem, flags, src=src) != a


# --- ODELETE and references ----------------------------------------------------------------

def test_odelete_missing_and_bad_flags(k, proc, mem):
    fails(errno.ENOENT, k, proc, mem, "ODELETE", 0x999, 0)
    fails(errno.EINVAL, k, proc, mem, "ODELETE", create(k, proc, mem), 2)


def test_odelete_unreferenced_frees_at_once(k, proc, mem):
    oid = create(k, proc, mem)
    assert sys(k, proc, mem, "ODELETE", oid, 0) == 0
    assert not exists(k, proc, mem, oid)
    fails(errno.ENOENT, k, proc, mem, "ODELETE", oid, 0)


def test_delete_is_deferred_while_mapped(k, proc, mem):
    other = k.new_process()
    oid = create(k, proc, mem)
    fd = objfd(k, proc, mem, oid)
    sys(k, proc, mem, "ODELETE", oid, 0)
    assert exists(k, other, mem, oid)  # still found: not IMMEDIATE
    k.process_exit(proc)
    assert exists(k, other, mem, oid)  # other maps it now
    k.process_exit(other)
    assert not exists(k, k.new_process(), mem, oid)
    os.close(fd)


def test_immediate_delete_hides_but_keeps_backing(k, proc, mem):
    oid = create(k, proc, mem)
    fd = objfd(k, proc, mem, oid)
    sys(k, proc, mem, "ODELETE", oid, c.TWZ_SYS_OD_IMMEDIATE)
    assert not exists(k, proc, mem, oid)
    assert ostat(k, proc, mem, oid)[0] & c.OS_FLAGS_HIDDEN
    os.pwrite(fd, b"still here", 0x1000)
    assert os.pread(fd, 10, 0x1000) == b"still here"
    k.process_exit(proc)
    fails(errno.ENOENT, k, proc, mem, "OSTAT", oid, c.OS_TYPE_OBJ, 0, BUF)
    os.close(fd)


def test_persistent_file_unlinked_when_freed(k, proc, mem, home):
    oid = create(k, proc, mem, RW | c.TWZ_SYS_OC_PERSIST_)
    os.close(objfd(k, proc, mem, oid))
    sys(k, proc, mem, "ODELETE", oid, 0)
    path = home / "objects" / s.id_str(oid)
    assert path.exists()
    k.process_exit(proc)
    assert not path.exists()


def test_kernel_objects_refuse_delete(k, proc, mem):
    for oid in (c.KSO_ROOT_ID, proc.view_id, proc.thread_id):
        fails(errno.EPERM, k, proc, mem, "ODELETE", oid, 0)


# --- OTIE ----------------------------------------------------------------------------------

def test_ties_are_counted(k, proc, mem):
    parent, child = create(k, proc, mem), create(k, proc, mem)
    for _ in range(2):
        assert sys(k, proc, mem, "OTIE", parent, child, 0) == 0
    sys(k, proc, mem, "ODELETE", child, 0)
    assert exists(k, proc, mem, child)
    sys(k, proc, mem, "OTIE", parent, child, c.OTIE_UNTIE)
    assert exists(k, proc, mem, child)
    sys(k, proc, mem, "OTIE", parent, child, c.OTIE_UNTIE)
    k.process_exit(proc)  # exists() mapped it
    assert not exists(k, k.new_process(), mem, child)


def test_otie_errors(k, proc, mem):
    a, b = create(k, proc, mem), create(k, proc, mem)
    fails(errno.EPERM, k, proc, mem, "OTIE", a, a, 0)
    fails(errno.ENOENT, k, proc, mem, "OTIE", a, b, c.OTIE_UNTIE)
    fails(errno.ENOENT, k, proc, mem, "OTIE", a, 0x777, 0)
    fails(errno.ENOENT, k, proc, mem, "OTIE", 0x777, b, 0)
    fails(errno.EINVAL, k, proc, mem, "OTIE", a, b, 4)


def test_freed_parent_drops_its_ties(k, proc, mem):
    parent, child, grandchild = (create(k, proc, mem) for _ in range(3))
    sys(k, proc, mem, "OTIE", parent, child, 0)
    sys(k, proc, mem, "OTIE", child, grandchild, 0)
    sys(k, proc, mem, "ODELETE", grandchild, 0)
    sys(k, proc, mem, "ODELETE", child, 0)
    assert ostat(k, proc, mem, grandchild)
    sys(k, proc, mem, "ODELETE", parent, 0)
    for oid in (parent, child, grandchild):
        fails(errno.ENOENT, k, proc, mem, "OSTAT", oid, c.OS_TYPE_OBJ, 0, BUF)


def test_thread_ties_dropped_at_exit(k, proc, mem):
    """libtwz's default: tie a new object to the thread, delete it; it dies with the thread."""
    oid = create(k, proc, mem)
    sys(k, proc, mem, "OTIE", proc.thread_id, oid, 0)
    sys(k, proc, mem, "ODELETE", oid, 0)
    other = k.new_process()
    assert exists(k, other, mem, oid)
    k.process_exit(other)
    k.process_exit(proc)
    assert not exists(k, k.new_process(), mem, oid)


# --- OSTAT ---------------------------------------------------------------------------------

def test_ostat_obj(k, proc, mem):
    st_ = ostat(k, proc, mem, proc.view_id)
    assert st_[0] & c.OS_FLAGS_KERNEL and st_[1:3] == (c.OC_CM_WB, c.KSO_VIEW)
    assert ostat(k, proc, mem, proc.thread_id)[2] == c.KSO_THREAD
    assert ostat(k, proc, mem, c.KSO_ROOT_ID)[2] == c.KSO_ROOT
    assert ostat(k, proc, mem, create(k, proc, mem)) == (0, 0, 0, 0, 0, 0)


def test_ostat_page(k, proc, mem):
    oid = create(k, proc, mem)
    assert not page_exists(k, proc, mem, oid, 3)
    write_obj(k, proc, mem, oid, 3 * 0x1000 + 5, b"x")
    assert page_exists(k, proc, mem, oid, 3)
    assert page_exists(k, proc, mem, oid, c.OBJ_MAXSIZE // 0x1000 - 1)  # the metainfo page
    fails(errno.EINVAL, k, proc, mem, "OSTAT", oid, c.OS_TYPE_PAGE, c.OBJ_MAXSIZE // 0x1000, BUF)
    fails(errno.EINVAL, k, proc, mem, "OSTAT", oid, c.OS_TYPE_PAGE, -1, BUF)


def test_ostat_errors(k, proc, mem):
    oid = create(k, proc, mem)
    fails(errno.EINVAL, k, proc, mem, "OSTAT", oid, 2, 0, BUF)
    fails(errno.EFAULT, k, proc, mem, "OSTAT", oid, c.OS_TYPE_OBJ, 0, BAD)
    fails(errno.ENOENT, k, proc, mem, "OSTAT", 0x4242, c.OS_TYPE_OBJ, 0, BUF)


# --- OCTL ----------------------------------------------------------------------------------

def test_octl_cache_mode(k, proc, mem):
    oid = create(k, proc, mem)
    assert sys(k, proc, mem, "OCTL", oid, c.OCO_CACHE_MODE, 0, 0x2000, c.OC_CM_WC) == 0
    assert ostat(k, proc, mem, oid)[1] == c.OC_CM_WC
    fails(errno.EINVAL, k, proc, mem, "OCTL", oid, c.OCO_CACHE_MODE, 0, 0x1000, 4)
    fails(errno.EINVAL, k, proc, mem, "OCTL", oid, c.OCO_CACHE_MODE, -1, 0x1000, 0)
    fails(errno.EINVAL, k, proc, mem, "OCTL", oid, c.OCO_CACHE_MODE,
          c.OBJ_TOPDATA - 0x1000, 1, 0)


def test_octl_map_populates(k, proc, mem):
    oid = create(k, proc, mem)
    fd = objfd(k, proc, mem, oid, c.FE_READ)
    before = os.fstat(fd).st_blocks
    assert sys(k, proc, mem, "OCTL", oid, c.OCO_MAP, 0x2000, 0x2000, 0) == 0
    assert (os.fstat(fd).st_blocks - before) * 512 == 0x2000  # allocated, still reading zeros
    assert os.pread(fd, 0x2000, 0x3000) == bytes(0x2000)
    os.close(fd)
    fails(errno.EINVAL, k, proc, mem, "OCTL", oid, c.OCO_MAP, 0, c.OBJ_TOPDATA, 0)
    fails(errno.ENOENT, k, proc, mem, "OCTL", oid, c.OCO_MAP, 0, 0x1000, BUF)


def test_octl_errors(k, proc, mem):
    fails(errno.EINVAL, k, proc, mem, "OCTL", create(k, proc, mem), 2, 0, 0, 0)
    fails(errno.ENOENT, k, proc, mem, "OCTL", 0x31337, c.OCO_CACHE_MODE, 0, 0, 0)


# --- OCOPY ---------------------------------------------------------------------------------

def test_ocopy_copies_pages(k, proc, mem):
    src, dst = create(k, proc, mem), create(k, proc, mem)
    write_obj(k, proc, mem, src, 0x1000, b"A" * 0x1000)
    write_obj(k, proc, mem, src, 0x3000, b"C")
    write_obj(k, proc, mem, dst, 0x12000, b"old")  # the hole in src overwrites this
    assert sys(k, proc, mem, "OCOPY", put_id(mem, SCRATCH, dst), put_id(mem, SCRATCH + 16, src),
               0x10000, 0x1000, 0x3000, 0) == 0
    assert read_obj(k, proc, mem, dst, 0x10000, 0x1000) == b"A" * 0x1000
    assert read_obj(k, proc, mem, dst, 0x12000, 2) == b"C\0"
    assert not page_exists(k, proc, mem, dst, 0x11)


def test_ocopy_zero_fill(k, proc, mem):
    dst = create(k, proc, mem)
    write_obj(k, proc, mem, dst, 0x2000, b"data")
    assert sys(k, proc, mem, "OCOPY", put_id(mem, SCRATCH, dst), put_id(mem, SCRATCH + 16, 0),
               0x2000, 0, 0x1000, 0) == 0
    assert read_obj(k, proc, mem, dst, 0x2000, 4) == bytes(4)
    assert not page_exists(k, proc, mem, dst, 2)


def test_ocopy_errors(k, proc, mem):
    a, b = create(k, proc, mem), create(k, proc, mem)
    dp, sp = put_id(mem, SCRATCH, a), put_id(mem, SCRATCH + 16, b)
    fails(errno.EFAULT, k, proc, mem, "OCOPY", BAD, sp, 0x1000, 0x1000, 0x1000, 0)
    fails(errno.EFAULT, k, proc, mem, "OCOPY", dp, BAD, 0x1000, 0x1000, 0x1000, 0)
    for doff, soff, n in ((0x1001, 0x1000, 0x1000), (0x1000, 0x800, 0x1000),
                          (0x1000, 0x1000, 0x10), (c.OBJ_MAXSIZE, 0x1000, 0x1000),
                          (0x1000, c.OBJ_MAXSIZE - 0x1000, 0x2000)):
        fails(errno.EINVAL, k, proc, mem, "OCOPY", dp, sp, doff, soff, n, 0)
    fails(errno.EINVAL, k, proc, mem, "OCOPY", dp, sp, 0x1000, 0x1000, 0x1000, 1)
    fails(errno.EINVAL, k, proc, mem, "OCOPY", dp, dp, 0x1000, 0x2000, 0x2000, 0)
    put_id(mem, SCRATCH + 32, 0x5555)
    fails(errno.ENOENT, k, proc, mem, "OCOPY", SCRATCH + 32, sp, 0x1000, 0x1000, 0x1000, 0)
    fails(errno.ENOENT, k, proc, mem, "OCOPY", dp, SCRATCH + 32, 0x1000, 0x1000, 0x1000, 0)


# --- INVL_KSO ------------------------------------------------------------------------------

def _ops(mem, *ops):
    for i, (oid, flags) in enumerate(ops):
        mem.write(BUF + 32 * i, s.SYS_INVALIDATE_OP.pack(s.id_pack(oid), 0, 0, flags, 0x1234))
    return BUF, len(ops)


def _results(mem, n):
    return [s.SYS_INVALIDATE_OP.unpack(mem.read(BUF + 32 * i, 32))[4] for i in range(n)]


def test_invl_kso(k, proc, mem):
    other = k.new_process()
    V, CUR = c.KSOI_VALID, c.KSOI_VALID | c.KSOI_CURRENT
    ops = _ops(mem, (c.KSO_CURRENT_VIEW, CUR), (other.view_id, V), (proc.thread_id, V),
               (c.KSO_CURRENT_ACTIVE_SECCTX, CUR), (0x999, V), (proc.view_id, 0))
    assert sys(k, proc, mem, "INVL_KSO", *ops) == 2
    ok, err = c.KSO_INVL_RES_OK, c.KSO_INVL_RES_ERR
    assert _results(mem, 6) == [ok, ok, err, err, err, 0x1234]


def test_invl_kso_errors(k, proc, mem):
    assert sys(k, proc, mem, "INVL_KSO", BAD, 0) == 0
    fails(errno.EINVAL, k, proc, mem, "INVL_KSO", BUF, c.INVL_MAX_OPS + 1)
    fails(errno.EFAULT, k, proc, mem, "INVL_KSO", BAD, 1)


# --- KCONF ---------------------------------------------------------------------------------

def test_kconf_reset_code(k, proc, mem, home):
    code = sys(k, proc, mem, "KCONF", c.KCONF_RDRESET, 0)
    assert code == k.reset_code and code > 0  # never in [-4095, -1] as a signed value
    assert code == sys(k, proc, mem, "KCONF", c.KCONF_RDRESET, 0)
    k2 = Kernel(home / "other", print)
    assert k2.reset_code != code
    k2.close()
    fails(errno.EINVAL, k, proc, mem, "KCONF", c.KCONF_ARCH_TSC_PSPERIOD, 0)
    fails(errno.EINVAL, k, proc, mem, "KCONF", 77, 0)


# --- LX_OBJFD ------------------------------------------------------------------------------

def test_objfd_read_only_is_really_read_only(k, proc, mem):
    oid = create(k, proc, mem)
    fd = objfd(k, proc, mem, oid, c.FE_READ)
    with pytest.raises(OSError) as ei:
        os.pwrite(fd, b"x", 0x1000)
    assert ei.value.errno == errno.EBADF
    with pytest.raises(PermissionError):
        mmap.mmap(fd, c.OBJ_MAXSIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)


def test_objfd_read_write_shares_the_object(k, proc, mem):
    oid = create(k, proc, mem)
    fd = objfd(k, proc, mem, oid)
    m = mmap.mmap(fd, c.OBJ_MAXSIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0x1000:0x1005] = b"hello"
    assert read_obj(k, k.new_process(), mem, oid, 0x1000, 5) == b"hello"
    m.close()
    os.close(fd)


def test_objfd_grants_only_default_permissions(k, proc, mem):
    ro = create(k, proc, mem, c.MIP_DFL_READ)
    fd = objfd(k, proc, mem, ro, c.FE_READ | c.FE_WRITE | c.VE_VALID)
    assert access_mode(fd) == os.O_RDONLY
    os.close(fd)
    fails(errno.EACCES, k, proc, mem, "LX_OBJFD", create(k, proc, mem, c.MIP_DFL_WRITE),
          c.FE_READ | c.FE_WRITE)
    fails(errno.EACCES, k, proc, mem, "LX_OBJFD", ro, c.FE_WRITE)
    fails(errno.ENOENT, k, proc, mem, "LX_OBJFD", 0x8888, c.FE_READ)


def test_root_kso_is_read_only(k, proc, mem):
    fd = objfd(k, proc, mem, c.KSO_ROOT_ID)
    assert access_mode(fd) == os.O_RDONLY
    os.close(fd)


# --- processes -----------------------------------------------------------------------------

def _root_attachments(k, proc, mem):
    base = c.OBJ_NULLPAGE_SIZE
    count = int.from_bytes(read_obj(k, proc, mem, 1, base + s.ROOT_COUNT, 8), "little")
    raw = read_obj(k, proc, mem, 1, base + s.ROOT_ATTACHED, 32 * count)
    return [s.KSO_ATTACHMENT.unpack_from(raw, 32 * i) for i in range(count)]


def test_new_process(k, proc, mem):
    env = proc.env()
    assert set(env) == {"TWZ_VIEW", "TWZ_THREAD", "TWZNAME"}
    assert env["TWZ_VIEW"] == s.id_str(proc.view_id)
    assert env["TWZNAME"] == s.id_str(k.root_namespace) and len(env["TWZ_THREAD"]) == 33
    assert proc.pid is None
    reprid = read_obj(k, proc, mem, proc.thread_id, c.OBJ_NULLPAGE_SIZE + s.THRD_REPRID, 16)
    assert s.id_unpack(reprid) == proc.thread_id
    name = read_obj(k, proc, mem, proc.view_id, c.OBJ_NULLPAGE_SIZE, 8)
    assert name.rstrip(b"\0") == b"view"
    fd = objfd(k, proc, mem, proc.view_id)  # views are read-write for their process
    os.pwrite(fd, b"\1", c.OBJ_NULLPAGE_SIZE + s.view_entry_offset(0x400))
    os.close(fd)
    atts = _root_attachments(k, proc, mem)
    assert [(s.id_unpack(a[0]), a[2]) for a in atts] == [(proc.thread_id, c.KSO_THREAD)]


def test_process_exit_detaches_and_frees(k, proc, mem):
    other = k.new_process()
    k.process_exit(proc)
    for oid in (proc.view_id, proc.thread_id):
        fails(errno.ENOENT, k, other, mem, "OSTAT", oid, c.OS_TYPE_OBJ, 0, BUF)
    atts = [s.id_unpack(a[0]) for a in _root_attachments(k, other, mem)]
    assert atts == [0, other.thread_id]
    third = k.new_process()  # reuses the cleared entry
    atts = [s.id_unpack(a[0]) for a in _root_attachments(k, other, mem)]
    assert atts == [third.thread_id, other.thread_id]


# --- persistence ---------------------------------------------------------------------------

def test_persistence_across_restart(k, proc, mem, home):
    pers = create(k, proc, mem, RW | c.TWZ_SYS_OC_PERSIST_ | (c.KSO_SECCTX << c.OC_KSO_SHIFT))
    vol = create(k, proc, mem)
    write_obj(k, proc, mem, pers, 0x1000, b"survives")
    root_ns = k.root_namespace
    k.close()
    k2 = Kernel(home, print)
    p2 = k2.new_process()
    assert k2.root_namespace == root_ns
    assert read_obj(k2, p2, mem, pers, 0x1000, 8) == b"survives"
    assert ostat(k2, p2, mem, pers)[2] == c.KSO_SECCTX
    assert not exists(k2, p2, mem, vol)
    k2.close()


def test_root_namespace(k, proc, mem, home):
    state = json.loads((home / "state.json").read_text())
    assert state == {"root_namespace": s.id_str(k.root_namespace)}
    assert ostat(k, proc, mem, k.root_namespace)[0] & c.OS_FLAGS_PERSIST
    mi = s.METAINFO.unpack(read_obj(k, proc, mem, k.root_namespace, c.OBJ_METAINFO_OFFSET, 64))
    sz = mi[7]
    assert mi[1] & c.MIF_SZ and sz == 16 + 2 * 48
    data = read_obj(k, proc, mem, k.root_namespace, c.OBJ_NULLPAGE_SIZE, sz + 32)
    ents = [(e.name, e.id, e.type) for _, e in iter_entries(data)]
    assert ents == [(".", k.root_namespace, c.NAME_ENT_NAMESPACE),
                    ("..", k.root_namespace, c.NAME_ENT_NAMESPACE)]


def test_root_namespace_recreated_if_lost(k, home):
    old = k.root_namespace
    k.close()
    (home / "objects" / s.id_str(old)).unlink()
    k2 = Kernel(home, print)
    assert k2.root_namespace != old
    assert json.loads((home / "state.json").read_text())["root_namespace"] == s.id_str(
        k2.root_namespace)
    k2.close()


def test_close_frees_deleted_persistent_objects(k, proc, mem, home):
    oid = create(k, proc, mem, RW | c.TWZ_SYS_OC_PERSIST_)
    os.close(objfd(k, proc, mem, oid))
    sys(k, proc, mem, "ODELETE", oid, 0)
    k.close()
    assert not (home / "objects" / s.id_str(oid)).exists()
