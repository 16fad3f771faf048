"""Storage for the local network: files move by handles of this storage's own.

The local network's providers run in this process, so their execution units could read any
file of the host; they must read only what the requestor published. Each published file and
each upload destination gets a random handle, ``local://<handle>``, and the providers' ``transfer``
reaches this storage through :attr:`LocalStorage.scheme`, which knows those handles and nothing
else: no URL a batch can hold names another host path. An upload lands in a file of the
storage's private temporary directory, made on first use and removed, with everything in it,
by :meth:`LocalStorage.aclose`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from ..base import Destination, Source
from ...errors import BackendError, DownloadLimitExceeded

log = logging.getLogger(__name__)


SCHEME = "local"


class FileSource:
    """A published file; ``owned`` ones (from :meth:`LocalStorage.publish_bytes`) are deleted."""

    def __init__(self, storage: LocalStorage, path: Path, *, owned: bool):
        self.path = path
        self.url = storage._register(self)
        self._storage = storage
        self._owned = owned

    async def aclose(self) -> None:
        self._storage._unregister(self.url)
        if self._owned:
            self.path.unlink(missing_ok=True)


class FileDestination:
    """A file that a provider's ``transfer`` writes to; read it once the batch is done."""

    def __init__(self, storage: LocalStorage, path: Path):
        self.path = path
        self.url = storage._register(self)
        self._storage = storage

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            raise BackendError(f"nothing was uploaded to {self.url}") from None

    async def read_bytes(self, limit: int | None = None) -> bytes:
        size = self._size()
        # Checked before reading, so an oversized upload is never loaded into memory.
        if limit is not None and size > limit:
            raise DownloadLimitExceeded(
                f"the upload to {self.url} is {size} bytes, more than the limit of {limit}",
                limit=limit, size=size,
            )
        data = await asyncio.to_thread(self.path.read_bytes)
        if limit is not None and len(data) > limit:  # it grew after the check
            raise DownloadLimitExceeded(
                f"the upload to {self.url} is {len(data)} bytes, more than the limit of {limit}",
                limit=limit, size=len(data),
            )
        return data

    async def save_to(self, path: Path) -> None:
        """Copy the upload to ``path`` (its directory must exist)."""
        self._size()
        await asyncio.to_thread(shutil.copyfile, self.path, path)

    async def aclose(self) -> None:
        self._storage._unregister(self.url)
        self.path.unlink(missing_ok=True)


class LocalStorage:
    """Handle-named storage in a private temporary directory under ``base`` (or the system's)."""

    def __init__(self, base: Path | None = None):
        self._base = base
        self._dir: Path | None = None
        self._closed = False
        self._entries: dict[str, FileSource | FileDestination] = {}
        self.scheme = _HandleScheme(self)
        """The providers' transport for ``local://`` URLs (a ``RemoteScheme``)."""

    def _register(self, entry: FileSource | FileDestination) -> str:
        url = f"{SCHEME}://{secrets.token_hex(16)}"
        self._entries[url] = entry
        return url

    def _unregister(self, url: str) -> None:
        self._entries.pop(url, None)

    def _lookup(self, url: str, kind: type[FileSource] | type[FileDestination]) -> Path:
        entry = self._entries.get(url)
        if not isinstance(entry, kind):
            what = "published file" if kind is FileSource else "upload destination"
            raise BackendError(f"{url!r} is no {what} of this requestor's storage")
        return entry.path

    @property
    def directory(self) -> Path | None:
        """The private directory, once made (for inspection)."""
        return self._dir

    def _private_dir(self) -> Path:
        if self._closed:
            raise RuntimeError("the local network's storage is closed")
        if self._dir is None:
            # 0o700 (mkdtemp's mode): only this process reads and writes here; transfers run
            # in this process, not in the sandboxes.
            self._dir = Path(tempfile.mkdtemp(prefix="workgen-storage-", dir=self._base))
        return self._dir

    def _new_path(self, name: str) -> Path:
        safe = Path(name).name or "file"
        return self._private_dir() / f"{secrets.token_hex(8)}-{safe}"

    async def publish_file(self, path: Path) -> Source:
        """Publish an existing file as is; the provider reads it directly."""
        if self._closed:
            raise RuntimeError("the local network's storage is closed")
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"cannot publish {path}: no such file")
        if not path.is_file():
            raise ValueError(f"cannot publish {path}: not a regular file")
        return FileSource(self, path, owned=False)

    async def publish_bytes(self, data: bytes) -> Source:
        path = self._new_path("data")
        await asyncio.to_thread(path.write_bytes, bytes(data))
        return FileSource(self, path, owned=True)

    async def new_destination(self, name: str) -> Destination:
        return FileDestination(self, self._new_path(name))

    async def aclose(self) -> None:
        """Remove the private directory and every file in it. Idempotent."""
        self._closed = True
        self._entries.clear()
        if self._dir is not None:
            directory, self._dir = self._dir, None
            await asyncio.to_thread(shutil.rmtree, directory, True)
            if os.path.exists(directory):
                log.warning("could not remove the storage directory %s", directory)


class _HandleScheme:
    """What the providers' execution units reach this storage by: handles, never paths."""

    def __init__(self, storage: LocalStorage):
        self._storage = storage

    async def fetch(self, url: str, fd: int) -> int:
        path = self._storage._lookup(url, FileSource)
        return await asyncio.to_thread(_copy_into, path, fd)

    async def push(self, fd: int, url: str) -> int:
        path = self._storage._lookup(url, FileDestination)
        return await asyncio.to_thread(_copy_out, fd, path)


_CHUNK = 1 << 20


def _copy_into(path: Path, fd: int) -> int:
    total = 0
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            total += len(chunk)
    return total


def _copy_out(fd: int, path: Path) -> int:
    total = 0
    # The destination's name is ours (random, in our private directory), never a requestor's.
    with open(path, "wb") as out:
        while chunk := os.read(fd, _CHUNK):
            out.write(chunk)
            total += len(chunk)
    return total
