"""Per-activity disks, for real: loop-mounted images bound bytes and files.

The mount tests need root, loop devices and mkfs.ext4 (they skip, saying why, otherwise); the
argument checks run anywhere.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from workgen.provider.runtime.disk import (
    MIN_SIZE, ActivityDisk, DiskUnavailable, disk_support, open_disk, sweep_stale,
)

MiB = 1 << 20
T = TypeVar("T")

needs_disk = pytest.mark.skipif(disk_support() is not None,
                                reason=f"no activity disks here: {disk_support()}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def mounted(path: Path) -> bool:
    escaped = str(path.resolve()).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == escaped for line in f)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no zombie answers for it
    return proc.pid


@pytest.fixture
def act(tmp_path: Path) -> Path:
    d = tmp_path / "workgen-act-1"
    d.mkdir()
    return d


def close(disk: ActivityDisk) -> None:
    run(disk.aclose())
    assert not mounted(disk.directory)


@pytest.mark.parametrize("size", [0, -1, 1.5, "16M", True, None, MIN_SIZE - 1, MiB])
def test_nonsense_sizes_are_rejected(act: Path, size: Any) -> None:
    with pytest.raises(ValueError):
        run(open_disk(act, size))
    assert list(act.parent.iterdir()) == [act]


@pytest.mark.parametrize("inodes", [0, -5, 2.0, "100"])
def test_nonsense_inode_counts_are_rejected(act: Path, inodes: Any) -> None:
    with pytest.raises(ValueError):
        run(open_disk(act, 16 * MiB, inodes=inodes))


def test_directory_must_be_empty(act: Path) -> None:
    (act / "x").touch()
    with pytest.raises(ValueError, match="empty"):
        run(open_disk(act, 16 * MiB))


@needs_disk
def test_new_disk_is_sparse_private_and_empty(act: Path) -> None:
    disk = run(open_disk(act, 1 << 30))
    try:
        st = disk.image.stat()
        assert disk.image == Path(f"{act}.{os.getpid()}.img")
        assert st.st_size == 1 << 30
        assert st.st_blocks * 512 < 16 * MiB, "mkfs wrote more than metadata"
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert mounted(act)
        assert stat.S_IMODE(act.stat().st_mode) == 0o711
        assert list(act.iterdir()) == []
        assert disk.inodes == 65536  # 1 GiB / 16 KiB
        assert "1.0 GiB" in disk.description and "65536 files" in disk.description
        used_bytes, used_files = disk.usage()
        assert 0 < used_bytes < 64 * MiB and 0 < used_files < 20
    finally:
        close(disk)


@needs_disk
def test_writing_past_the_size_fails_with_enospc(act: Path) -> None:
    disk = run(open_disk(act, 16 * MiB))
    written = 0
    try:
        chunk = b"x" * MiB
        with pytest.raises(OSError) as e:
            fd = os.open(act / "big", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while written < 64 * MiB:
                    written += os.write(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
        assert e.value.errno == errno.ENOSPC
        assert 12 * MiB <= written <= 16 * MiB
        assert disk.image.stat().st_size == 16 * MiB
        assert disk.usage()[0] > 12 * MiB
    finally:
        close(disk)


@needs_disk
def test_creating_more_files_than_inodes_fails_with_enospc(act: Path) -> None:
    disk = run(open_disk(act, 16 * MiB, inodes=200))
    try:
        assert 200 <= disk.inodes < 256  # mkfs fills whole inode table blocks
        made = 0
        with pytest.raises(OSError) as e:
            while made < 1000:
                (act / f"f{made}").touch()
                made += 1
        assert e.value.errno == errno.ENOSPC
        assert disk.inodes - 20 <= made < disk.inodes  # the first inodes are the fs's own
        assert disk.usage()[1] == disk.inodes
    finally:
        close(disk)


@needs_disk
def test_aclose_unmounts_removes_the_image_and_is_idempotent(act: Path) -> None:
    disk = run(open_disk(act, 16 * MiB))
    try:
        (act / "data").write_bytes(b"y" * MiB)
        run(disk.aclose())
        assert not mounted(act)
        assert not disk.image.exists()
        assert list(act.iterdir()) == []  # what was written went with the image
        assert disk.usage() == (0, 0)
        run(disk.aclose())

        async def twice() -> None:  # concurrent calls both wait for the one close
            again = await open_disk(act, 16 * MiB)
            await asyncio.gather(again.aclose(), again.aclose())
            assert not mounted(act) and not again.image.exists()
        run(twice())
    finally:
        close(disk)


@needs_disk
def test_aclose_of_a_busy_disk_detaches_it_lazily(act: Path) -> None:
    disk = run(open_disk(act, 16 * MiB))
    fd = os.open(act / "held", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        run(disk.aclose())
        assert time.monotonic() - started < 5
        assert not mounted(act)
        assert not disk.image.exists()
        os.write(fd, b"still writable through the open file")
    finally:
        os.close(fd)
        close(disk)


@needs_disk
def test_failures_undo_what_was_done(act: Path) -> None:
    with pytest.raises(DiskUnavailable, match="too big"):  # mkfs's own words
        run(open_disk(act, 16 * MiB, inodes=10_000_000))
    with pytest.raises(DiskUnavailable, match="cannot size"):
        run(open_disk(act, 1 << 62))
    assert not mounted(act)
    assert list(act.parent.iterdir()) == [act]


@needs_disk
def test_sweep_stale_cleans_disks_of_dead_owners_only(tmp_path: Path) -> None:
    # A space in the name: mountinfo escapes it.
    dead_dir, live_dir, other_dir = (tmp_path / n for n in ("workgen-act-a 1", "workgen-act-b", "x"))
    for d in (dead_dir, live_dir, other_dir):
        d.mkdir()
    pid = dead_pid()
    dead = run(open_disk(dead_dir, 16 * MiB, owner_pid=pid))
    live = run(open_disk(live_dir, 16 * MiB))
    other = run(open_disk(other_dir, 16 * MiB, owner_pid=pid))  # not ours by its name
    orphan = tmp_path / f"workgen-act-c.{pid}.img"
    orphan.write_bytes(b"")
    try:
        assert dead.image.name == f"workgen-act-a 1.{pid}.img"
        assert run(sweep_stale(tmp_path)) == 2
        assert not mounted(dead_dir) and not dead.image.exists() and not orphan.exists()
        assert mounted(live_dir) and live.image.exists()
        assert mounted(other_dir) and other.image.exists()
        assert run(sweep_stale(tmp_path)) == 0
    finally:
        for disk in (dead, live, other):
            close(disk)


def test_sweep_anywhere_finds_disks_of_dead_owners_under_any_root(tmp_path: Path) -> None:
    # A crashed local network's work root is never used again: its disks must be found anyway.
    dead_dir = tmp_path / "workgen-local-x" / "activities" / "workgen-act-gone"
    live_dir = tmp_path / "workgen-local-y" / "activities" / "workgen-act-here"
    for d in (dead_dir, live_dir):
        d.mkdir(parents=True)
    dead = run(open_disk(dead_dir, 16 * MiB, owner_pid=dead_pid()))
    live = run(open_disk(live_dir, 16 * MiB))
    try:
        assert run(sweep_stale(None)) >= 1
        assert not mounted(dead_dir) and not dead.image.exists() and not dead_dir.exists()
        assert mounted(live_dir) and live.image.exists()
    finally:
        for disk in (dead, live):
            close(disk)
