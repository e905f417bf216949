"""Generate the C header `twzlinux/native/include/twz/sys.h` from the ABI modules.

`python -m twzlinux.abi.cheader` rewrites the checked-in header; `render()` returns its text so a
test can check the file is current. Numbers come only from constants.py, slots.py, structs.py
and the syscall table: the C side must never drift from what twzd and libtwz use.

Struct layouts are written here as C field lists (C needs names and types, which a
`struct.Struct` lacks); every field offset and every size is then `_Static_assert`ed against the
Python layout, so a field list that disagrees with structs.py does not compile.
"""

import pathlib
import re
import struct
import textwrap

from . import constants, slots, structs, syscalls

HEADER_PATH = (pathlib.Path(__file__).resolve().parent.parent
               / "native" / "include" / "twz" / "sys.h")

# Names that libc headers also define (<sys/user.h> has PAGE_SIZE); same value, so defer to them.
_LIBC_SHARED_NAMES = {"PAGE_SIZE"}

# (C name, fields, packed, Python layout or None). Fields are (C type, name, array suffix).
# Twizzler packs metainfo and sys_invalidate_op; the rest use natural alignment.
_STRUCTS = (
    ("metainfo", (("uint32_t", "magic", ""), ("uint16_t", "flags", ""), ("uint16_t", "p_flags", ""),
                  ("uint32_t", "fotentries", ""), ("uint32_t", "milen", ""),
                  ("objid_t", "nonce", ""), ("objid_t", "kuid", ""), ("uint64_t", "sz", ""),
                  ("uint64_t", "pad", "")), True, structs.METAINFO),
    ("metaext", (("uint64_t", "tag", ""), ("uint64_t", "ptr", "")), False, structs.METAEXT),
    ("fotentry", (("objid_t", "id", ""), ("uint64_t", "flags", ""), ("uint64_t", "info", "")),
     False, structs.FOTENTRY),
    ("viewentry", (("objid_t", "id", ""), ("uint64_t", "res0", ""), ("uint32_t", "flags", ""),
                   ("uint32_t", "res1", "")), False, structs.VIEWENTRY),
    ("viewrepr_bucket", (("objid_t", "id", ""), ("uint64_t", "slot", ""), ("uint32_t", "flags", ""),
                         ("int32_t", "chain", ""), ("uint64_t", "info", ""),
                         ("uint64_t", "refs", "")), False, structs.VIEW_BUCKET),
    ("kso_hdr", (("char", "name", "[KSO_NAME_MAXLEN]"), ("uint32_t", "version", ""),
                 ("uint32_t", "resv", ""), ("uint64_t", "resv2", "")), False, structs.KSO_HDR),
    ("kso_attachment", (("objid_t", "id", ""), ("uint64_t", "info", ""), ("uint32_t", "type", ""),
                        ("uint32_t", "flags", "")), False, structs.KSO_ATTACHMENT),
    ("sys_invalidate_op", (("objid_t", "id", ""), ("uint64_t", "offset", ""),
                           ("uint32_t", "length", ""), ("uint16_t", "flags", ""),
                           ("uint16_t", "result", "")), True, structs.SYS_INVALIDATE_OP),
    ("kernel_ostat", (("uint64_t", "flags", ""), ("uint32_t", "cache_mode", ""),
                      ("uint32_t", "kso_type", ""), ("uint32_t", "nr_sleepers", ""),
                      ("uint32_t", "nr_derivations", ""), ("uint32_t", "nvreg", "")),
     False, structs.KERNEL_OSTAT),
    ("kernel_ostat_page", (("uint64_t", "pgnr", ""), ("uint64_t", "flags", ""),
                           ("uint32_t", "cowcount", ""), ("uint32_t", "level", "")),
     False, structs.KERNEL_OSTAT_PAGE),
    ("sys_thread_sync_args", (("uint64_t *", "addr", ""), ("uint64_t", "arg", ""),
                              ("uint64_t", "res", ""), ("uint64_t", "__resv", ""),
                              ("uint32_t", "op", ""), ("uint32_t", "flags", "")),
     False, structs.SYS_THREAD_SYNC_ARGS),
    ("fault_object_info", (("objid_t", "objid", ""), ("uint64_t", "ip", ""), ("uint64_t", "addr", ""),
                           ("uint64_t", "flags", ""), ("uint64_t", "pad", "")),
     False, structs.FAULT_OBJECT_INFO),
    ("fault_null_info", (("uint64_t", "ip", ""), ("uint64_t", "addr", "")), False,
     structs.FAULT_NULL_INFO),
    ("fault_exception_info", (("uint64_t", "ip", ""), ("uint64_t", "code", ""),
                              ("uint64_t", "arg0", "")), False, structs.FAULT_EXCEPTION_INFO),
    ("fault_sctx_info", (("objid_t", "target", ""), ("uint64_t", "ip", ""), ("uint64_t", "addr", ""),
                         ("uint32_t", "pneed", ""), ("uint32_t", "pad", ""),
                         ("uint64_t", "pad64", "")), False, structs.FAULT_SCTX_INFO),
    ("fault_fault_info", (("uint32_t", "fault_nr", ""), ("uint32_t", "info", ""),
                          ("uint32_t", "len", ""), ("uint32_t", "resv", "")), False,
     structs.FAULT_FAULT_INFO),
    ("fault_page_info", (("objid_t", "objid", ""), ("uint64_t", "vaddr", ""), ("uint64_t", "pgnr", ""),
                         ("uint64_t", "info", ""), ("uint64_t", "ip", "")), False,
     structs.FAULT_PAGE_INFO),
    ("fault_pptr_info", (("objid_t", "objid", ""), ("uint64_t", "fote", ""), ("uint64_t", "ip", ""),
                         ("uint32_t", "info", ""), ("uint32_t", "retval", ""),
                         ("uint64_t", "flags", ""), ("const char *", "name", ""),
                         ("const void *", "ptr", "")), False, structs.FAULT_PPTR_INFO),
    ("fault_signal_info", (("long", "args", "[4]"),), False, structs.FAULT_SIGNAL_INFO),
    # structs.py has no layout for the rest (no Python code builds them yet); their sizes are
    # Twizzler's, measured (reference/twizzler.md §1.4, §1.6).
    ("sys_thrd_spawn_args", (("objid_t", "target_view", ""), ("void (*", "start_func", ")(void *)"),
                             ("void *", "arg", ""), ("char *", "stack_base", ""),
                             ("size_t", "stack_size", ""), ("char *", "tls_base", ""),
                             ("size_t", "thrd_ctrl", "")), False, 64),
    ("sys_become_args", (("objid_t", "target_view", ""), ("uint64_t", "target_rip", ""))
     + tuple(("uint64_t", r, "") for r in ("rax", "rbx", "rcx", "rdx", "rdi", "rsi", "rsp", "rbp",
                                           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")),
     False, 160),
    ("sys_kaction_args", (("objid_t", "id", ""), ("long", "result", ""), ("long", "cmd", ""),
                          ("long", "arg", ""), ("long", "flags", "")), False, 48),
    ("kernel_create_src", (("objid_t", "id", ""), ("uint64_t", "start", ""),
                           ("uint64_t", "length", "")), False, 32),
    ("kernel_create_spec", (("objid_t", "result", ""), ("objid_t", "ku", ""),
                            ("struct kernel_create_src *", "srcs", ""), ("uint64_t", "srcs_len", ""),
                            ("objid_t *", "ties", ""), ("uint64_t", "ties_len", ""),
                            ("uint32_t", "flags", ""), ("uint16_t", "backing_type", ""),
                            ("uint16_t", "lifetime", "")), False, 80),
)

_PRELUDE = """\
/* Generated by `python -m twzlinux.abi.cheader` from twzlinux/abi/{constants,slots,structs,
 * syscalls}.py. Do not edit: change the ABI modules and regenerate.
 *
 * Twizzler system call n is Linux system call TWZ_LINUX_NR(n); arguments go in Linux's syscall
 * registers (rdi, rsi, rdx, r10, r8, r9), a 128-bit object ID as two of them (lo, hi); the
 * result is in rax, negative errno on failure. */
#ifndef TWZ_SYS_H
#define TWZ_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

__extension__ typedef unsigned __int128 objid_t;

#define ID_LO(id) ((uint64_t)(id))
#define ID_HI(id) ((uint64_t)((id) >> 64))
#define MKID(hi, lo) (((objid_t)(hi) << 64) | (objid_t)(lo))
#define IDFMT "%.16lx:%.16lx"
#define IDPR(id) (unsigned long)ID_HI(id), (unsigned long)ID_LO(id)
"""

_SYSCALL6 = """\
/* The raw trap. The Linux order of argument registers, not Twizzler's (r8, r9, r10): the seccomp
 * filter and twzd read Linux's. */
static inline long twz_syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
\tregister long r10 __asm__("r10") = a4;
\tregister long r8 __asm__("r8") = a5;
\tregister long r9 __asm__("r9") = a6;
\tlong ret;
\t__asm__ __volatile__("syscall"
\t                     : "=a"(ret)
\t                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
\t                     : "rcx", "r11", "memory");
\treturn ret;
}
"""


def _c_int(value: int) -> str:
    if value < 0:
        return f"({value}L)"
    if value < 10:
        return str(value)
    suffix = "ULL" if value > 0x7FFFFFFF else ""
    return f"0x{value:X}{suffix}"


def int_constants():
    """(module, name, value) for every integer constant of the ABI modules, each name once
    (slots.py re-exports what it imports from constants.py)."""
    seen = set()
    for module in (constants, slots, structs):
        for name, value in vars(module).items():
            if name.isupper() and not name.startswith("_") and type(value) is int \
                    and name not in seen:
                seen.add(name)
                yield module, name, value


def _constants() -> list:
    lines, current = [], None
    for module, name, value in int_constants():
        if module is not current:
            current = module
            lines.append(f"\n/* {module.__name__} */")
        define = f"#define {name} {_c_int(value)}"
        if name in _LIBC_SHARED_NAMES:
            define = f"#ifndef {name}\n{define}\n#endif"
        lines.append(define)
    lines.append("\n/* fault names, indexed by fault number */")
    names = ", ".join(f'"{n}"' for n in constants.FAULT_NAMES)
    lines.append(f"#define TWZ_FAULT_NAMES_INIT {{ {names} }}")
    return lines


def _syscall_numbers() -> list:
    lines = ["\n/* system call numbers (Twizzler's 0-23, then the personality's own) */"]
    for name in ("SYSCALL_BASE", "SYSCALL_LIMIT", "LX_BASE"):
        lines.append(f"#define TWZ_{name} {_c_int(getattr(syscalls, name))}")
    lines.append("#define TWZ_LINUX_NR(n) (TWZ_SYSCALL_BASE + (n))")
    for call in syscalls.TABLE:
        number = f"0x{call.nr:X}" if call.personality else str(call.nr)
        lines.append(f"#define SYS_{call.name} {number}")
    lines.append(f"#define NUM_SYSCALLS {sum(1 for c in syscalls.TABLE if not c.personality)}")
    return lines


_TOKEN = re.compile(r"(\d*)([xcbB?hHiIlLqQnNefdspP])")


def _field_offsets(layout: struct.Struct) -> list:
    """Offsets of the fields of a little-endian, unaligned struct.Struct format ('x' is padding,
    'Ns' one N-byte field, 'NQ' N fields)."""
    offsets, pos = [], 0
    for count, code in _TOKEN.findall(layout.format.lstrip("<")):
        n = int(count) if count else 1
        if code in "sx":
            if code == "s":
                offsets.append(pos)
            pos += n
            continue
        width = struct.calcsize("<" + code)
        for _ in range(n):
            offsets.append(pos)
            pos += width
    return offsets


def _struct(name, fields, packed, layout) -> list:
    lines = [f"\nstruct {name} {{"]
    for ctype, fname, suffix in fields:
        sep = "" if ctype.endswith(("*", "(*")) else " "
        lines.append(f"\t{ctype}{sep}{fname}{suffix};")
    lines.append("}" + (" __attribute__((packed))" if packed else "") + ";")
    size = layout.size if isinstance(layout, struct.Struct) else layout
    lines.append(f"_Static_assert(sizeof(struct {name}) == {size}, \"struct {name} size\");")
    if isinstance(layout, struct.Struct):
        offsets = _field_offsets(layout)
        assert len(offsets) == len(fields), (name, layout.format)
        for (_, fname, _), off in zip(fields, offsets):
            lines.append(f"_Static_assert(offsetof(struct {name}, {fname}) == {off}, "
                         f"\"struct {name}.{fname}\");")
    return lines


def _param(arg) -> str:
    ctype = arg.ctype
    return f"{ctype}{'' if ctype.endswith('*') else ' '}{arg.name}"


def _regs(arg) -> list:
    if arg.kind == "id":
        return [f"(long)ID_LO({arg.name})", f"(long)ID_HI({arg.name})"]
    if arg.kind == "ptr":
        return [f"(long)(uintptr_t){arg.name}"]
    return [f"(long){arg.name}"]


def _stub(call) -> list:
    params = ", ".join(_param(a) for a in call.args) or "void"
    regs = [r for a in call.args for r in _regs(a)]
    regs += ["0"] * (syscalls.NUM_REGS - len(regs))
    lines = []
    if call.doc:
        lines += textwrap.wrap(call.doc, 96, initial_indent="/* ", subsequent_indent=" * ")
        lines[-1] += " */"
    lines += [f"static inline long {call.stub_name}({params})",
              "{",
              f"\treturn twz_syscall6(TWZ_LINUX_NR(SYS_{call.name}), {', '.join(regs)});",
              "}"]
    return lines


def render() -> str:
    out = [_PRELUDE]
    out += _constants()
    out += _syscall_numbers()
    out.append("")
    for spec in _STRUCTS:
        out += _struct(*spec)
    out.append("")
    out.append(_SYSCALL6)
    for call in syscalls.TABLE:
        out += _stub(call)
        out.append("")
    out.append("#endif /* TWZ_SYS_H */")
    return "\n".join(out) + "\n"


def main() -> None:
    HEADER_PATH.parent.mkdir(parents=True, exist_ok=True)
    HEADER_PATH.write_text(render())
    print(HEADER_PATH)


if __name__ == "__main__":
    main()
