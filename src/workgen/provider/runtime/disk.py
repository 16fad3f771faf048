"""Per-activity disks: one ext4 filesystem bounds all that an activity stores.

Part of the provider runtime, next to ``sandbox.py`` and ``cgroup.py``. The sandbox's writable
places (the Golem volumes and its /tmp) are host directories under one per-activity directory;
``open_disk`` mounts a filesystem of its own on that directory, so its size and inode count bound
bytes and files for the activity as a whole, the sandbox's writes and the host's alike (both get
ENOSPC past the bound), and the host's disk gives no more than that size to it.

The filesystem is a sparse image file beside the directory, ``<directory>.<owner pid>.img`` (not
inside, so the sandbox never sees it), loop-mounted nosuid,nodev. The pid in the name is the
provider process that made it: after a crash, ``sweep_stale`` unmounts the disks of dead owners
and removes their images.

Needs root, loop devices, mkfs.ext4 and mount; ``disk_support`` says what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .leftovers import owner_gone

log = logging.getLogger(__name__)

MIN_SIZE = 8 << 20  # below this mkfs.ext4's own metadata leaves too little room to be useful
_INODE_RATIO = 16384
_INODES_MIN, _INODES_MAX = 1024, 1_000_000
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/sbin:/usr/sbin:/bin:/usr/bin"])
_ENV = {"PATH": _SEARCH_PATH, "LC_ALL": "C"}  # C locale: tool errors land in logs verbatim
_MKFS_TIMEOUT, _MOUNT_TIMEOUT = 60.0, 30.0
_UMOUNT_TIMEOUT = 10.0  # a plain umount writes the dirty pages back to the image first
_BUSY_GRACE = 1.0  # how long a busy disk gets to be let go of before it is detached lazily


class DiskUnavailable(Exception):
    """No disk can be made here, or this one could not; the message says why."""


@functools.cache
def _tool(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _exe(name: str) -> str:
    return _tool(name) or name


@functools.cache
def disk_support() -> str | None:
    """``None`` if disks can be made here, else why not (checked once; nothing is mounted)."""
    if os.geteuid() != 0:
        return "mounting a disk image needs root"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    missing = [name for name in ("mkfs.ext4", "mount", "umount") if _tool(name) is None]
    return f"not found on {_SEARCH_PATH}: {', '.join(missing)}" if missing else None


def _mounts() -> list[tuple[str, str]]:
    """(mountpoint, source) of every mount we see, unescaped (mountinfo writes " " as \\040)."""
    def unescape(s: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        rows = [(left.split(), right.split()) for left, _, right in
                (line.partition(" - ") for line in f)]
    return [(unescape(a[4]), unescape(b[1])) for a, b in rows if len(a) > 4 and len(b) > 1]


def _is_mounted(mountpoint: str) -> bool:
    return any(mp == mountpoint for mp, _ in _mounts())


async def _unmount(mountpoint: str) -> bool:
    """Unmounts, detaching lazily if still busy after a grace; True if it is no longer mounted.

    The work is done in a thread, which finishes even if its caller is cancelled (and which
    ``asyncio.run`` waits for before it returns), so a run that is cut short never leaves a
    disk mounted behind it."""
    return await asyncio.to_thread(_unmount_blocking, mountpoint)


def _unmount_blocking(mountpoint: str) -> bool:
    umount = _exe("umount")
    deadline = time.monotonic() + _BUSY_GRACE
    err = ""
    while _is_mounted(mountpoint):
        if time.monotonic() >= deadline:
            # Open files or a cwd inside keep it busy: detach it now; the kernel lets go of the
            # filesystem (and, autoclear, of the loop device) when the last user does.
            log.warning("disk at %s is busy (%s): detaching it lazily", mountpoint, err)
            err = _run_blocking([umount, "-l", mountpoint], _UMOUNT_TIMEOUT)[1]
            break
        rc, err = _run_blocking([umount, mountpoint], _UMOUNT_TIMEOUT)
        if rc != 0:
            time.sleep(0.1)  # a busy disk: the grace above bounds the retries
    if _is_mounted(mountpoint):
        log.warning("cannot unmount the disk at %s: %s", mountpoint, err)
        return False
    return True


def _run_blocking(argv: list[str], timeout: float) -> tuple[int, str]:
    """Runs a tool (no shell); returns its exit status (-1: timed out) and stderr."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=_ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"{argv[0]} timed out after {timeout:g} s"
    return done.returncode, done.stderr.decode(errors="replace").strip()


