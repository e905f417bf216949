"""Backing inodes that a program cannot reopen with more access than twzd gave it.

A program holds object fds, and Linux lets it reopen any fd through /proc/self/fd/N with the
*inode's* permissions, not the fd's: a read-only fd of a memfd (mode 0777, owned by twzd's user,
who is also the program's) reopens read-write. So before the first fd of an object leaves twzd,
its inode is made mode 0 and (when twzd runs as root) owned by the overflow uid. Programs run
without capabilities (twzlinux.daemon.isolation), so they are neither its owner (no chmod) nor
above its mode (no reopen at all); twzd, root with CAP_DAC_OVERRIDE, keeps opening it.

Without root, twzd cannot give the inode away, and a program of the same user could chmod it
back: there twzd leaves the inode alone (docs/security.md says so).
"""

import os

from .store import Backing

NOBODY = 65534
_ROOT = os.geteuid() == 0


def hide_inode(backing: Backing) -> None:
    if _ROOT and not getattr(backing, "hidden_inode", False):
        try:
            os.fchown(backing.fd, NOBODY, NOBODY)
            os.fchmod(backing.fd, 0)
        except PermissionError:
            pass  # root without CAP_CHOWN (a kernel core run inside a program): as non-root
        backing.hidden_inode = True
