"""The local image store: GVMI files by hash, and tags naming them.

Layout of the store's directory (``$WORKGEN_IMAGES``, else ``~/.local/share/workgen/images``)::

    blobs/<sha3-224>.gvmi   one file per image, named by its hash
    tags.json               {"owner/name:version": "<sha3-224>", ...}

Adding copies the file in under a temporary name and renames it once its hash is known, so a
reader never sees half an image; tags are rewritten whole (write, then rename) under a lock, so
two writers in two processes don't lose each other's tags.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .gvmi import GvmiInfo, read_gvmi, sha3_224_file

STORE_ENV = "WORKGEN_IMAGES"
HASH_RE = re.compile(r"[0-9a-f]{56}")
TAG_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9._-]+")


class StoreError(Exception):
    """A store operation that cannot be done (unknown image, bad tag, unreadable file)."""


@dataclass(frozen=True)
class StoredImage:
    hash: str
    path: Path
    size: int
    tags: tuple[str, ...]


def default_store_dir() -> Path:
    configured = os.environ.get(STORE_ENV)
    if configured:
        return Path(configured)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "workgen" / "images"


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise StoreError(f"an image tag reads 'name:version' or 'owner/name:version', got {tag!r}")
    return tag


class ImageFiles:
    """A directory of GVMI images. Safe to use from several processes at once."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_store_dir()

    @property
    def _blobs(self) -> Path:
        return self.root / "blobs"

    def path_of(self, image_hash: str) -> Path | None:
        """The file of the image ``image_hash``, or ``None`` if the store lacks it."""
        if not HASH_RE.fullmatch(image_hash):
            return None
        path = self._blobs / f"{image_hash}.gvmi"
        return path if path.is_file() else None

    def resolve(self, name: str) -> str | None:
        """The hash a tag or hash names here, or ``None``."""
        if HASH_RE.fullmatch(name):
            return name if self.path_of(name) is not None else None
        found = self._read_tags().get(name)
        return found if found is not None and self.path_of(found) is not None else None

    def add(self, source: Path, tags: tuple[str, ...] | list[str] = (), *,
            move: bool = False) -> tuple[str, GvmiInfo]:
        """Store the GVMI file ``source`` (checked first) and tag it; returns its hash."""
        for tag in tags:
            check_tag(tag)
        source = Path(source)
        try:
            info = read_gvmi(source)
        except OSError as exc:
            raise StoreError(f"cannot read {source}: {exc.strerror or exc}") from None
        self._blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".adding-", dir=self._blobs)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if move:
                os.replace(source, tmp)
            else:
                shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o644)
            image_hash = sha3_224_file(tmp)
            os.replace(tmp, self._blobs / f"{image_hash}.gvmi")
        finally:
            tmp.unlink(missing_ok=True)
        if tags:
            with self._tags_locked() as current:
                current.update({tag: image_hash for tag in tags})
        return image_hash, info

    def tag(self, name: str, tag: str) -> str:
        image_hash = self.resolve(name)
        if image_hash is None:
            raise StoreError(f"no image {name!r} in the store at {self.root}")
        with self._tags_locked() as current:
            current[check_tag(tag)] = image_hash
        return image_hash

    def remove(self, name: str) -> str:
        """Remove a tag, or (given a hash) an image and every tag naming it."""
        if HASH_RE.fullmatch(name):
            path = self.path_of(name)
            if path is None:
                raise StoreError(f"no image {name} in the store at {self.root}")
            with self._tags_locked() as current:
                for tag in [t for t, h in current.items() if h == name]:
                    del current[tag]
                path.unlink()
            return name
        with self._tags_locked() as current:
            if name not in current:
                raise StoreError(f"no tag {name!r} in the store at {self.root}")
            return current.pop(name)

    def images(self) -> list[StoredImage]:
        tags = self._read_tags()
        found = []
        if self._blobs.is_dir():
            for path in sorted(self._blobs.glob("*.gvmi")):
                image_hash = path.stem
                if HASH_RE.fullmatch(image_hash):
                    names = tuple(sorted(t for t, h in tags.items() if h == image_hash))
                    found.append(StoredImage(image_hash, path, path.stat().st_size, names))
        return found

    def tags(self) -> dict[str, str]:
        return {t: h for t, h in self._read_tags().items() if self.path_of(h) is not None}

    def _read_tags(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / "tags.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"the store's tags.json at {self.root} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"the store's tags.json at {self.root} is not an object")
        return {str(k): str(v) for k, v in data.items()}

    @contextlib.contextmanager
    def _tags_locked(self) -> Iterator[dict[str, str]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read_tags()
            yield current
            tmp = self.root / f".tags-{os.getpid()}.json"
            tmp.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.root / "tags.json")
