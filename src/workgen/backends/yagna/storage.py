"""Storage for the yagna backend: files travel by GFTP through the requestor's own daemon.

What a script sends is published on the requestor node's GSB as ``gftp://<node>/<hash>``; what
it downloads is uploaded by the provider's execution unit into a receiver registered there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ...errors import BackendError, DownloadLimitExceeded
from ...gftp import (
    GftpError, GftpLimitExceeded, Published, Receiver, file_hash, open_upload, publish,
)
from ...gsb import GsbClient, GsbError


class _Source:
    def __init__(self, published: Published):
        self.url = published.url
        self._published = published
        self._path_owned: Path | None = None

    async def aclose(self) -> None:
        with contextlib.suppress(GsbError):
            await self._published.aclose()
        if self._path_owned is not None:
            self._path_owned.unlink(missing_ok=True)


class _Destination:
    def __init__(self, receiver: Receiver, path: Path):
        self.url = receiver.url
        self._receiver = receiver
        self._path = path

    async def _received(self) -> int:
        try:
            return await self._receiver.wait()
        except GftpLimitExceeded as exc:
            raise DownloadLimitExceeded(str(exc), limit=-1, size=-1) from exc
        except GftpError as exc:
            raise BackendError(f"the download failed: {exc}") from exc

    async def read_bytes(self, limit: int | None = None) -> bytes:
        size = await self._received()
        if limit is not None and size > limit:
            raise DownloadLimitExceeded(f"the download is {size} bytes, over the limit of {limit}",
                                        limit=limit, size=size)
        return self._path.read_bytes()

    async def save_to(self, path: Path) -> None:
        await self._received()
        shutil.move(self._path, path)

    async def aclose(self) -> None:
        with contextlib.suppress(GsbError):
            await self._receiver.aclose()
        self._path.unlink(missing_ok=True)


class _Shared:
    """One user's handle on a published file that several scripts may send at once."""

    def __init__(self, storage: GftpStorage, digest: str, source: _Source):
        self._storage = storage
        self._digest = digest
        self._source = source
        self.url = source.url
        self.users = 0

    async def aclose(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._storage._published.pop(self._digest, None)
            await self._source.aclose()


class GftpStorage:
    def __init__(self, bus: GsbClient, node_id: str, directory: Path):
        self._bus = bus
        self._node_id = node_id
        self._dir = directory
        self._published: dict[str, _Shared] = {}
        self._publishing = asyncio.Lock()

    async def publish_file(self, path: Path) -> _Shared:
        # A file is served at its content hash, once: scripts that send the same file share it.
        digest = await asyncio.to_thread(file_hash, path)
        async with self._publishing:  # two scripts sending the same file at once share it
            shared = self._published.get(digest)
            if shared is None:
                try:
                    published = await publish(self._bus, self._node_id, path)
                except (GsbError, GftpError) as exc:
                    raise BackendError(f"cannot publish {path} over GFTP: {exc}") from exc
                shared = self._published[digest] = _Shared(self, digest, _Source(published))
            shared.users += 1
        return shared

    async def publish_bytes(self, data: bytes) -> _Shared:
        fd, name = tempfile.mkstemp(dir=self._dir, prefix="send-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        temp = Path(name)
        try:
            shared = await self.publish_file(temp)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if shared._source._path_owned is None and shared.users == 1:
            shared._source._path_owned = temp  # ours: removed when the last user is done
        else:
            temp.unlink(missing_ok=True)  # the same content is already served from elsewhere
        return shared

    async def new_destination(self, name: str) -> _Destination:
        fd, path = tempfile.mkstemp(dir=self._dir, prefix="recv-")
        os.close(fd)
        try:
            receiver = await open_upload(self._bus, self._node_id, Path(path))
        except (GsbError, GftpError) as exc:
            Path(path).unlink(missing_ok=True)
            raise BackendError(f"cannot receive over GFTP: {exc}") from exc
        return _Destination(receiver, Path(path))
