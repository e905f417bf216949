"""Every issue-2 system call from Python (libtwz.sys stubs) and from the native example, with
their error paths, against a real twzd."""

import errno
import json
import subprocess
from pathlib import Path

from twzlinux.abi import constants as c

PROGRAM = r"""
import json, os, struct, sys
import libtwz
from libtwz import sys as t, runtime as rt
from twzlinux.abi import constants as c, structs as st

ffi = rt.ffi
def addr(buf): return int(ffi.cast("uintptr_t", buf))
def call(fn, *args):
    try:
        return fn(*args)
    except libtwz.TwzError as e:
        return -e.errno
def ocreate(flags, src=0, kuid=0):
    out = ffi.new("uint8_t[16]")
    r = call(t.sys_ocreate, kuid, src, flags, addr(out))
    return r if r < 0 else st.id_unpack(ffi.unpack(ffi.cast("char *", out), 16))
def ostat(oid, typ=c.OS_TYPE_OBJ, arg=0):
    buf = ffi.new("uint8_t[32]")
    r = call(t.sys_ostat, oid, typ, arg, addr(buf))
    raw = ffi.unpack(ffi.cast("char *", buf), 32)
    return r, (st.KERNEL_OSTAT.unpack(raw) if typ == c.OS_TYPE_OBJ else
               st.KERNEL_OSTAT_PAGE.unpack(raw[:24]))

R = c.MIP_DFL_READ | c.MIP_DFL_WRITE
res = {}
res["null"] = call(t.sys_null, 0)
res["unknown"] = rt.lib.twz_syscall6(0x1000 + 0x7ff, 0, 0, 0, 0, 0, 0)
res["debug"] = call(t.sys_debug_print, addr(ffi.new("char[]", b"debug-hello\n")), 12)
res["debug_long"] = call(t.sys_debug_print, addr(ffi.new("char[]", 2000)), 2000)
res["debug_efault"] = call(t.sys_debug_print, 8, 10)

a = ocreate(R)
res["create"] = a > 0
res["create_badflags"] = ocreate(R | 0x80000000)
res["create_badkso"] = ocreate(R | (0xF << 8))
res["create_efault"] = call(t.sys_ocreate, 0, 0, R, 8)
z1 = ocreate(R | c.TWZ_SYS_OC_ZERONONCE, kuid=12345)
res["zeronce_again"] = ocreate(R | c.TWZ_SYS_OC_ZERONONCE, kuid=12345)
res["create_nosrc"] = ocreate(R, src=0xdead << 64)
p = ocreate(R | c.TWZ_SYS_OC_PERSIST_)
res["persist_flag"] = ostat(p)[1][0] & c.OS_FLAGS_PERSIST

# a source object is copied
src = libtwz.Object.open(a, write=True)
src.write(0x1000, b"copied bytes")
cp = ocreate(R, src=a)
res["copy"] = libtwz.Object.open(cp).read(0x1000, 12).decode()
h1 = ocreate(R | c.MIP_HASHDATA | c.TWZ_SYS_OC_ZERONONCE, src=a)
src.write(0x1000, b"other bytes!")
h2 = ocreate(R | c.MIP_HASHDATA | c.TWZ_SYS_OC_ZERONONCE, src=a)
res["hashdata_differs"] = h1 > 0 and h2 > 0 and h1 != h2

r, info = ostat(a)
res["ostat"] = [r, info[1], info[0] & c.OS_FLAGS_PERSIST]
res["ostat_page_present"] = ostat(a, c.OS_TYPE_PAGE, 1)[1][1] & c.OS_PAGE_EXIST
res["ostat_page_absent"] = ostat(a, c.OS_TYPE_PAGE, 5000)[1][1] & c.OS_PAGE_EXIST
res["ostat_page_bad"] = ostat(a, c.OS_TYPE_PAGE, 1 << 20)[0]
res["ostat_badtype"] = ostat(a, 7)[0]
res["ostat_enoent"] = ostat(0xabc)[0]
res["ostat_efault"] = call(t.sys_ostat, a, 0, 0, 8)

res["octl_cache"] = call(t.sys_octl, a, c.OCO_CACHE_MODE, 0x1000, 0x1000, c.OC_CM_WC)
res["octl_cache_bad"] = call(t.sys_octl, a, c.OCO_CACHE_MODE, 0x1000, 0x1000, 9)
res["octl_map"] = call(t.sys_octl, a, c.OCO_MAP, 0x1000, 0x4000, 0)
res["octl_badop"] = call(t.sys_octl, a, 77, 0, 0, 0)
res["octl_enoent"] = call(t.sys_octl, 0xabc, c.OCO_MAP, 0x1000, 0x1000, 0)

b = ocreate(R)
res["tie"] = call(t.sys_otie, a, b, 0)
res["untie"] = call(t.sys_otie, a, b, c.OTIE_UNTIE)
res["untie_again"] = call(t.sys_otie, a, b, c.OTIE_UNTIE)
res["tie_self"] = call(t.sys_otie, a, a, 0)
res["tie_enoent"] = call(t.sys_otie, a, 0xabc, 0)

ids = ffi.new("uint8_t[32]")
ffi.memmove(ids, st.id_pack(b) + st.id_pack(a), 32)
res["ocopy"] = call(t.sys_ocopy, addr(ids), addr(ids) + 16, 0x2000, 0x1000, 0x1000, 0)
res["ocopy_data"] = libtwz.Object.open(b).read(0x2000, 12).decode()
res["ocopy_misaligned"] = call(t.sys_ocopy, addr(ids), addr(ids) + 16, 0x2001, 0x1000, 0x1000, 0)
res["ocopy_range"] = call(t.sys_ocopy, addr(ids), addr(ids) + 16, 0x3FFFF000, 0x1000, 0x2000, 0)
res["ocopy_efault"] = call(t.sys_ocopy, 8, addr(ids) + 16, 0x2000, 0x1000, 0x1000, 0)
zero = ffi.new("uint8_t[32]")
ffi.memmove(zero, st.id_pack(b), 16)
res["ocopy_zero"] = call(t.sys_ocopy, addr(zero), addr(zero) + 16, 0x2000, 0, 0x1000, 0)
res["ocopy_zero_data"] = libtwz.Object.open(b).read(0x2000, 4).hex()

ops = ffi.new("uint8_t[64]")
ffi.memmove(ops, st.SYS_INVALIDATE_OP.pack(st.id_pack(0), 0, 1 << 30,
                                          c.KSOI_VALID | c.KSOI_CURRENT, 0)
            + st.SYS_INVALIDATE_OP.pack(st.id_pack(a), 0, 1 << 30, c.KSOI_VALID, 0), 64)
res["invl"] = call(t.sys_invl_kso, addr(ops), 2)
raw = ffi.unpack(ffi.cast("char *", ops), 64)
res["invl_results"] = [st.SYS_INVALIDATE_OP.unpack(raw[:32])[4], st.SYS_INVALIDATE_OP.unpack(raw[32:])[4]]
res["invl_efault"] = call(t.sys_invl_kso, 8, 1)
res["invl_toomany"] = call(t.sys_invl_kso, addr(ops), 100000)

k1, k2 = call(t.sys_kconf, c.KCONF_RDRESET, 0), call(t.sys_kconf, c.KCONF_RDRESET, 0)
res["kconf"] = [k1 != 0, k1 == k2]
res["kconf_bad"] = call(t.sys_kconf, 999, 0)

res["delete"] = call(t.sys_odelete, b, 0)
res["delete_enoent"] = call(t.sys_odelete, 0xabc, 0)
gone = ocreate(R)
res["delete_immediate"] = call(t.sys_odelete, gone, c.TWZ_SYS_OD_IMMEDIATE)
res["after_immediate"] = ostat(gone)[0]
print(json.dumps(res))
"""


