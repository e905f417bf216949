"""twz: manage twzlinux from the shell.

  twz [--home DIR] daemon status|start|stop
  twz cflags            compiler flags for native programs (the twz/*.h include directory)
  twz [--home DIR] key|object|cap|sctx ...   keys, capabilities, security contexts
                        (twzlinux/cli/twzsec.py, docs/security.md)
  twz [--home DIR] ps   the live Twizzler threads (the root KSO's): Linux pid, ID, view, name
  twz [--home DIR] stat|snapshot OBJ   an object's pages; a point-in-time copy of it
                        (twzlinux/cli/twzobj.py, docs/userfaultfd.md)
"""

import argparse
import sys

from twzlinux.cli import twzobj, twzsec
from twzlinux.daemon import client, protocol


def _status(home) -> int:
    conn = client.try_connect(home)
    if conn is None:
        print(f"twzd is not running for {home}")
        return 3  # LSB's "program is not running"
    st = conn.request({"op": "status"})
    conn.close()
    hours, rest = divmod(int(st["uptime"]), 3600)
    print(f"twzd running for {home}: pid {st['pid']}, up {hours}:{rest // 60:02d}:{rest % 60:02d}, "
          f"{len(st['programs'])} program(s)")
    if st.get("build") != protocol.BUILD_ID:
        print(f"  runs other code (build {st.get('build')}, this is {protocol.BUILD_ID}): "
              f"restart it with `twz --home {home} daemon stop`")
    for p in st["programs"]:
        print(f"  {p['pid']:>7}  {' '.join(p['argv'] or [])}")
    return 0


def _stop(home) -> int:
    conn = client.try_connect(home)
    if conn is None:
        print(f"twzd is not running for {home}")
        return 0
    reply = conn.request({"op": "stop"})
    conn.close()
    if reply.get("programs"):
        print(f"stopping twzd for {home}: terminating {reply['programs']} program(s)")
    if not client.wait_stopped(home, timeout=client.START_TIMEOUT + 5):
        print(f"twz: twzd for {home} did not stop; see {home}/twzd.log", file=sys.stderr)
        return 1
    print(f"twzd stopped for {home}")
    return 0


def _ps(home) -> int:
    conn = client.try_connect(home)
    if conn is None:
        print(f"twzd is not running for {home}")
        return 3
    threads = conn.request({"op": "ps"})["threads"]
    conn.close()
    print(f"{'PID':>7}  {'THREAD':33}  {'VIEW':33}  NAME")
    for t in threads:
        print(f"{t['pid'] or '-':>7}  {t['id']}  {t['view']}  {t['name']}")
    return 0


def _start(home) -> int:
    conn = client.start(home)
    print(f"twzd running for {home} (pid {conn.hello.get('pid')}, log {home}/twzd.log)")
    conn.close()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="twz", description="Manage twzlinux.")
    ap.add_argument("--home", help="state directory (default $TWZ_HOME or "
                                   "~/.local/share/twzlinux)")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("daemon", help="the twzd for the home directory")
    d.add_argument("action", choices=("status", "start", "stop"))
    sub.add_parser("cflags", help="print compiler flags for native Twizzler programs")
    twzobj.add_parsers(sub)
    twzsec.add_parsers(sub)
    sub.add_parser("ps", help="list the live Twizzler threads with their views and names")
    opts = ap.parse_args(argv)
    if opts.command == "cflags":
        from twzlinux.native import INCLUDE_DIR
        print(f"-I{INCLUDE_DIR}")
        return 0
    home = client.home_from(opts.home)
    try:
        if opts.command in twzsec.COMMANDS:
            return twzsec.run(opts, home)
        if opts.command in twzobj.COMMANDS:
            return twzobj.run(opts, home)
        if opts.command == "ps":
            return _ps(home)
        return {"status": _status, "start": _start, "stop": _stop}[opts.action](home)
    except (client.ClientError, OSError) as e:
        print(f"twz: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
