"""Unpacked images, by hash: each image is unpacked once and shared by the activities using it.

Layout under the cache's root::

    entries/<hash>/rootfs      the image's root filesystem (read-only to activities)
    entries/<hash>/image.json  what it holds (written last: its presence means "ready")
    locks/<hash>.prep          held while one process fetches and unpacks the image
    locks/<hash>.use           held shared by every activity using it; eviction needs it alone
    work/                      downloads and unpacking in progress

Two activities (in one process or in two) deploying one image wait for one preparation, then
share it. The cache is bounded: after an image is added, the least recently used images no
activity holds are removed until the rest fit.

An image is a stranger's archive. It is unpacked by ``unsquashfs`` in a sandbox that sees only
the image and the directory being filled, with no capabilities (so no device files can be made),
then checked from the outside without following links: device files, pipes and sockets are
removed, setuid and setgid bits cleared, everything owned by the provider. Its unpacked size is
capped before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ...images.gvmi import GvmiError, ImageMetadata, read_gvmi
from ..runtime.sandbox import find_bwrap, host_system_binds, sandbox_user

log = logging.getLogger(__name__)

DEFAULT_MAX_CACHE_BYTES = 20 << 30
MAX_FILES = 1_000_000
_HASH_RE = re.compile(r"[0-9a-f]{56}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128}")
_UNPACK_TIMEOUT = 1800.0


class ImageUnavailable(Exception):
    """An image that cannot be made ready; the message is meant for the requestor."""


@dataclass(frozen=True)
class PreparedImage:
    hash: str
    rootfs: Path
    metadata: ImageMetadata
    unpacked_bytes: int


CACHE_ENV = "WORKGEN_IMAGE_CACHE"


def default_cache_dir() -> Path:
    """``$WORKGEN_IMAGE_CACHE``, else ``/var/cache/workgen/images`` as root, else
    ``~/.cache/workgen/images``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    # Activities run as other users when the provider is root: they must reach the root
    # filesystems, which /root (mode 0700) would hide.
    if os.geteuid() == 0:
        return Path("/var/cache/workgen/images")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workgen" / "images"


class ImageLease:
    """An activity's hold on a prepared image: the cache won't remove it until released."""

    def __init__(self, image: PreparedImage, fd: int):
        self.image = image
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops the shared lock
            self._fd = -1


Obtain = Callable[[Path, Callable[[str], None]], Awaitable[Path]]
"""Puts the image's GVMI file in the work directory it is given (or finds it elsewhere) and
returns its path; the second argument reports progress."""


