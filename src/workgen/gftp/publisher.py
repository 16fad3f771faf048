"""GFTP's serving side: publish a file for download, receive a file by upload.

The side that owns a file -- usually the requestor -- serves it under ``/public/gftp/<name>``
on its own node's GSB: :func:`publish` answers ``GetMetadata`` and ``GetChunk`` for a file named
by its content hash, :func:`open_upload` takes ``UploadChunk``s and ``UploadFinished`` for a
random name. The messages, names and URLs are described in :mod:`workgen.gftp.transfer`, where
the side that moves the data lives.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import secrets
import stat
import string
from pathlib import Path
from types import TracebackType
from typing import Any

from ..gsb import GsbClient, GsbConnectionError, GsbHandlerError, GsbRegistrationError
from .transfer import (
    GET_CHUNK, GET_METADATA, MAX_CHUNK_SIZE, SERVICE, UPLOAD_CHUNK, UPLOAD_FINISHED, GftpError,
    GftpIntegrityError, GftpLimitExceeded, _check_node_id, _hash_fd, _open_for_writing, _pread_exact,
    _pwrite_all,
    _SharedFd, gftp_url,
)

logger = logging.getLogger(__name__)

_UPLOAD_ID_LENGTH = 65  # as yagna's open_for_upload
_UPLOAD_ID_ALPHABET = string.ascii_letters + string.digits


def _uint(payload: Any, key: str) -> int:
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GsbHandlerError({"InternalError": f"bad request: {key!r} must be an unsigned int"})
    return value


def _unknown(message: str) -> GsbHandlerError:
    return GsbHandlerError({"InternalError": f"unknown GFTP message {message!r}"})


async def _unregister(bus: GsbClient, prefix: str) -> None:
    try:
        await bus.unregister(prefix)
    except (GsbConnectionError, GsbRegistrationError) as exc:
        # The router drops a connection's registrations when it goes: nothing is left to undo.
        logger.debug("unregistering %s: %s", prefix, exc)


# --- publishing a file for download -------------------------------------------------------

class Published:
    """A file served for download at :attr:`url` until :meth:`aclose`; made by :func:`publish`."""

    def __init__(self, bus: GsbClient, url: str, name: str, path: Path, size: int,
                 file: _SharedFd) -> None:
        self.url = url
        """``gftp://<node_id>/<sha3-256 of the content>``."""
        self.hash = name
        self.path = path
        self.size = size
        self._bus = bus
        self._file = file
        self._closed = False

    async def aclose(self) -> None:
        """Stops serving the file and closes it; idempotent."""
        if self._closed:
            return
        self._closed = True
        await _unregister(self._bus, f"{SERVICE}/{self.hash}")
        await self._file.aclose()
        logger.debug("unpublished %s", self.url)

    async def __aenter__(self) -> Published:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _handle(self, message: str, caller: str, payload: Any) -> dict[str, Any]:
        if message == GET_METADATA:
            return {"fileSize": self.size}
        if message != GET_CHUNK:
            raise _unknown(message)
        offset, size = _uint(payload, "offset"), _uint(payload, "size")
        if offset > self.size:
            raise GsbHandlerError({"ReadError": f"offset {offset} is beyond the end of the file "
                                                f"({self.size} bytes)"})
        # yagna answers a shorter chunk at the end of the file; we also cap what one call gets.
        size = min(size, self.size - offset, MAX_CHUNK_SIZE)
        try:
            content = await self._file.run(lambda fd: _pread_exact(fd, size, offset))
        except (OSError, GftpError) as exc:
            raise GsbHandlerError({"ReadError": f"cannot read {size} bytes at {offset}: {exc}"}) from exc
        return {"offset": offset, "content": content}


