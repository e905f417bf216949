"""The first code of every Twizzler process: `python -m twzlinux.launch MODE PROGRAM ARGS...`.

twzd starts it with the program's stdio, cwd and environment. It installs the seccomp filter,
hands the listener to twzd over the socket named by TWZ_LAUNCH_FD, and becomes the program:
MODE python runs PROGRAM like `python PROGRAM ARGS...` after initialising libtwz; MODE native
execs it (the C runtime initialises itself).
"""

import os
import socket
import sys

from twzlinux.daemon import filter as seccomp_filter
from twzlinux.daemon import isolation


def _hand_over_listener() -> None:
    launch_fd = int(os.environ.pop("TWZ_LAUNCH_FD"))
    # Refused Linux calls then go to twzd too. It stays set: the C runtime reads it to report
    # the THRD_SYNC/THRD_CTL calls it serves in-process (docs/threads.md).
    trace = bool(os.environ.get("TWZ_TRACE", ""))
    try:
        listener = seccomp_filter.install(trace)
    except OSError as e:
        sys.exit(f"twzrun: cannot install the seccomp filter: {e.strerror}. twzlinux needs "
                 "seccomp user notification (Linux 5.5 or newer, allowed by any container "
                 "seccomp policy in force)")
    with socket.socket(fileno=launch_fd) as sock:
        socket.send_fds(sock, [b"L"], [listener])
    os.close(listener)  # twzd holds the listener now; keeping it would let us answer ourselves


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if (len(argv) < 2 or argv[0] not in ("python", "native")
            or not os.environ.get("TWZ_LAUNCH_FD", "").isdigit()):
        sys.exit("usage: python -m twzlinux.launch python|native PROGRAM [ARGS...]\n"
                 "(run by twzd with TWZ_LAUNCH_FD set; run programs with twzrun)")
    mode, program, args = argv[0], argv[1], argv[2:]
    try:
        isolation.apply(os.environ["TWZ_HOME"])
    except (OSError, KeyError) as e:
        sys.exit(f"twzrun: cannot isolate the program from twzd's home: {e}")
    _hand_over_listener()
    if mode == "native":
        try:
            os.execv(program, [program, *args])
        except OSError as e:
            sys.stderr.write(f"twzrun: cannot execute {program}: {e.strerror}\n")
            os._exit(126)
    import runpy

    import libtwz  # noqa: F401  (initialises the view from TWZ_VIEW)

    launcher_files = {__file__, runpy.__file__, runpy.run_path.__code__.co_filename}

    def excepthook(exc_type, exc, tb):
        # An uncaught error should read as under `python PROGRAM`, without our frames on top.
        while tb is not None and tb.tb_frame.f_code.co_filename in launcher_files:
            tb = tb.tb_next
        # the default hook prints exc.__traceback__, not its `tb` argument
        sys.__excepthook__(exc_type, exc.with_traceback(tb), tb)

    sys.excepthook = excepthook
    sys.argv = [program, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(program)))  # as `python PROGRAM` does
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