class ImageCache:
    def __init__(self, root: Path | None = None, *, max_bytes: int = DEFAULT_MAX_CACHE_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"the image cache's size must be positive, got {max_bytes}")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self._locks: dict[str, asyncio.Lock] = {}

    def _dirs(self) -> tuple[Path, Path, Path]:
        entries, locks, work = self.root / "entries", self.root / "locks", self.root / "work"
        for path in (self.root, entries, locks, work):
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                continue  # someone's directory (or ours from before): its mode is theirs
            # Readable by sandbox users, whatever the umask.
            os.chmod(path, 0o755)
        return entries, locks, work

    def cached(self) -> dict[str, int]:
        """Ready images and their unpacked sizes."""
        found = {}
        for info in (self.root / "entries").glob("*/image.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                found[info.parent.name] = int(json.loads(info.read_text())["bytes"])
        return found

    async def acquire(self, image_hash: str, obtain: Obtain,
                      note: Callable[[str], None] = lambda _: None) -> ImageLease:
        """The image ``image_hash``, prepared (with ``obtain`` if not cached) and held."""
        if not _HASH_RE.fullmatch(image_hash):
            raise ValueError(f"an image hash is lowercase hex digits, got {image_hash!r}")
        entries, locks, work = await asyncio.to_thread(self._dirs)
        lock = self._locks.setdefault(image_hash, asyncio.Lock())
        async with lock:
            prep = await _wait_for_lock(locks / f"{image_hash}.prep", fcntl.LOCK_EX)
            try:
                entry = entries / image_hash
                image = await asyncio.to_thread(_read_entry, entry, image_hash)
                if image is None:
                    image = await self._prepare(image_hash, entry, work, obtain, note)
                    added = True
                else:
                    note(f"image {image_hash[:12]} is cached ({_human(image.unpacked_bytes)})")
                    added = False
                use = await _wait_for_lock(locks / f"{image_hash}.use", fcntl.LOCK_SH)
                with contextlib.suppress(OSError):
                    os.utime(entry / "image.json")
            finally:
                os.close(prep)
        if added:
            await asyncio.to_thread(self.evict)
        return ImageLease(image, use)

    async def _prepare(self, image_hash: str, entry: Path, work: Path, obtain: Obtain,
                       note: Callable[[str], None]) -> PreparedImage:
        # We hold this image's preparation lock: any scratch of it left here is a dead
        # process's.
        for stale in work.glob(f"{image_hash}-*"):
            await asyncio.to_thread(_remove_tree, stale)
        scratch = work / f"{image_hash}-{secrets.token_hex(4)}"
        scratch.mkdir(mode=0o755)
        try:
            gvmi = await obtain(scratch, note)
            owned = gvmi.parent == scratch
            try:
                info = await asyncio.to_thread(read_gvmi, gvmi)
            except GvmiError as exc:
                raise ImageUnavailable(f"image {image_hash[:12]} is not a valid GVMI image: "
                                       f"{exc}") from None
            listed = await asyncio.to_thread(_listing, gvmi)
            if listed.bytes > self.max_bytes:
                raise ImageUnavailable(
                    f"image {image_hash[:12]} unpacks to {_human(listed.bytes)}, more than this "
                    f"provider's image cache holds ({_human(self.max_bytes)})")
            if listed.files > MAX_FILES:
                raise ImageUnavailable(f"image {image_hash[:12]} has {listed.files} files, over "
                                       f"the {MAX_FILES} this provider unpacks")
            started = time.monotonic()
            rootfs = scratch / "rootfs"
            await asyncio.to_thread(_unsquash, gvmi, scratch, listed.skip)
            size, removed = await asyncio.to_thread(_sanitize, rootfs)
            if removed or listed.skip:
                note(f"left out {removed + len(listed.skip)} special file(s) (devices, pipes, "
                     "sockets): the sandbox provides its own /dev")
            note(f"unpacked image {image_hash[:12]}: {_human(size)} in "
                 f"{time.monotonic() - started:.1f}s")
            record = {"hash": image_hash, "bytes": size, "metadata": info.metadata.to_json()}
            (scratch / "image.json.tmp").write_text(json.dumps(record))
            if owned:
                gvmi.unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(scratch, entry)
            os.replace(entry / "image.json.tmp", entry / "image.json")
        except BaseException:
            await asyncio.to_thread(_remove_tree, scratch)
            raise
        return PreparedImage(image_hash, entry / "rootfs", info.metadata, size)

    def evict(self) -> list[str]:
        """Remove least recently used images no activity holds until the cache fits its size;
        returns the hashes removed."""
        entries, locks, _ = self._dirs()
        ready = []
        for info in entries.glob("*/image.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                ready.append((info.stat().st_mtime, info.parent.name,
                              int(json.loads(info.read_text())["bytes"])))
        total = sum(size for _, _, size in ready)
        removed = []
        for _, image_hash, size in sorted(ready):
            if total <= self.max_bytes:
                break
            try:
                prep = _lock_file(locks / f"{image_hash}.prep", fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                use = _lock_file(locks / f"{image_hash}.use", fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(prep)
                continue
            try:
                doomed = entries / f".evicted-{image_hash}-{secrets.token_hex(4)}"
                os.replace(entries / image_hash, doomed)
                _remove_tree(doomed)
                total -= size
                removed.append(image_hash)
                log.info("image cache: evicted %s (%s)", image_hash[:12], _human(size))
            finally:
                os.close(use)
                os.close(prep)
        return removed


async def _wait_for_lock(path: Path, how: int) -> int:
    """``_lock_file`` in a thread (another process may hold the lock for a whole download);
    if we are cancelled meanwhile, the lock is let go as soon as the thread gets it."""
    pending = asyncio.get_running_loop().run_in_executor(None, _lock_file, path, how)
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        def let_go(done: asyncio.Future[int]) -> None:
            if not done.cancelled() and done.exception() is None:
                os.close(done.result())

        pending.add_done_callback(let_go)
        raise


def _lock_file(path: Path, how: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_entry(entry: Path, image_hash: str) -> PreparedImage | None:
    try:
        record = json.loads((entry / "image.json").read_text())
        metadata = ImageMetadata.from_json(record["metadata"])
        return PreparedImage(image_hash, entry / "rootfs", metadata, int(record["bytes"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("image cache: entry %s is unreadable (%s); preparing it again", entry, exc)
        return None


@dataclass(frozen=True)
class _Listing:
    bytes: int
    files: int
    skip: tuple[str, ...]
    """Special files (devices, pipes, sockets), not to be unpacked."""


def _unsquashfs() -> str:
    path = shutil.which("unsquashfs")
    if path is None:
        raise ImageUnavailable("this provider cannot unpack images: unsquashfs is not installed "
                               "(apt-get install squashfs-tools)")
    return path


def _listing(gvmi: Path) -> _Listing:
    """Sizes and special files, from ``unsquashfs -lln`` (run in the unpacking sandbox)."""
    done = _sandboxed([_unsquashfs(), "-lln", "-no-progress", "/image"], gvmi, None)
    total = files = 0
    skip = []
    for line in done.splitlines():
        mode = line[:1]
        # A device's "major, minor" takes one field more than a size does.
        fields = line.split(None, 6 if mode in ("c", "b") else 5)
        if len(fields) < 6 or not fields[-1].startswith("squashfs-root"):
            continue
        files += 1
        name = fields[-1].removeprefix("squashfs-root").lstrip("/")
        if mode == "-" and fields[2].isdigit():
            total += int(fields[2])
        elif mode in ("c", "b", "p", "s") and name:
            skip.append(name)
    return _Listing(total, files, tuple(skip))


def _unsquash(gvmi: Path, scratch: Path, skip: tuple[str, ...]) -> None:
    argv = [_unsquashfs(), "-d", "/out/rootfs", "-no-xattrs", "-no-progress", "-quiet", "-p", "1"]
    if skip:
        (scratch / "skip").write_text("".join(f"{name}\n" for name in skip if "\n" not in name))
        argv += ["-no-wildcards", "-exclude-file", "/out/skip"]
    _sandboxed([*argv, "/image"], gvmi, scratch)


def _sandboxed(argv: list[str], gvmi: Path, out: Path | None) -> str:
    """Run ``argv`` in a sandbox seeing the host's programs, the image at ``/image`` and (if
    given) ``out`` at ``/out``, as a user of its own when we are root; its stdout."""
    user = sandbox_user()
    wrapper = [find_bwrap(), "--unshare-all", "--die-with-parent", "--new-session",
               "--cap-drop", "ALL", "--tmpfs", "/", *host_system_binds()]
    fds = []
    try:
        # The image comes in as standard input: reopened through /proc, it needs no path the
        # sandbox's user could not walk.
        image_fd = os.open(gvmi, os.O_RDONLY | os.O_CLOEXEC)
        fds.append(image_fd)
        wrapper += ["--proc", "/proc", "--dev", "/dev", "--symlink", "/proc/self/fd/0", "/image"]
        if out is not None:
            if user is not None:
                os.chown(out, *user)
            out_fd = os.open(out, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(out_fd)
            wrapper += ["--bind-fd", str(out_fd), "/out"]
        wrapper += ["--remount-ro", "/", "--chdir", "/"]
        done = subprocess.run(
            [*wrapper, *argv], stdin=image_fd, capture_output=True, text=True,
            errors="replace", pass_fds=fds[1:], user=user[0] if user else None,
            group=user[1] if user else None, extra_groups=[] if user else None,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=_UNPACK_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ImageUnavailable(f"unpacking the image took over {_UNPACK_TIMEOUT:.0f}s") from None
    finally:
        for fd in fds:
            os.close(fd)
        if out is not None and user is not None:
            os.chown(out, os.geteuid(), os.getegid())
    if done.returncode != 0:
        tail = "; ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise ImageUnavailable(f"the image's filesystem cannot be unpacked (unsquashfs exit "
                               f"{done.returncode}): {tail}")
    return done.stdout


def _sanitize(rootfs: Path) -> tuple[int, int]:
    """Make an unpacked tree safe to share: only directories, regular files and symbolic links,
    no setuid or setgid bits, owned by us, readable; never following a link. Returns
    (bytes, special files removed)."""
    if not rootfs.is_dir() or rootfs.is_symlink():
        raise ImageUnavailable("the image's filesystem has no root directory")
    uid, gid = os.geteuid(), os.getegid()
    total = removed = 0
    for directory, subdirs, names in os.walk(rootfs, followlinks=False):
        os.lchown(directory, uid, gid)
        os.chmod(directory, (os.lstat(directory).st_mode & 0o777) | 0o700)
        for name in [*subdirs, *names]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            os.lchown(path, uid, gid)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                os.unlink(path)
                removed += 1
                continue
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, st.st_mode & 0o777)
            total += st.st_blocks * 512
    return total, removed


def _remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"
