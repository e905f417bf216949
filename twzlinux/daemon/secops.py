"""twzd's `sec` request: the `twz key|cap|sctx` tools' way to the kernel's security admin, and
the contexts of a spawn request (`twzrun --sctx`).

Only a client of twzd's socket gets here, which programs cannot reach (their mount namespace
hides $TWZ_HOME, twzlinux.daemon.isolation): the socket's user is the superuser of the home.
Capabilities travel base64-encoded in the JSON.
"""

import base64
import binascii

from twzlinux.abi import structs as s
from twzlinux.kernel import secadmin
from twzlinux.kernel.errors import SyscallError
from twzlinux.kernel.security import Gates


def _error(text: str) -> Exception:
    from twzlinux.daemon.server import RequestError  # noqa: PLC0415 (server imports us)
    return RequestError(text)


def _str(msg: dict, key: str, required: bool = True) -> str | None:
    v = msg.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise _error(f"sec: {key!r} must be a non-empty string")
    return v


def _int(msg: dict, key: str, default: int = 0) -> int:
    v = msg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
        raise _error(f"sec: {key!r} must be an unsigned integer")
    return v


def _item(msg: dict, key: str = "item") -> bytes:
    try:
        return base64.b64decode(_str(msg, key), validate=True)
    except binascii.Error:
        raise _error(f"sec: {key!r} must be base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spawn_contexts(kernel, names) -> list:
    """The context objects a spawn request names (IDs or names), in order."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise _error("spawn: 'sctx' must be a list of context IDs or names")
    try:
        return [secadmin.context(kernel, n) for n in names]
    except SyscallError as e:
        raise _error(f"spawn: --sctx {e}") from None


def handle(kernel, msg: dict) -> dict:
    cmd = msg.get("cmd")
    try:
        if cmd == "key_new":
            pub, pri = secadmin.new_key(kernel, _str(msg, "name", False))
            return {"public": s.id_str(pub), "private": s.id_str(pri)}
        if cmd == "object_new":
            data = base64.b64decode(msg.get("data", ""))
            kuid = secadmin.public_key_id(kernel, _str(msg, "key")) if msg.get("key") else 0
            oid = secadmin.new_object(kernel, data, _int(msg, "pflags"), kuid)
            if msg.get("name"):
                secadmin.bind(kernel, _str(msg, "name"), oid)
            return {"id": s.id_str(oid)}
        if cmd == "sctx_new":
            kuid = secadmin.public_key_id(kernel, _str(msg, "key")) if msg.get("key") else 0
            oid = secadmin.new_sctx(kernel, _str(msg, "name", False), kuid, _int(msg, "gmask"),
                                    bool(msg.get("undetachable")))
            return {"id": s.id_str(oid)}
        if cmd == "cap_grant":
            gates = Gates(_int(msg, "gate_offset"), _int(msg, "gate_length"),
                          _int(msg, "gate_align"))
            cap = secadmin.grant(kernel, _str(msg, "key"), _str(msg, "target"),
                                 _str(msg, "accessor"), _int(msg, "perms"), _int(msg, "valid"),
                                 gates)
            return {"item": _b64(cap)}
        if cmd == "cap_delegate":
            dlg = secadmin.delegate(kernel, _str(msg, "key"), _item(msg), _str(msg, "to"),
                                    _int(msg, "mask"), _int(msg, "valid"))
            return {"item": _b64(dlg)}
        if cmd == "sctx_add":
            item = _item(msg) if msg.get("item") else None
            pmask = msg.get("pmask")
            secadmin.sctx_add(kernel, _str(msg, "sctx"), _str(msg, "target"), item,
                              None if pmask is None else _int(msg, "pmask"),
                              mask=bool(msg.get("mask")), regrant=bool(msg.get("regrant")),
                              revoked=bool(msg.get("revoked")))
            return {}
        if cmd == "sctx_rm":
            return {"removed": secadmin.sctx_rm(kernel, _str(msg, "sctx"), _str(msg, "target"))}
        if cmd == "sctx_gmask":
            secadmin.sctx_gmask(kernel, _str(msg, "sctx"), _int(msg, "gmask"))
            return {}
        if cmd == "sctx_show":
            return secadmin.sctx_show(kernel, _str(msg, "sctx"))
    except SyscallError as e:
        raise _error(f"sec {cmd}: {e}") from None
    except ValueError as e:
        raise _error(f"sec {cmd}: {e}") from None
    raise _error(f"sec: unknown command {cmd!r} (key_new, object_new, sctx_new, cap_grant, "
                 "cap_delegate, sctx_add, sctx_rm, sctx_gmask, sctx_show)")
