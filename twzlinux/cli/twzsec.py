"""The `twz key|cap|sctx|object` subcommands: keys, capabilities, security contexts.

  twz key new NAME                         a key pair; NAME names its private half
  twz object new --key KEY [--perms P] [--data FILE] [--name NAME]
                                           an object whose capabilities KEY signs
  twz sctx new NAME [--key KEY] [--gmask P] [--undetachable]
  twz cap grant --key KEY TARGET ACCESSOR PERMS [--expires SECONDS] [--gate OFF:LEN:ALIGN]
                [--add] [-o FILE]          sign a capability (C in PERMS: delegable)
  twz cap delegate --key KEY CAPFILE DELEGATEE MASK [--expires SECONDS] [--add] [-o FILE]
  twz sctx add SCTX TARGET (CAPFILE | --mask P | --regrant P) [--pmask P]
  twz sctx rm SCTX TARGET  |  twz sctx gmask SCTX P  |  twz sctx show SCTX

Permissions are letters: R(ead) W(rite) X (exec) U(se) D(elete) C (may delegate). Objects and
contexts are named by ID (hi:lo) or by name. Everything goes through twzd's `sec` request.
"""

import base64
import sys
import time

from twzlinux.daemon import client
from twzlinux.kernel.security import parse_perms

COMMANDS = ("key", "object", "cap", "sctx")


def add_parsers(sub) -> None:
    k = sub.add_parser("key", help="make a signing key pair").add_subparsers(dest="action",
                                                                              required=True)
    k.add_parser("new").add_argument("name")
    o = sub.add_parser("object", help="make an object signed for by a key").add_subparsers(
        dest="action", required=True)
    on = o.add_parser("new")
    on.add_argument("--key", required=True)
    on.add_argument("--perms", default="", help="default permissions (letters R W X U)")
    on.add_argument("--data", help="a file whose bytes start the object's data")
    on.add_argument("--name")
    cap = sub.add_parser("cap", help="sign capabilities and delegations").add_subparsers(
        dest="action", required=True)
    g = cap.add_parser("grant")
    for a in ("target", "accessor", "perms"):
        g.add_argument(a)
    d = cap.add_parser("delegate")
    for a in ("capfile", "delegatee", "mask"):
        d.add_argument(a)
    for p in (g, d):
        p.add_argument("--key", required=True)
        p.add_argument("--expires", type=float, help="valid for this many seconds")
        p.add_argument("--add", action="store_true", help="also add it to the accessor's context")
        p.add_argument("-o", "--output", help="write it to this file (default: base64 on stdout)")
    g.add_argument("--gate", help="gate range OFFSET:LENGTH:ALIGN (hex allowed)")
    s = sub.add_parser("sctx", help="security contexts").add_subparsers(dest="action",
                                                                        required=True)
    sn = s.add_parser("new")
    sn.add_argument("name")
    sn.add_argument("--key", help="the key that signs its delegations")
    sn.add_argument("--gmask", default="", help="default permissions it masks (letters)")
    sn.add_argument("--undetachable", action="store_true")
    sa = s.add_parser("add")
    sa.add_argument("sctx")
    sa.add_argument("target")
    sa.add_argument("capfile", nargs="?")
    sa.add_argument("--mask", help="a mask on the target's default permissions")
    sa.add_argument("--regrant", help="give back default permissions the gmask removed")
    sa.add_argument("--pmask", help="limit the capability to these permissions")
    for name in ("rm", "show", "gmask"):
        p = s.add_parser(name)
        p.add_argument("sctx")
        if name == "rm":
            p.add_argument("target")
        if name == "gmask":
            p.add_argument("perms")


def _read_item(path: str) -> str:
    data = open(path, "rb").read() if path != "-" else sys.stdin.buffer.read()
    try:
        return base64.b64encode(base64.b64decode(data, validate=True)).decode()
    except ValueError:
        return base64.b64encode(data).decode()  # a raw binary capability file


def _valid(expires) -> int:
    return int((time.time() + expires) * 1e9) if expires else 0


