"""Backing files for objects: memfds (volatile) and sparse files under $TWZ_HOME (persistent).

Every backing is a full 1 GiB object image (slot offset = file offset), sparse: only written
pages take memory or disk. Programs never see the store, only fds opened with the access they
were granted (a read-only fd for read-only access, so the host kernel enforces it).
"""

import ctypes
import errno
import os
import struct
from pathlib import Path
from typing import Iterator

from twzlinux.abi.constants import OBJ_MAXSIZE
from twzlinux.abi.structs import id_str

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_COPY_CHUNK = 1 << 20
_TEMP = ".new-"  # never an object name (those are hex:hex)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_libc.syscall.restype = ctypes.c_long
_SYS_CACHESTAT = 451
_CACHESTAT_RANGE = struct.Struct("=QQ")
_CACHESTAT = struct.Struct("=5Q")  # nr_cache, nr_dirty, nr_writeback, nr_evicted, recently


def cachestat(fd: int, off: int, n: int) -> tuple[int, int, int, int, int]:
    """cachestat(2) (Linux 6.5+) of fd's [off, off + n): pages cached, dirty, under writeback,
    evicted (swapped out, for a memfd) and recently evicted."""
    rng = ctypes.create_string_buffer(_CACHESTAT_RANGE.pack(off, n))
    out = ctypes.create_string_buffer(_CACHESTAT.size)
    if _libc.syscall(_SYS_CACHESTAT, fd, rng, out, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cachestat: {os.strerror(err)}")
    return _CACHESTAT.unpack(out.raw)


class Backing:
    """One object's image. `path` is None for a memfd."""

    def __init__(self, fd: int, path: Path | None = None):
        self.fd = fd
        self.path = path

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def pread(self, off: int, n: int) -> bytes:
        return os.pread(self.fd, n, off)

    def pwrite(self, off: int, data: bytes) -> None:
        os.pwrite(self.fd, data, off)

    def open_fd(self, writable: bool) -> int:
        """A new, independent fd for a program: O_RDWR if writable, else really read-only."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        # Reopening through /proc gives a memfd a fresh open file description with its own
        # access mode; dup() would share twzd's read-write one.
        if self.path:
            return os.open(self.path, flags | os.O_NOFOLLOW)
        return os.open(f"/proc/self/fd/{self.fd}", flags)

    def data_extents(self, off: int, n: int) -> Iterator[tuple[int, int]]:
        """(start, end) of the allocated extents within [off, off + n)."""
        end = off + n
        while off < end:
            try:
                start = os.lseek(self.fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after off
                    return
                raise
            if start >= end:
                return
            stop = min(os.lseek(self.fd, start, os.SEEK_HOLE), end)
            yield start, stop
            off = stop

    def page_extents(self, off: int, n: int, grain: int = 2 << 20) -> list[tuple[int, int]]:
        """Ranges covering every page of [off, off + n) that an access would find rather than
        a hole, rounded out to `grain`: SEEK_HOLE would walk each page of the data, where one
        SEEK_DATA a grain skips whole empty stretches. A stretch that SEEK_DATA skips but
        cachestat finds pages in (allocated and never written: not data to SEEK_DATA) is
        covered a grain at a time until the rest of it holds none."""
        out, at, end = [], off, off + n
        while at < end:
            try:
                start = min(os.lseek(self.fd, at, os.SEEK_DATA), end)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                start = end
            if at < start:
                cached, _, _, evicted, _ = cachestat(self.fd, at, start - at)
                if cached or evicted:
                    start = at
            stop = min(start - start % grain + grain, end) if start < end else end
            if start < stop:
                if out and out[-1][1] == start:
                    start = out.pop()[0]
                out.append((start, stop))
            at = stop
        return out

    def data_end(self, off: int, n: int) -> int:
        """The end of the last allocated extent within [off, off + n), or off if none."""
        return max((stop for _, stop in self.data_extents(off, n)), default=off)

    def has_data(self, off: int, n: int) -> bool:
        return next(self.data_extents(off, n), None) is not None

    def punch(self, off: int, n: int) -> None:
        """Zero [off, off + n) by deallocating it, so it reads as zeros and takes no space."""
        if _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, off, n):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def allocate(self, off: int, n: int) -> None:
        os.posix_fallocate(self.fd, off, n)

    def copy_from(self, src: "Backing", soff: int, doff: int, n: int) -> None:
        """Make [doff, doff + n) a copy of src's [soff, soff + n), holes staying holes."""
        self.punch(doff, n)
        for start, stop in src.data_extents(soff, n):
            self._copy_extent(src, start, doff + start - soff, stop - start)

    def _copy_extent(self, src: "Backing", soff: int, doff: int, n: int) -> None:
        while n:
            try:
                done = os.copy_file_range(src.fd, self.fd, n, soff, doff)
            except OSError as e:
                # copy_file_range refuses to cross filesystems (memfd <-> $TWZ_HOME).
                if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                done = os.pwrite(self.fd, os.pread(src.fd, min(n, _COPY_CHUNK), soff), doff)
            soff, doff, n = soff + done, doff + done, n - done

    def flush(self) -> None:
        """Push a persistent image to disk; a memfd has nowhere to go."""
        if self.path:
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def free(self) -> None:
        """Release the storage for good: the memfd is closed, the file unlinked."""
        self.close()
        if self.path:
            self.path.unlink(missing_ok=True)


class Store:
    def __init__(self, home: Path):
        self.dir = Path(home) / "objects"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, oid: int) -> Path:
        return self.dir / id_str(oid)

    def volatile(self, oid: int) -> Backing:
        fd = os.memfd_create(f"twz:{id_str(oid)}", os.MFD_CLOEXEC)
        os.ftruncate(fd, OBJ_MAXSIZE)
        return Backing(fd)

    def persistent(self, oid: int) -> Backing:
        """A new image under a temporary name: it gets the object's name only in `publish`,
        once complete, so a crash never leaves a named object without its metainfo."""
        path = self.path(oid)
        fd = os.open(self._temp(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, OBJ_MAXSIZE)
        return Backing(fd, path)

    def publish(self, backing: Backing) -> None:
        """Give a complete new image its object's name: fsync, then link (which, unlike
        rename, refuses to replace an existing object), drop the temporary name, fsync the
        directory."""
        temp = self._temp(backing.path)
        os.fsync(backing.fd)
        os.link(temp, backing.path)
        os.unlink(temp)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def sweep(self) -> None:
        """Remove the images of creations a crash interrupted (never published)."""
        for temp in self.dir.glob(_TEMP + "*"):
            temp.unlink(missing_ok=True)

    @staticmethod
    def _temp(path: Path) -> Path:
        return path.with_name(_TEMP + path.name)

    def exists(self, oid: int) -> bool:
        return self.path(oid).exists()

    def find(self, oid: int) -> Backing | None:
        """The persistent backing of `oid`, if the store has one."""
        path = self.path(oid)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        return Backing(fd, path)
