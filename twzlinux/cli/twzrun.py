"""twzrun [--home DIR] [--trace | --trace-dir DIR] PROGRAM [ARGS...]: run a Twizzler program.

PROGRAM is a Python program (a .py file, or a file with a python shebang), run as by
`python PROGRAM ARGS...` (with the python running twzrun) with libtwz initialised; or a
native executable built against twz/*.h.
Its stdin, stdout, stderr, cwd and environment are twzrun's. twzrun forwards SIGINT, SIGTERM,
SIGHUP and SIGQUIT to it and exits with its status (128+n if signal n killed it).
--trace writes a line per Twizzler system call and per refused Linux call, decoded, to the
program's stderr; --trace-dir DIR writes them to DIR/trace.TID instead, one file per thread.
(THRD_SYNC and THRD_CTL are served inside the program, never by twzd, and are not traced.)
--sctx CONTEXT (an ID or a name; repeatable) runs it under those security contexts, the first
active (docs/security.md); without it, objects grant their default permissions.
"""

import os
import shutil
import signal
import sys

from twzlinux.daemon import client

USAGE = ("usage: twzrun [--home DIR] [--trace | --trace-dir DIR] [--sctx CONTEXT]... "
         "PROGRAM [ARGS...]")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE, EXIT_TWZD_FAILED = 127, 126, 125


class UsageError(Exception):
    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def _is_python(path: str) -> bool:
    if path.endswith(".py"):
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def resolve(name: str):
    """(path to pass the launcher, mode) for PROGRAM, or UsageError with a shell's status."""
    if "/" in name or name.endswith(".py") or os.path.exists(name):
        path = name
    else:
        path = shutil.which(name)
        if path is None:
            raise UsageError(f"{name}: command not found (not in the current directory or "
                             "$PATH)", EXIT_NOT_FOUND)
    if not os.path.exists(path):
        raise UsageError(f"{name}: no such file", EXIT_NOT_FOUND)
    if os.path.isdir(path):
        raise UsageError(f"{name}: is a directory", EXIT_NOT_EXECUTABLE)
    if _is_python(path):
        if not os.access(path, os.R_OK):
            raise UsageError(f"{name}: permission denied (cannot read it)", EXIT_NOT_EXECUTABLE)
        return path, "python"
    if not os.access(path, os.X_OK):
        raise UsageError(f"{name}: permission denied: not executable (chmod +x it, or name a "
                         "Python program *.py)", EXIT_NOT_EXECUTABLE)
    return path, "native"


def _stdio() -> list:
    """Our fds 0, 1, 2 for the program; /dev/null in place of a closed one."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def run(home, program: str, args: list, trace: bool | str = False, sctx=()) -> int:
    """trace: False, True (to the program's stderr) or a directory (one file per thread);
    sctx: security contexts (IDs or names) to run under, the first active."""
    path, mode = resolve(program)
    conn = client.connect(home)
    spawned, early = False, []

    def forward(signum, _frame):
        if not spawned:
            early.append(signum)  # twzd would refuse it before the spawn request
            return
        try:
            conn.send({"op": "signal", "signal": signum})
        except OSError:
            pass  # twzd is gone; the next recv says so

    # Installed before the spawn, so that twzrun never dies of a signal meant for the program.
    for signum in FORWARDED:
        signal.signal(signum, forward)
    conn.send({"op": "spawn", "program": path, "args": args, "mode": mode, "trace": trace,
               "sctx": list(sctx),
               "python": sys.executable, "cwd": os.getcwd(), "env": dict(os.environ)},
              _stdio())
    spawned = True
    for signum in early:
        forward(signum, None)  # twzd handles a connection's messages in order: after the spawn
    reply = conn.recv()
    if "error" in reply:
        raise client.ClientError(f"twzd: {reply['error']}")
    while True:
        msg = conn.recv()
        if "exit" in msg:
            return msg["exit"]
        if "error" in msg:
            print(f"twzrun: twzd: {msg['error']}", file=sys.stderr)
        # other messages are replies to forwarded signals


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    home, trace, sctx = None, False, []
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt == "--trace":
            trace = True
        elif opt == "--trace-dir" and argv:
            trace = os.path.abspath(argv.pop(0))
            try:
                os.makedirs(trace, exist_ok=True)
            except OSError as e:
                print(f"twzrun: --trace-dir {trace}: {e.strerror}", file=sys.stderr)
                return 2
        elif opt == "--sctx" and argv:
            sctx.append(argv.pop(0))
        elif opt == "--home" and argv:
            home = argv.pop(0)
        elif opt.startswith("--home="):
            home = opt.split("=", 1)[1]
        elif opt in ("-h", "--help"):
            print(__doc__)
            return 0
        elif opt == "--":
            break
        else:
            print(f"twzrun: unknown option {opt}\n{USAGE}", file=sys.stderr)
            return 2
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        return run(client.home_from(home), argv[0], argv[1:], trace, sctx)
    except UsageError as e:
        print(f"twzrun: {e}", file=sys.stderr)
        return e.status
    except client.ClientError as e:
        print(f"twzrun: {e}", file=sys.stderr)
        return EXIT_TWZD_FAILED
    except OSError as e:  # the home cannot be created, the log cannot be opened, ...
        print(f"twzrun: {e}", file=sys.stderr)
        return EXIT_TWZD_FAILED
    except KeyboardInterrupt:  # before the program started: nothing to forward it to
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
