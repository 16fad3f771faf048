"""The activity's volumes as the host sees them, opened only beneath their own directories.

A requestor names files by container path (``/golem/work/d/f``) while the activity's commands
rename, replace and link whatever they like in the same directories at the same time. So the
host never checks a path and then opens it: every file and every directory on the way is opened
with ``openat2`` relative to a descriptor of the volume's directory, refusing symbolic links
(``RESOLVE_NO_SYMLINKS``), ``/proc`` magic links, mount crossings and any step outside the
volume (``RESOLVE_BENEATH``). Whatever a command swaps in mid-way, the kernel either resolves the
path inside the volume or fails it. Parents are made one ``mkdirat`` at a time beneath the
descriptor of the one before. Only regular files are opened: a FIFO or socket planted where a
file is expected is refused, not waited on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

# From <linux/openat2.h>; openat2 is syscall 437 on every architecture with the generic table
# (x86_64, aarch64, riscv64, ...).
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
# A rename elsewhere during a RESOLVE_BENEATH lookup makes the kernel answer EAGAIN to be safe.
_RACE_RETRIES = 64
MAX_NAME = 255
MAX_PATH = 4096


class VolumeError(Exception):
    """A container path that can't be used: outside the volumes, through a link, not a file."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def open_beneath(dirfd: int, relative: str, flags: int, mode: int = 0) -> int:
    """``openat2(dirfd, relative, flags, mode)`` resolved strictly beneath ``dirfd``."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
    path = os.fsencode(relative)
    for _ in range(_RACE_RETRIES):
        fd = _libc.syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), relative)
    raise OSError(errno.EAGAIN, "the path kept changing while it was opened", relative)


def openat2_available() -> bool:
    """Whether the kernel has ``openat2`` (Linux 5.6 and later)."""
    try:
        os.close(open_beneath(os.open("/", os.O_PATH | os.O_DIRECTORY), ".",
                              os.O_PATH | os.O_DIRECTORY))
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    return True


_MEANINGS = {
    errno.ELOOP: "it goes through a symbolic link or leaves its volume",
    errno.EXDEV: "it goes through a symbolic link or leaves its volume",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory; transfers copy single files",
    errno.ENAMETOOLONG: "a name in it is too long",
    errno.ENOSPC: "the activity's storage is full",
    errno.EDQUOT: "the activity's storage quota is used up",
    errno.EFBIG: "the file is larger than the activity's storage limit",
}


def describe(exc: OSError) -> str:
    """What an ``OSError`` from a beneath-open means, in the requestor's terms."""
    return _MEANINGS.get(exc.errno or 0) or exc.strerror or str(exc)