def _emit(item: str, output) -> None:
    if output:
        with open(output, "wb") as f:
            f.write(base64.b64decode(item))
        print(f"wrote {output} ({len(base64.b64decode(item))} bytes)")
    else:
        print(item)


def run(opts, home) -> int:
    conn = client.connect(home)

    def req(**msg):
        return conn.request({"op": "sec", **msg})

    try:
        cmd, act = opts.command, opts.action
        if (cmd, act) == ("key", "new"):
            r = req(cmd="key_new", name=opts.name)
            print(f"key {opts.name}: public {r['public']}, private {r['private']}")
        elif (cmd, act) == ("object", "new"):
            data = open(opts.data, "rb").read() if opts.data else b""
            r = req(cmd="object_new", key=opts.key, pflags=parse_perms(opts.perms or "0"),
                    data=base64.b64encode(data).decode(), **({"name": opts.name}
                                                              if opts.name else {}))
            print(r["id"])
        elif (cmd, act) == ("sctx", "new"):
            msg = dict(cmd="sctx_new", name=opts.name, gmask=parse_perms(opts.gmask or "0"),
                       undetachable=opts.undetachable)
            if opts.key:
                msg["key"] = opts.key
            print(f"security context {opts.name}: {req(**msg)['id']}")
        elif (cmd, act) == ("cap", "grant"):
            gate = [int(x, 0) for x in opts.gate.split(":")] if opts.gate else [0, 0, 0]
            item = req(cmd="cap_grant", key=opts.key, target=opts.target,
                       accessor=opts.accessor, perms=parse_perms(opts.perms),
                       valid=_valid(opts.expires), gate_offset=gate[0], gate_length=gate[1],
                       gate_align=gate[2])["item"]
            if opts.add:
                req(cmd="sctx_add", sctx=opts.accessor, target=opts.target, item=item)
                print(f"added to {opts.accessor}")
            _emit(item, opts.output)
        elif (cmd, act) == ("cap", "delegate"):
            item = req(cmd="cap_delegate", key=opts.key, item=_read_item(opts.capfile),
                       to=opts.delegatee, mask=parse_perms(opts.mask),
                       valid=_valid(opts.expires))["item"]
            _emit(item, opts.output)
        elif (cmd, act) == ("sctx", "add"):
            msg = dict(cmd="sctx_add", sctx=opts.sctx, target=opts.target)
            if opts.capfile:
                msg["item"] = _read_item(opts.capfile)
                if opts.pmask:
                    msg["pmask"] = parse_perms(opts.pmask)
            elif opts.mask or opts.regrant:
                msg.update(pmask=parse_perms(opts.mask or opts.regrant), mask=bool(opts.mask),
                           regrant=bool(opts.regrant))
            else:
                print("twz sctx add: give a capability file, --mask or --regrant",
                      file=sys.stderr)
                return 2
            req(**msg)
            print(f"added to {opts.sctx}")
        elif (cmd, act) == ("sctx", "rm"):
            print(f"removed {req(cmd='sctx_rm', sctx=opts.sctx, target=opts.target)['removed']} "
                  f"entries for {opts.target} from {opts.sctx}")
        elif (cmd, act) == ("sctx", "gmask"):
            req(cmd="sctx_gmask", sctx=opts.sctx, gmask=parse_perms(opts.perms))
        elif (cmd, act) == ("sctx", "show"):
            r = req(cmd="sctx_show", sctx=opts.sctx)
            print(f"security context {r['name']} ({r['id']}), signed for by {r['kuid']}, "
                  f"global mask {r['gmask']}")
            for e in r["entries"]:
                detail = (f"grants {e['perms']}" if "perms" in e else "")
                if e.get("valid"):
                    detail += f", until {time.ctime(e['valid'] / 1e9)}"
                if e.get("revoked"):
                    detail += ", REVOKED"
                print(f"  {e['target']}  {e['kind']:12}  pmask {e['pmask']}  {detail}")
        return 0
    except ValueError as e:
        print(f"twz: {e}", file=sys.stderr)
        return 2
    finally:
        conn.close()
