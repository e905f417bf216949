"""The C runtime shipped with twzlinux: the generated syscall header `twz/sys.h` and the
header-only runtime `twz/rt.h` (built into `twzlinux._twzrt` at install).

Native programs compile against INCLUDE_DIR: `gcc -I"$INCLUDE_DIR" prog.c`.
"""

import pathlib

INCLUDE_DIR = str(pathlib.Path(__file__).resolve().parent / "include")