class Volumes:
    """The activity's container paths and the host directories behind them.

    Hold it open for the activity's life: it keeps a descriptor of each volume's directory,
    taken when the volumes were made and nothing in them could be a trap yet.
    """

    def __init__(self, mapping: Mapping[str, Path], owner: tuple[int, int] | None):
        # Longest container path first, so /golem/work/sub would win over /golem/work.
        self._mounts = sorted(mapping, key=lambda m: -len(m))
        self._fds: dict[str, int] = {}
        self._owner = owner
        try:
            for mount in self._mounts:
                self._fds[mount] = os.open(mapping[mount], os.O_PATH | os.O_DIRECTORY
                                           | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def split(self, container_path: str) -> tuple[str, str]:
        """The volume holding ``container_path`` and the path relative to it.

        Refused (:class:`VolumeError`): relative paths, ``..``, NULs, over-long names, paths
        outside every volume, and the volume's root itself.
        """
        if not isinstance(container_path, str) or "\0" in container_path:
            raise VolumeError(f"container path {container_path!r} is not a valid path")
        if len(container_path.encode(errors="surrogateescape")) > MAX_PATH:
            raise VolumeError(f"container path of {len(container_path)} characters is too long")
        path = PurePosixPath(container_path)
        if not path.is_absolute():
            raise VolumeError(f"container path {container_path!r} must be absolute")
        if ".." in path.parts:
            raise VolumeError(f"container path {container_path!r} contains '..'")
        for part in path.parts[1:]:
            if len(os.fsencode(part)) > MAX_NAME:
                raise VolumeError(f"container path {container_path!r}: the name "
                                  f"{part[:40]!r}... is longer than {MAX_NAME} bytes")
        for mount in self._mounts:
            try:
                rel = path.relative_to(mount)
            except ValueError:
                continue
            if not rel.parts:
                raise VolumeError(f"container path {container_path!r} is a volume, not a file")
            return mount, str(rel)
        mounts = ", ".join(sorted(self._mounts))
        raise VolumeError(f"container path {container_path!r} is not inside a volume ({mounts})")

    def _dirfd(self, mount: str) -> int:
        try:
            return self._fds[mount]
        except KeyError:
            raise VolumeError("the activity's volumes are closed") from None

    def open_read(self, container_path: str) -> int:
        """A read-only descriptor of the regular file at ``container_path``."""
        mount, rel = self.split(container_path)
        fd = self._open(mount, rel, container_path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            _require_regular(fd, container_path)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_write(self, container_path: str) -> int:
        """A descriptor of ``container_path`` created or truncated for writing (and reading),
        its missing parents made; everything made belongs to the sandbox's user."""
        mount, rel = self.split(container_path)
        parent, name = os.path.split(rel)
        parent_fd = self._make_dirs(mount, parent, container_path) if parent else None
        try:
            base = parent_fd if parent_fd is not None else self._dirfd(mount)
            # O_NONBLOCK: opening a FIFO a command planted here must not wait for a reader.
            fd = _open_at(base, name, container_path,
                          os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
        finally:
            if parent_fd is not None:
                os.close(parent_fd)
        try:
            _require_regular(fd, container_path)
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
            self._give(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove(self, container_path: str) -> None:
        """Remove a file a failed transfer left half-written (if it is still ours to remove)."""
        mount, rel = self.split(container_path)
        parent, name = os.path.split(rel)
        try:
            parent_fd = self._open(mount, parent or ".", container_path,
                                   os.O_PATH | os.O_DIRECTORY)
        except VolumeError:
            return
        try:
            os.unlink(name, dir_fd=parent_fd)
        except OSError:
            pass
        finally:
            os.close(parent_fd)

    def _open(self, mount: str, rel: str, shown: str, flags: int, mode: int = 0) -> int:
        return _open_at(self._dirfd(mount), rel, shown, flags, mode)

    def _make_dirs(self, mount: str, rel: str, shown: str) -> int:
        """A descriptor of directory ``rel`` beneath the volume, made as needed."""
        fd = os.dup(self._dirfd(mount))
        try:
            for part in PurePosixPath(rel).parts:
                try:
                    next_fd = _open_at(fd, part, shown, os.O_PATH | os.O_DIRECTORY)
                except VolumeError as exc:
                    if not isinstance(exc.__cause__, FileNotFoundError):
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile by a command: opened (and checked) below
                    except OSError as err:
                        raise VolumeError(f"cannot create the directories of {shown!r}: "
                                          f"{describe(err)}") from err
                    next_fd = _open_at(fd, part, shown, os.O_RDONLY | os.O_DIRECTORY)
                    self._give(next_fd)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _give(self, fd: int) -> None:
        """Hand what we made to the sandbox's user, by descriptor (never by path)."""
        if self._owner is not None:
            os.fchown(fd, *self._owner)

    @contextmanager
    def reading(self, container_path: str) -> Iterator[int]:
        fd = self.open_read(container_path)
        try:
            yield fd
        finally:
            os.close(fd)


def _open_at(dirfd: int, rel: str, shown: str, flags: int, mode: int = 0) -> int:
    try:
        return open_beneath(dirfd, rel, flags, mode)
    except OSError as exc:
        raise VolumeError(f"cannot open {shown!r}: {describe(exc)}") from exc


def _require_regular(fd: int, shown: str) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise VolumeError(f"{shown!r} is not a regular file")