def test_syscalls_from_python(twzrun):
    proc = twzrun(PROGRAM)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    E = {name: -getattr(errno, name) for name in ("EINVAL", "EFAULT", "ENOENT", "EEXIST",
                                                  "EPERM", "ENOSYS")}
    assert res["null"] == 0
    assert res["unknown"] == E["ENOSYS"]
    assert res["debug"] == 0 and "debug-hello" in proc.stderr
    assert res["debug_long"] == E["EINVAL"]
    assert res["debug_efault"] == E["EFAULT"]
    assert res["create"] is True
    assert res["create_badflags"] == E["EINVAL"]
    assert res["create_badkso"] == E["EINVAL"]
    assert res["create_efault"] == E["EFAULT"]
    assert res["zeronce_again"] == E["EEXIST"]
    assert res["create_nosrc"] == E["ENOENT"]
    assert res["persist_flag"]
    assert res["copy"] == "copied bytes"
    assert res["hashdata_differs"]
    assert res["ostat"] == [0, 0, 0]
    assert res["ostat_page_present"] and not res["ostat_page_absent"]
    assert res["ostat_page_bad"] == E["EINVAL"]
    assert res["ostat_badtype"] == E["EINVAL"]
    assert res["ostat_enoent"] == E["ENOENT"]
    assert res["ostat_efault"] == E["EFAULT"]
    assert res["octl_cache"] == 0 and res["octl_map"] == 0
    assert res["octl_cache_bad"] == E["EINVAL"] and res["octl_badop"] == E["EINVAL"]
    assert res["octl_enoent"] == E["ENOENT"]
    assert res["tie"] == 0 and res["untie"] == 0
    assert res["untie_again"] == E["ENOENT"]
    assert res["tie_self"] == E["EPERM"]
    assert res["tie_enoent"] == E["ENOENT"]
    assert res["ocopy"] == 0 and res["ocopy_data"] == "other bytes!"
    assert res["ocopy_misaligned"] == E["EINVAL"] and res["ocopy_range"] == E["EINVAL"]
    assert res["ocopy_efault"] == E["EFAULT"]
    assert res["ocopy_zero"] == 0 and res["ocopy_zero_data"] == "00000000"
    assert res["invl"] == 1
    assert res["invl_results"] == [c.KSO_INVL_RES_OK, c.KSO_INVL_RES_ERR]
    assert res["invl_efault"] == E["EFAULT"]
    assert res["invl_toomany"] == E["EINVAL"]
    assert res["kconf"] == [True, True]
    assert res["kconf_bad"] == E["EINVAL"]
    assert res["delete"] == 0 and res["delete_enoent"] == E["ENOENT"]
    assert res["delete_immediate"] == 0 and res["after_immediate"] == E["ENOENT"]


