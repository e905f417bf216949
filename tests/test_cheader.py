"""The generated C header twz/sys.h: current, compilable, and numerically identical to the ABI
modules, with the syscall stubs putting arguments in the registers twzd reads."""

import subprocess
from pathlib import Path

import pytest

from twzlinux.abi import cheader, constants, slots, structs, syscalls
from twzlinux.native import INCLUDE_DIR

CFLAGS = ["-Wall", "-Wextra", "-Werror", "-std=c11", f"-I{INCLUDE_DIR}",
          f"-I{Path(__file__).resolve().parent / 'native'}"]


def build_and_run(tmp_path, source: str, *flags) -> str:
    src = tmp_path / "prog.c"
    src.write_text(source)
    exe = tmp_path / "prog"
    subprocess.run(["gcc", *CFLAGS, *flags, str(src), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_checked_in_header_is_what_the_generator_writes():
    assert cheader.HEADER_PATH.read_text() == cheader.render(), \
        "twz/sys.h is stale: run `python -m twzlinux.abi.cheader`"


@pytest.mark.parametrize("std", ["c11", "gnu11", "c17"])
def test_header_compiles_alongside_libc_headers(tmp_path, std):
    src = tmp_path / "inc.c"
    src.write_text("#include <twz/sys.h>\n#include <signal.h>\n#include <stdio.h>\n"
                   "#include <sys/mman.h>\n#include <unistd.h>\n#include <twz/sys.h>\n"
                   "int main(void) { return (int)sys_null(0) == 0; }\n")
    flags = [f for f in CFLAGS if not f.startswith("-std")] + [f"-std={std}"]
    subprocess.run(["gcc", *flags, "-c", str(src), "-o", str(tmp_path / "inc.o")], check=True)


def test_struct_sizes_match_the_python_layouts(tmp_path):
    prints = "".join(f'\tprintf("{name} %zu\\n", sizeof(struct {name}));\n'
                     for name, *_ in cheader._STRUCTS)
    out = build_and_run(tmp_path, f"#include <stdio.h>\n#include <twz/sys.h>\n"
                                  f"int main(void)\n{{\n{prints}\treturn 0;\n}}\n")
    sizes = dict((n, int(s)) for n, s in (line.split() for line in out.splitlines()))
    assert sizes["metainfo"] == structs.METAINFO.size == 64
    assert sizes["viewentry"] == structs.VIEWENTRY.size
    assert sizes["viewrepr_bucket"] == structs.VIEW_BUCKET.size
    assert sizes["sys_invalidate_op"] == structs.SYS_INVALIDATE_OP.size
    assert sizes["kernel_ostat"] == structs.KERNEL_OSTAT.size
    assert sizes["kso_hdr"] == structs.KSO_HDR.size
    # Twizzler's measured sizes (reference/twizzler.md §1.4) for layouts structs.py lacks.
    assert (sizes["sys_thrd_spawn_args"], sizes["sys_become_args"], sizes["sys_kaction_args"],
            sizes["kernel_create_src"]) == (64, 160, 48, 32)


def test_every_number_matches_the_abi_modules(tmp_path):
    names = [n for _, n, _ in cheader.int_constants()]
    prints = "".join(f'\tprintf("{n} %lld\\n", (long long){n});\n' for n in names)
    prints += "".join(f'\tprintf("nr_{c.name} %lld\\n", (long long)TWZ_LINUX_NR(SYS_{c.name}));\n'
                      for c in syscalls.TABLE)
    out = build_and_run(tmp_path, f"#include <stdio.h>\n#include <twz/sys.h>\n"
                                  f"int main(void)\n{{\n{prints}\treturn 0;\n}}\n")
    got = dict((n, int(v)) for n, v in (line.split() for line in out.splitlines()))
    for module in (constants, slots, structs):
        for name, value in vars(module).items():
            if name in got:
                assert got[name] == value - (1 << 64 if value >= 1 << 63 else 0), name
    assert {"OBJ_MAXSIZE", "WINDOW_START", "VIEW_ENTRIES", "TWZ_FAULT_EXIT_BASE"} <= got.keys()
    for call in syscalls.TABLE:
        assert got[f"nr_{call.name}"] == call.linux_nr


# A seccomp filter that traps our syscall range (SECCOMP_RET_TRAP), and a SIGSYS handler that
# prints the registers the kernel saw: exactly what twzd reads from a user notification.
TRAP_PROGRAM = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <ucontext.h>
#include <twz/sys.h>
#include "trap.h"

static void on_sys(int sig, siginfo_t *si, void *ctx)
{
	(void)sig;
	greg_t *g = ((ucontext_t *)ctx)->uc_mcontext.gregs;
	printf("%d %llx %llx %llx %llx %llx %llx\n", si->si_syscall, (long long)g[REG_RDI],
	       (long long)g[REG_RSI], (long long)g[REG_RDX], (long long)g[REG_R10],
	       (long long)g[REG_R8], (long long)g[REG_R9]);
	g[REG_RAX] = -1234;
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	trap_twizzler_syscalls(on_sys);
	objid_t a = MKID(0x1111222233334444ull, 0x5555666677778888ull);
	objid_t b = MKID(0x99990000aaaabbbbull, 0xccccddddeeeeffffull);
	long r = sys_ocreate(a, b, 0x1234, (objid_t *)0x7000);
	sys_octl(a, OCO_MAP, 1, 2, 3);
	sys_ocopy((objid_t *)0x10, (objid_t *)0x20, 0x30, 0x40, 0x50, 6);
	sys_lx_objfd(b, VE_READ | VE_WRITE);
	return r == -1234 ? 0 : 3;
}
"""


def test_stubs_put_arguments_in_linux_syscall_registers(tmp_path):
    out = build_and_run(tmp_path, TRAP_PROGRAM, "-std=gnu11")
    rows = [[int(x, 16) if i else int(x) for i, x in enumerate(line.split())]
            for line in out.splitlines()]
    lo_a, hi_a, lo_b, hi_b = (0x5555666677778888, 0x1111222233334444,
                              0xccccddddeeeeffff, 0x99990000aaaabbbb)
    assert rows == [
        [syscalls.BY_NAME["OCREATE"].linux_nr, lo_a, hi_a, lo_b, hi_b, 0x1234, 0x7000],
        [syscalls.BY_NAME["OCTL"].linux_nr, lo_a, hi_a, constants.OCO_MAP, 1, 2, 3],
        [syscalls.BY_NAME["OCOPY"].linux_nr, 0x10, 0x20, 0x30, 0x40, 0x50, 6],
        [syscalls.BY_NAME["LX_OBJFD"].linux_nr, lo_b, hi_b,
         constants.VE_READ | constants.VE_WRITE, 0, 0, 0],
    ]
    # The generated stubs follow the table's argument order, which split_args also follows.
    assert rows[0][1:] == syscalls.split_args(
        syscalls.BY_NAME["OCREATE"], [(hi_a << 64) | lo_a, (hi_b << 64) | lo_b, 0x1234, 0x7000])
