"""Raw Twizzler system calls, one `sys_<name>` per entry of the syscall table.

The stubs are generated from `twzlinux.abi.syscalls.TABLE` when this module is imported, as
straight-line Python (no per-call loops), because the null syscall's cost is a figure we
measure. IDs are passed as ints (an ObjID is one); pointers as addresses. A call that fails
raises `TwzError` with the errno; a successful one returns rax.
"""

from twzlinux.abi.syscalls import TABLE

from .errors import syscall_error
from .runtime import lib

_U64 = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >> 63 else v


def _fail(r: int, name: str):
    raise syscall_error(-r, name)


def _source(call) -> str:
    params, regs = [], []
    for arg in call.args:
        params.append(arg.name)
        if arg.kind == "id":
            regs += [f"_s({arg.name})", f"_s({arg.name} >> 64)"]
        else:
            regs.append(f"_s({arg.name})")
    regs += ["0"] * (6 - len(regs))
    return (f"def {call.stub_name}({', '.join(params)}):\n"
            f"    r = _sc({call.linux_nr:#x}, {', '.join(regs)})\n"
            f"    if -4096 < r < 0:\n"
            f"        _fail(r, {call.name!r})\n"
            f"    return r\n")


def _generate():
    env = {"_sc": lib.twz_syscall6, "_s": _signed, "_fail": _fail}
    out = {}
    for call in TABLE:
        exec(compile(_source(call), f"<twz stub {call.name}>", "exec"), env)
        fn = env[call.stub_name]
        fn.__doc__ = (f"{call.name} (Linux nr {call.linux_nr:#x}): "
                      f"{', '.join(a.name for a in call.args)}. {call.doc}").strip()
        out[call.stub_name] = fn
    return out


globals().update(_generate())
__all__ = [call.stub_name for call in TABLE]