class ActivityDisk:
    """A mounted disk of one activity (``open_disk`` makes it)."""

    def __init__(self, directory: Path, mountpoint: str, image: Path, size_bytes: int,
                 inodes: int) -> None:
        self.directory = directory
        self.image = image
        self.size_bytes = size_bytes
        self.inodes = inodes  # as mkfs made it: the request rounded up to fill inode tables
        self._mountpoint = mountpoint
        self._closing: asyncio.Future[None] | None = None
        self.description = (f"ext4 image of {_human(size_bytes)}, {inodes} files, "
                            f"loop-mounted at {mountpoint}")

    def usage(self) -> tuple[int, int]:
        """(bytes used, files used), the filesystem's own metadata included; (0, 0) once closed."""
        if self._closing is not None:
            return 0, 0
        st = os.statvfs(self._mountpoint)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree

    async def aclose(self) -> None:
        """Unmounts and deletes the image; idempotent, bounded in time, never raises."""
        if self._closing is None:
            # One thread does it all, started now: cancelled or not, the disk is unmounted and
            # its image removed (asyncio.run waits for the thread before it returns).
            self._closing = asyncio.get_running_loop().run_in_executor(None, self._close_blocking)
        await asyncio.shield(self._closing)

    def _close_blocking(self) -> None:
        try:
            _unmount_blocking(self._mountpoint)  # warns if it cannot
        except Exception as e:  # e.g. umount vanished: the image must still go
            log.warning("cannot unmount the disk at %s: %s", self._mountpoint, e)
        try:
            # Still attached (lazily unmounted): the space returns when the loop device lets go.
            self.image.unlink(missing_ok=True)
        except OSError as e:
            log.warning("cannot remove disk image %s: %s", self.image, e)


def _human(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _make_and_mount(directory: Path, mountpoint: str, image: Path, size_bytes: int,
                    inodes: int) -> int:
    """Makes the image, its filesystem and the mount; undoes what it did if it fails. Returns
    the filesystem's number of inodes."""
    covered = os.stat(mountpoint)
    try:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as e:
        raise DiskUnavailable(f"cannot create disk image {image}: {e}") from e
    tried_mount = False
    try:
        try:
            os.ftruncate(fd, size_bytes)  # sparse: the host's disk gives blocks as they are written
        except OSError as e:
            raise DiskUnavailable(f"cannot size disk image {image}: {e}") from e
        finally:
            os.close(fd)
        # No journal (scratch space, dropped with the activity); inode tables left unzeroed
        # (a fresh sparse file reads as zeros), no discard: mkfs writes ~1 MB of metadata for 2 GiB.
        rc, err = _run_blocking([
            _exe("mkfs.ext4"), "-q", "-F", "-N", str(inodes), "-m", "0",
            "-b", "4096", "-I", "256", "-O", "^has_journal",
            "-E", "lazy_itable_init=1,nodiscard", str(image)], _MKFS_TIMEOUT)
        if rc != 0:
            raise DiskUnavailable(f"mkfs.ext4 failed on {image}: {err}")
        tried_mount = True
        # noinit_itable: the kernel's background zeroing of inode tables would only fill the
        # sparse image with zeros.
        rc, err = _run_blocking([
            _exe("mount"), "-t", "ext4", "-o", "loop,nosuid,nodev,noinit_itable",
            str(image), mountpoint], _MOUNT_TIMEOUT)
        if rc != 0:
            raise DiskUnavailable(f"mount of {image} on {directory} refused: {err}")
        # The new root stands in for the directory: its owner, and traversable but not
        # listable for the sandbox's user; lost+found would only be clutter there.
        os.chown(mountpoint, covered.st_uid, covered.st_gid)
        os.chmod(mountpoint, 0o711)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(mountpoint, "lost+found"))
        return os.statvfs(mountpoint).f_files
    except BaseException:
        if tried_mount and _is_mounted(mountpoint):
            _unmount_blocking(mountpoint)
        with contextlib.suppress(OSError):
            image.unlink()
        raise


