"""An activity's directory on the provider's host: its volumes and its ``/tmp``, bounded.

Made at ``deploy``, removed when the activity ends. Where the provider can (root, loop devices),
the directory is a filesystem of its own (:mod:`..runtime.disk`) of the offered storage's size
with a bounded number of files, so the volumes and ``/tmp`` together, and whatever the host
writes there for transfers, can't take more of the host's disk than was offered. Elsewhere a
one-line warning says that only each file's size is limited (``RLIMIT_FSIZE``) and ``/tmp`` is a
tmpfs of the offered size.

Directories are named ``workgen-act-<pid>-<activity>-<random>``: after a crash (``SIGKILL``, a
power cut) the next execution unit of the same work root finds the ones of dead processes and
removes them, their disks first, and the cgroups such processes left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..runtime.cgroup import sweep_stale as sweep_stale_cgroups
from ..runtime.leftovers import owner_gone
from ..runtime.disk import (
    MIN_SIZE, ActivityDisk, DiskUnavailable, disk_support, open_disk, sweep_stale,
)

log = logging.getLogger(__name__)

PREFIX = "workgen-act-"
VOLUMES = ("/golem/input", "/golem/output", "/golem/resource", "/golem/work")
_OWNED = re.compile(PREFIX + r"(\d+)-")
# One file per 64 KiB of storage, at most a million: room for many small files, not for
# exhausting the host's inode tables.
_BYTES_PER_FILE = 64 << 10
_MIN_FILES, _MAX_FILES = 4096, 1_000_000


class ActivityDir:
    """The host side of an activity's storage; use :func:`make_activity_dir`."""

    def __init__(self, path: Path, disk: ActivityDisk | None, extra: tuple[str, ...] = ()):
        self.path = path
        self.disk = disk
        self.extra = tuple(v for v in extra if v not in VOLUMES)
        """Volumes an image declares besides Golem's own."""

    @property
    def volumes(self) -> dict[str, Path]:
        """Container path to the host directory behind it."""
        found = {v: self.path / v.strip("/").replace("/", "_") for v in VOLUMES}
        # Numbered: an image's paths could otherwise collide once flattened.
        found.update({v: self.path / f"vol-{i}" for i, v in enumerate(self.extra)})
        return found

    @property
    def tmp(self) -> Path | None:
        """The host directory for the sandbox's ``/tmp``, on the activity's disk (if any)."""
        return self.path / "tmp" if self.disk is not None else None

    async def aclose(self) -> None:
        """Unmount the disk and remove everything; idempotent."""
        if self.disk is not None:
            disk, self.disk = self.disk, None
            await disk.aclose()
        if self.path.exists():
            await asyncio.to_thread(_remove_tree, self.path)


async def make_activity_dir(root: Path | None, activity_id: str, storage_bytes: int,
                            owner: tuple[int, int] | None,
                            extra_volumes: tuple[str, ...] = ()) -> ActivityDir:
    """Make an activity's directory under ``root`` (the system's temporary directory if
    ``None``), with its volumes (Golem's, and ``extra_volumes`` an image declares) owned by
    ``owner`` (the sandbox's user, when not ours)."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    await _sweep_once(base.resolve())
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{activity_id[:12]}-", dir=base))
    # Searchable, not listable: the sandbox's own user must reach its volumes through it.
    os.chmod(path, 0o711)
    activity = ActivityDir(path, None, extra_volumes)
    try:
        activity.disk = await _disk(path, storage_bytes)
        made = list(activity.volumes.values())
        if activity.tmp is not None:
            made.append(activity.tmp)
        for directory in made:
            directory.mkdir(mode=0o700)
            if owner is not None:
                os.chown(directory, *owner)
    except BaseException:
        await activity.aclose()
        raise
    return activity


async def _disk(path: Path, storage_bytes: int) -> ActivityDisk | None:
    reason = disk_support()
    if reason is None:
        files = min(max(storage_bytes // _BYTES_PER_FILE, _MIN_FILES), _MAX_FILES)
        try:
            # A filesystem needs room of its own; below that, each file's limit is the offer's.
            return await open_disk(path, max(storage_bytes, MIN_SIZE), inodes=files)
        except (DiskUnavailable, ValueError) as exc:
            reason = str(exc)
    _warn_unbounded(reason)
    return None


@functools.cache
def _warn_unbounded(reason: str) -> None:
    log.warning("activity storage is not bounded as a whole (%s): only each file's size is "
                "limited, and /tmp is a tmpfs of the offered size", reason)


_swept: set[Path] = set()


async def _sweep_once(base: Path) -> None:
    """Clean up after processes that died with activities open under ``base`` (once per
    process and work root: a dead owner's leftovers don't come back)."""
    if not _swept:
        # Disks of dead owners anywhere (a crashed local network's own work root is never
        # used again, so sweeping by root alone would miss them).
        with contextlib.suppress(OSError):
            await sweep_stale(None, PREFIX)
    if base in _swept:
        return
    _swept.add(base)
    with contextlib.suppress(OSError):
        await sweep_stale(base, PREFIX)
        await asyncio.to_thread(_remove_dead_dirs, base)
    with contextlib.suppress(OSError):
        await asyncio.to_thread(sweep_stale_cgroups)


def _remove_dead_dirs(base: Path) -> None:
    for entry in os.scandir(base):
        match = _OWNED.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and owner_gone(int(match.group(1))) \
                and not os.path.ismount(entry.path):
            log.info("removing %s, left by a process that is gone", entry.path)
            _remove_tree(Path(entry.path))


def _remove_tree(path: Path) -> None:
    def fix_and_retry(func: Any, p: str, exc: Any) -> None:
        # A sandbox may leave directories without write permission; we own them, so fix it.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(FileNotFoundError):
            func(p)

    shutil.rmtree(path, onerror=fix_and_retry)
