"""Which objects a process still maps, from /proc/PID/maps.

A process counts as referencing every object it got an fd for (LX_OBJFD) until it exits: the
runtime releases slots without telling twzd which object left (INVL_KSO names only the slot).
A program that creates, deletes and releases objects in a loop would so keep every one of them,
and twzd one fd each, until it exits. The object table therefore asks, now and then, which of
the deleted objects a process holds it still has mapped: a mapping names its file's device and
inode, which identify the backing (memfd or file) of exactly one object.
"""

import os


def mapped_files(pid: int) -> set[tuple[int, int]] | None:
    """(st_dev, st_ino) of every file `pid` maps, or None if it cannot be told (gone, or
    /proc unreadable): then nothing may be assumed unmapped."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            text = f.read()
    except OSError:
        return None
    files = set()
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and fields[4] != b"0":
            major, minor = fields[3].split(b":")
            files.add((os.makedev(int(major, 16), int(minor, 16)), int(fields[4])))
    return files


def file_id(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
