"""`twz stat OBJ` and `twz snapshot OBJ`: an object's pages, and a point-in-time copy of it.

OBJ is an object ID (hi:lo, as programs print them). Both ask the running twzd: a volatile
object lives only there.
"""

import sys

from twzlinux.daemon import client

COMMANDS = ("stat", "snapshot")


def add_parsers(sub) -> None:
    st = sub.add_parser("stat", help="an object's resident, dirty and owed pages")
    st.add_argument("obj", help="object ID (hi:lo)")
    sn = sub.add_parser("snapshot", help="make a point-in-time copy of an object; prints its ID")
    sn.add_argument("obj", help="object ID (hi:lo)")


def run(opts, home) -> int:
    conn = client.try_connect(home)
    if conn is None:
        print(f"twz {opts.command}: twzd is not running for {home}", file=sys.stderr)
        return 1
    try:
        reply = conn.request({"op": "obj", "action": opts.command, "id": opts.obj})
    finally:
        conn.close()
    if opts.command == "snapshot":
        print(reply["id"])
        return 0
    kind = "persistent" if reply["persistent"] else "volatile"
    print(f"{reply['id']} ({kind}): {reply['resident']} resident, {reply['dirty']} dirty, "
          f"{reply['writeback']} under writeback, {reply['evicted']} evicted, "
          f"{reply['owed']} owed (to a lazy copy's source, or paged out) (4 KiB pages)")
    return 0
