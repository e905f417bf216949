"""Messages between twzrun/twz and twzd.

The socket is AF_UNIX SOCK_SEQPACKET: the kernel keeps message boundaries, so a packet is a
frame (no length prefix to parse, no partial reads to buffer in twzd's non-blocking reader) and
the SCM_RIGHTS fds of a message arrive with exactly that message. A message is a JSON object
encoded as UTF-8.

`hello` is the first request on every connection and its shape never changes, so a client can
always tell a daemon that speaks another protocol or runs other code (BUILD_ID) from a broken one.
"""

import array
import hashlib
import json
import os
import pathlib
import socket

PROTOCOL_VERSION = 1
MAX_MESSAGE = 256 * 1024  # below the default socket buffer, which caps a SEQPACKET message
MAX_FDS = 4
# twzd's exit status when another daemon holds the home: sysexits' EX_TEMPFAIL, "try again"
EXIT_ALREADY_RUNNING = 75


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed message."""


def build_id() -> str:
    """A hash of every source the daemon or a program runs (Python, and the native C sources).

    A daemon started before an edit is then detected by the next client, instead of failing in
    some confusing way later.
    """
    root = pathlib.Path(__file__).resolve().parents[2]
    h = hashlib.blake2b(digest_size=8)
    for pkg in ("twzlinux", "libtwz"):
        sources = [*(root / pkg).rglob("*.py"), *(root / pkg).rglob("*.h"),
                   *(root / pkg).rglob("*.c")]
        for path in sorted(sources):
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


BUILD_ID = build_id()


def socket_path(home: pathlib.Path) -> pathlib.Path:
    return home / "twzd.sock"


def new_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send(sock: socket.socket, msg: dict, fds=()) -> None:
    data = json.dumps(msg).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit "
                            "(is the environment unusually large?)")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def recv(sock: socket.socket, flags: int = 0):
    """One message as (dict, [fds]); None at end of stream. The caller owns the fds.

    Raises BlockingIOError on a non-blocking socket with nothing to read, ProtocolError on a
    malformed message (its fds already closed).
    """
    data, anc, msg_flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4),
                                           flags | socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if not data and not fds:
        return None
    try:
        if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes or with more than "
                                f"{MAX_FDS} fds")
        try:
            msg = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(f"message is not JSON: {e}") from None
        if not isinstance(msg, dict):
            raise ProtocolError("message is not a JSON object")
    except ProtocolError:
        for fd in fds:
            _close_quietly(fd)
        raise
    return msg, fds


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
