"""`twzrun --trace`: one line per Twizzler system call, decoded through the syscall table."""

from twzlinux.abi.constants import errno_name
from twzlinux.abi.structs import id_str
from twzlinux.abi.syscalls import join_args, lookup_linux_nr


def _flags(value: int, names) -> str:
    parts, rest = [], value
    for bit, name in sorted(names.items()):
        if value & bit:
            parts.append(name)
            rest &= ~bit
    if rest or not parts:
        parts.append(hex(rest))  # bits the table has no name for (a KSO type, a typo) stay visible
    return "|".join(parts)


def _arg(arg, value: int) -> str:
    if arg.kind == "id":
        return id_str(value)
    if arg.kind == "flags":
        return _flags(value, arg.names)
    if arg.kind == "enum":
        return arg.names.get(value, str(value))
    if arg.kind == "ptr":
        return hex(value)
    return str(value)


def format_call(tid: int, linux_nr: int, regs, result: int) -> str:
    """`[twz TID] NAME(arg=value, ...) = result` for the call and the value rax received."""
    call = lookup_linux_nr(linux_nr)
    if call is None:
        text = f"syscall({linux_nr:#x})"
    else:
        args = ", ".join(f"{a.name}={_arg(a, v)}" for a, v in zip(call.args, join_args(call, regs)))
        text = f"{call.name}({args})"
    if -4095 <= result < 0:
        shown = f"-1 {errno_name(-result)}"
    elif call is not None and call.returns == "value":
        shown = hex(result)
    else:
        shown = str(result)
    return f"[twz {tid}] {text} = {shown}\n"
