"""twzd's `obj` request: `twz stat OBJ` and `twz snapshot OBJ` (twzlinux/kernel/pages.py).

A snapshot that cannot be a lazy copy (a persistent object, or one mapped where twzd cannot trap
it) is copied eagerly with every process mapping the object stopped, so that no store lands
half-way through the copy: SIGSTOP, wait until each is stopped, copy, SIGCONT.
"""

import contextlib
import os
import signal
import time

from twzlinux.abi.structs import id_str
from twzlinux.kernel import pages
from twzlinux.kernel.errors import SyscallError

STOP_TIMEOUT = 2.0


def _error(text: str) -> Exception:
    from twzlinux.daemon.server import RequestError  # noqa: PLC0415 (server imports us)
    return RequestError(text)


def _parse_id(text) -> int:
    try:
        hi, lo = text.split(":")
        return int(hi, 16) << 64 | int(lo, 16)
    except (AttributeError, ValueError):
        raise _error(f"obj: 'id' must be an object ID as hi:lo in hex, not {text!r}") from None


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("T", "t", "Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


@contextlib.contextmanager
def _paused(pids):
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        deadline = time.monotonic() + STOP_TIMEOUT
        while not all(_stopped(p) for p in stopped):
            if time.monotonic() > deadline:
                raise _error("snapshot: a process mapping the object did not stop; try again")
            time.sleep(0.0005)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def handle(kernel, msg: dict) -> dict:
    action = msg.get("action")
    oid = _parse_id(msg.get("id"))
    obj = kernel.objects.lookup(oid, hidden=True)
    if obj is None:
        raise _error(f"obj: no object {id_str(oid)}")
    lazy = kernel.objects.lazy
    try:
        if action == "stat":
            return {"id": id_str(oid), **pages.page_stat(obj, lazy.owed_pages(oid))}
        if action == "snapshot":
            if lazy.can_copy_lazily(obj):
                copy = pages.snapshot(kernel.objects, obj)
            else:
                pids = {p.pid for p in obj.mappers if getattr(p, "pid", None)}
                with _paused(sorted(pids)):
                    copy = pages.snapshot(kernel.objects, obj)
            return {"id": id_str(copy.id), "lazy": lazy.involved(copy.id)}
    except SyscallError as e:
        raise _error(f"obj {action}: {e}") from None
    raise _error(f"obj: unknown action {action!r} (stat, snapshot)")