async def publish(bus: GsbClient, node_id: str, path: Path) -> Published:
    """Serves ``path`` on ``bus`` as ``gftp://<node_id>/<hash>`` until ``aclose()``.

    ``node_id`` is the identity of the node whose GSB ``bus`` is connected to (remote callers
    address that node). The file is hashed first and stays open: what is served is the file
    as it was when published, even if it is later replaced or removed; if it is modified in
    place, downloaders find the hash wrong. Raises :class:`GftpError` if the file cannot be
    read or the same content is already published on this node (publish it once and share
    the :class:`Published`).
    """
    node_id = _check_node_id(node_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise GftpError(f"cannot publish {path}: {exc.strerror}") from exc
    file = _SharedFd(fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GftpError(f"cannot publish {path}: not a regular file")
        try:
            name = await file.run(_hash_fd)
        except OSError as exc:
            raise GftpError(f"cannot publish {path}: {exc.strerror}") from exc
        size = os.fstat(fd).st_size
        published = Published(bus, gftp_url(node_id, name), name, path, size, file)
        try:
            await bus.register(f"{SERVICE}/{name}", published._handle)
        except (ValueError, GsbRegistrationError) as exc:
            raise GftpError(f"cannot publish {path}: {SERVICE}/{name} is already served "
                            f"(the same content is published): {exc}") from exc
        except GsbConnectionError as exc:
            raise GftpError(f"cannot publish {path}: {exc}") from exc
    except BaseException:
        await file.aclose()
        raise
    logger.debug("published %s (%d bytes) as %s", path, size, published.url)
    return published


# --- receiving an upload ------------------------------------------------------------------

class _Coverage:
    """The byte ranges written so far, as sorted disjoint ``[start, end)`` intervals.

    Chunks mostly arrive in order, so this stays a handful of intervals whatever the file size.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if start == end:
            return
        # The intervals that touch or overlap [start, end) are merged into one.
        lo = bisect.bisect_left(self._ends, start)
        hi = bisect.bisect_right(self._starts, end)
        if lo < hi:
            start, end = min(start, self._starts[lo]), max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def gap(self) -> tuple[int, int] | None:
        """The first range below the highest byte written that nothing was written to."""
        if not self._starts:
            return None
        if self._starts[0] > 0:
            return 0, self._starts[0]
        return (self._ends[0], self._starts[1]) if len(self._starts) > 1 else None

    @property
    def end(self) -> int:
        return self._ends[-1] if self._ends else 0


class Receiver:
    """Receives one upload into :attr:`path` at :attr:`url`; made by :func:`open_upload`.

    :attr:`done` resolves to the number of bytes received once the uploader's
    ``UploadFinished`` checked out, or fails with :class:`GftpError` (the uploader is told too).
    """

    def __init__(self, bus: GsbClient, url: str, name: str, path: Path, file: _SharedFd,
                 max_size: int | None) -> None:
        self.url = url
        """``gftp://<node_id>/<random id>``: give it to the uploader."""
        self.path = path
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # The uploader is told of a failure in any case, so nobody *has* to await `done`:
        # mark its exception retrieved rather than have asyncio log it at garbage collection.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._bus = bus
        self._name = name
        self._file = file
        self._coverage = _Coverage()
        self._max_size = max_size
        self._writing = 0
        self._written = asyncio.Event()
        self._written.set()
        self._finishing = False
        self._refusal: Any = None  # the {"Err": ...} value a failed upload is answered with
        self._closed = False

    async def wait(self) -> int:
        """The number of bytes received, once the upload finished; :class:`GftpError` if it failed."""
        return await asyncio.shield(self.done)  # a cancelled waiter must not cancel `done`

    async def aclose(self) -> None:
        """Stops receiving and closes the file; an unfinished upload then fails. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await _unregister(self._bus, f"{SERVICE}/{self._name}")
        await self._file.aclose()
        if not self.done.done():
            self.done.set_exception(GftpError(f"upload to {self.url} closed before it finished"))

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _handle(self, message: str, caller: str, payload: Any) -> None:
        if message == UPLOAD_CHUNK:
            await self._write(payload)
        elif message == UPLOAD_FINISHED:
            await self._finish(payload, caller)
        else:
            raise _unknown(message)

    async def _write(self, payload: Any) -> None:
        chunk = payload.get("chunk") if isinstance(payload, dict) else None
        offset = _uint(chunk, "offset")
        content = chunk.get("content") if isinstance(chunk, dict) else None
        if isinstance(content, list):  # a peer without serde_bytes sends a vector of ints
            content = bytes(content)
        if not isinstance(content, bytes):
            raise GsbHandlerError({"InternalError": "bad request: 'content' must be bytes"})
        if self._finishing:
            raise GsbHandlerError({"WriteError": f"upload to {self.url} already finished"})
        if self._max_size is not None and offset + len(content) > self._max_size:
            # Refused before it reaches the disk, and the upload fails now: the uploader stops
            # at its first refused chunk and never sends UploadFinished.
            message = f"upload to {self.url} exceeds the limit of {self._max_size} bytes"
            self._finishing = True
            self._refusal = {"WriteError": message}
            if not self.done.done():
                self.done.set_exception(GftpLimitExceeded(message))
            raise GsbHandlerError(self._refusal)
        self._writing += 1
        self._written.clear()
        try:
            await self._file.run(lambda fd: _pwrite_all(fd, content, offset))
        except (OSError, GftpError) as exc:
            raise GsbHandlerError({"WriteError": f"cannot write {len(content)} bytes "
                                                 f"at {offset}: {exc}"}) from exc
        finally:
            self._writing -= 1
            if not self._writing:
                self._written.set()
        self._coverage.add(offset, offset + len(content))

    async def _finish(self, payload: Any, caller: str) -> None:
        expected = payload.get("hash") if isinstance(payload, dict) else None
        if expected is not None and not isinstance(expected, str):
            raise GsbHandlerError({"InternalError": "bad request: 'hash' must be a string or null"})
        if not self._finishing:
            self._finishing = True  # no more chunks from here on
            await self._written.wait()  # chunks still being written belong to the upload
            outcome: int | GftpError
            try:
                outcome = await self._verify(expected)
            except GftpError as exc:
                outcome = exc
            if not self.done.done():  # aclose() may have failed it meanwhile
                if isinstance(outcome, int):
                    self.done.set_result(outcome)
                else:
                    self.done.set_exception(outcome)
            logger.debug("upload to %s from %s finished: %s", self.url, caller,
                         self.done.exception() or f"{self.done.result()} bytes")
        await asyncio.wait([self.done])  # a repeated UploadFinished gets the same answer
        error = self.done.exception()
        if error is not None:
            raise GsbHandlerError(self._refusal or {"InternalError": str(error)})

    async def _verify(self, expected: str | None) -> int:
        """The size received; raises (and sets what the uploader is answered) if it is wrong."""
        gap = self._coverage.gap()
        if gap is not None:
            message = f"upload to {self.url}: bytes {gap[0]}..{gap[1]} never arrived"
            self._refusal = {"WriteError": message}
            raise GftpIntegrityError(message)
        if expected is not None:  # the protocol makes it optional, as yagna does
            try:
                actual = await self._file.run(_hash_fd)
            except (OSError, GftpError) as exc:
                message = f"upload to {self.url}: cannot hash what arrived: {exc}"
                self._refusal = {"InternalError": message}
                raise GftpError(message) from exc
            if actual != expected.lower():
                self._refusal = "IntegrityError"  # yagna's answer to a hash mismatch
                raise GftpIntegrityError(f"upload to {self.url}: content hash {actual} differs "
                                         f"from the announced {expected}")
        return self._coverage.end


async def open_upload(bus: GsbClient, node_id: str, path: Path, *,
                      max_size: int | None = None) -> Receiver:
    """Receives an upload into ``path`` (created or truncated now) at a fresh ``gftp://`` URL.

    Give :attr:`Receiver.url` to the uploader, then ``await receiver.wait()``; ``aclose()``
    stops receiving. ``UploadChunk``s are written where their offset says, in any order;
    ``UploadFinished`` checks that no range below the end was left out and, when the uploader
    sends a hash (yagna always does), that the content's SHA3-256 matches it. With
    ``max_size``, a chunk that would reach beyond it is refused (so the upload fails).
    """
    node_id = _check_node_id(node_id)
    name = "".join(secrets.choice(_UPLOAD_ID_ALPHABET) for _ in range(_UPLOAD_ID_LENGTH))
    file = _SharedFd(await asyncio.to_thread(_open_for_writing, path))
    receiver = Receiver(bus, gftp_url(node_id, name), name, path, file, max_size)
    try:
        await bus.register(f"{SERVICE}/{name}", receiver._handle)
    except BaseException as exc:
        await file.aclose()
        receiver.done.cancel()
        if isinstance(exc, (GsbConnectionError, GsbRegistrationError)):
            raise GftpError(f"cannot receive an upload into {path}: {exc}") from exc
        raise
    logger.debug("receiving an upload into %s at %s", path, receiver.url)
    return receiver