async def open_disk(directory: Path, size_bytes: int, *, inodes: int | None = None,
                    owner_pid: int | None = None) -> ActivityDisk:
    """Mounts a new ext4 filesystem of ``size_bytes`` and ``inodes`` files on ``directory``.

    ``directory`` must exist and be empty; the image goes beside it, named after ``owner_pid``
    (default: this process) for ``sweep_stale``. On failure, whatever was done is undone.
    """
    if not _is_int(size_bytes) or size_bytes < MIN_SIZE:
        raise ValueError(f"disk size must be an int of at least {MIN_SIZE} bytes: {size_bytes!r}")
    if inodes is None:
        inodes = min(max(size_bytes // _INODE_RATIO, _INODES_MIN), _INODES_MAX)
    if not _is_int(inodes) or inodes < 16:
        raise ValueError(f"inode count must be an int of at least 16: {inodes!r}")
    pid = os.getpid() if owner_pid is None else owner_pid
    if not _is_int(pid) or pid <= 0:
        raise ValueError(f"owner pid must be a positive int: {pid!r}")
    if reason := disk_support():
        raise DiskUnavailable(reason)
    directory = Path(directory)
    mountpoint = os.path.realpath(directory)  # as mountinfo and the loop device will name it
    if not os.path.isdir(mountpoint) or os.listdir(mountpoint):
        raise ValueError(f"not an empty directory: {directory}")
    if _is_mounted(mountpoint):
        raise ValueError(f"something is mounted on {directory} already")
    image = Path(f"{mountpoint}.{pid}.img")
    # In a thread, which a cancelled caller can't stop half-way (a mount made as the caller
    # gave up would stay behind); if the caller is gone when it is done, the disk is undone.
    making = asyncio.get_running_loop().run_in_executor(
        None, _make_and_mount, directory, mountpoint, image, size_bytes, inodes)
    try:
        made = await asyncio.shield(making)
    except asyncio.CancelledError:
        def undo(done: asyncio.Future[int]) -> None:
            if not done.cancelled() and done.exception() is None:
                _unmount_blocking(mountpoint)
                with contextlib.suppress(OSError):
                    image.unlink()

        making.add_done_callback(undo)
        raise
    return ActivityDisk(directory, mountpoint, image, size_bytes, made)


def _backing_file(source: str) -> str | None:
    if not re.fullmatch(r"/dev/loop[0-9]+", source):
        return None
    try:
        with open(f"/sys/block/{os.path.basename(source)}/loop/backing_file") as f:
            return f.read().rstrip("\n").removesuffix(" (deleted)")
    except OSError:
        return None  # detached meanwhile


async def sweep_stale(root: Path | None, prefix: str = "workgen-act-") -> int:
    """Unmounts the disks on ``root/<prefix>*`` (``None``: on any ``<prefix>*`` directory, wherever
    it is) whose owner is dead, removes their images (and images left unmounted); returns how
    many disks it cleaned. Only disks this module made qualify: the image beside the mountpoint,
    named after it and its owner's pid."""
    base = os.path.realpath(root) if root is not None else None
    cleaned: set[str] = set()
    kept: set[str] = set()  # images of disks that stay mounted: not removed below either
    for mountpoint, source in _mounts():
        parent, name = os.path.split(mountpoint)
        backing = _backing_file(source)
        if (base is not None and parent != base) or not name.startswith(prefix) \
                or backing is None:
            continue
        m = re.fullmatch(re.escape(mountpoint) + r"\.([0-9]+)\.img", backing)
        if m is None or not owner_gone(int(m[1])) or not await _unmount(mountpoint):
            kept.add(backing)
            continue
        cleaned.add(backing)
        if base is None:  # elsewhere nobody else removes the (now empty) mountpoint
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)
    # A crash between creating an image and mounting it, or after unmounting, leaves just a file.
    stale = re.compile(re.escape(prefix) + r".*\.([0-9]+)\.img")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(base) if base is not None else ():
            m = stale.fullmatch(entry.name)
            if m and entry.path not in kept and entry.is_file(follow_symlinks=False) \
                    and owner_gone(int(m[1])):
                cleaned.add(entry.path)
    for image in cleaned:
        try:
            os.unlink(image)
            log.info("removed stale disk image %s", image)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove stale disk image %s: %s", image, e)
    return len(cleaned)