def test_native_example_makes_every_call(twzrun, tmp_path):
    from twzlinux.native import INCLUDE_DIR

    src = Path(__file__).resolve().parent.parent / "examples" / "native" / "objdemo.c"
    exe = tmp_path / "objdemo"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{INCLUDE_DIR}", "-o", str(exe),
                    str(src)], check=True)
    proc = twzrun(str(exe))
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert not failed, "\n".join(failed) + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len([line for line in lines if line.startswith("ok ")]) >= 30


def test_a_hostile_native_program_cannot_crash_twzd(twzrun, tmp_path):
    """Random and extreme register values at every syscall number: each gets an errno."""
    src = tmp_path / "fuzz.c"
    src.write_text(r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    static const long vals[] = {0, 1, -1, 8, 0x1000, 0x7fffffffffffL, (long)0x8000000000000000UL,
                                0x3ffff000, 4096 * 1024L, 0xfffffffffffff000L};
    unsigned long seed = 12345; long bad = 0;
    for (long nr = 0x1000; nr < 0x1000 + 0x120; nr++) {
        if (nr == 0x1000 + 10) continue;  /* THRD_CTL EXIT would end the thread by design */
        for (int i = 0; i < 40; i++) {
            long a[6];
            for (int j = 0; j < 6; j++) { seed = seed * 6364136223846793005UL + 1442695040888963407UL;
                                          a[j] = vals[(seed >> 33) % 10]; }
            long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
            if (r < -4095) bad++;
        }
    }
    printf("done %ld\n", bad);
    return 0;
}
""")
    exe = tmp_path / "fuzz"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    proc = twzrun(str(exe), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done 0"
    after = twzrun("import libtwz; print(libtwz.sys.sys_null(0))")
    assert after.stdout.strip() == "0", after.stderr

