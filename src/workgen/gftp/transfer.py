"""GFTP, yagna's file transfer over the GSB: the protocol, and the side that moves the data.

GFTP is ``core/gftp`` in golemfactory/yagna; its messages are ``ya_core_model::gftp``. The side
that owns a file serves it under ``/public/gftp/<name>`` on its own node's GSB
(:mod:`workgen.gftp.publisher`); this module calls another node's GFTP service through the local
daemon: :func:`download` asks ``GetMetadata``, then ``GetChunk``s; :func:`upload` sends
``UploadChunk``s and ends with ``UploadFinished``; :class:`GftpScheme` is the execution unit's
``gftp://`` transport. A call's address ends with the message's name, and its payload is the
message's serde form::

    GetMetadata     null                                 -> {"fileSize": u64}
    GetChunk        {"offset": u64, "size": u64}         -> {"offset": u64, "content": blob}
    UploadChunk     {"chunk": {"offset", "content"}}     -> null
    UploadFinished  {"hash": str | null}                 -> null

``content`` is a flexbuffers *blob* (``#[serde(with = "serde_bytes")]``). Failures answer
``{"Err": e}`` with ``e`` one of yagna's ``gftp::Error`` variants as serde writes them:
``{"ReadError": str}``, ``{"WriteError": str}``, ``{"InternalError": str}`` or the unit variant
``"IntegrityError"`` (a bare string).

A published file's name is the **SHA3-256** of its content in lowercase hex (yagna calls the
function ``hash_file_sha256``, but it uses ``sha3::Sha3_256``); an upload target's name is a
random 65-character alphanumeric id, so the two can never be confused. URLs are
``gftp://<node_id>/<name>`` with the node id as ``0x`` and 40 lowercase hex digits.

Addressing: ``/transfer/net/<node_id>/gftp/<name>/<Message>``. yagna's execution unit uses this
``/transfer`` prefix for both directions (``RemoteEndpoint::service_transfer``); the hybrid net
carries it on a channel meant for bulk data, and the central net (our offline devnet) strips the
prefix and routes it as ``/net/...`` -- both prefixes were checked to reach a publisher through
two daemons here. The receiving daemon delivers the call to ``/public/gftp/<name>/<Message>``.

Throughput comes from big chunks, a few in flight: yagna asks 40 KiB, 8 (exe unit) or 12 at a
time; we ask 1 MiB, 8 at once -- a yagna publisher serves any size asked, a yagna receiver
writes any size sent -- which moved data ~4x faster through two daemons here. Memory stays at
about ``concurrency`` chunks on either side, whatever the file size. A chunk is not copied on
our side: it is served as the buffer it was read into, received into a buffer of its own (one
the connection reuses once the chunk is written), and written and hashed from there, in file
order, in worker threads. What remains beyond the GSB's own cost is the SHA3-256 check (about
2.4 s of CPU per GB) and the write, which the downloader cannot skip (``bench/gftp.py``
measures both).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

from .._aio import task_scope
from ..gsb import GsbClient, GsbError, GsbRemoteError

logger = logging.getLogger(__name__)

SERVICE: Final = "/public/gftp"
"""Where a node serves its files; another node calls ``<net prefix>/<node_id>/gftp/...``."""

GET_METADATA: Final = "GetMetadata"
GET_CHUNK: Final = "GetChunk"
UPLOAD_CHUNK: Final = "UploadChunk"
UPLOAD_FINISHED: Final = "UploadFinished"

MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
"""The most one ``GetChunk`` is served (yagna asks 40 KiB); bounds what a caller can make us hold.
Well below the GSB codec's frame limit, so a chunk always fits in one frame."""

_HASH_BLOCK = 1024 * 1024
_CONTENT_HASH = re.compile(r"[0-9a-f]{64}")
_NODE_ID = re.compile(r"0x[0-9a-fA-F]{40}")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_T = TypeVar("_T")

REMOTE_PREFIX: Final = "/transfer/net"
"""How this node calls another's GFTP service: ``<REMOTE_PREFIX>/<node_id>/gftp/<name>/...``."""
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
DEFAULT_CONCURRENCY: Final = 8
DEFAULT_CALL_TIMEOUT: Final = 60.0
"""How long one GFTP call may go unanswered: a stalled peer, whatever the file's size."""

# yagna's Display texts of its gftp::Error unit variants (the others carry their own text).
_ERROR_TEXTS: Final = {"IntegrityError": "File hash verification failed."}


class GftpError(Exception):
    """A GFTP transfer failed: bad URL, the remote side's error, a broken bus, local I/O.

    ::

        GftpError
        ├── GftpIntegrityError   data arrived, but not what was announced (hash, size, gaps)
        └── GftpLimitExceeded    an upload went beyond the receiver's ``max_size``

    Like the GSB's errors these belong to the storage layer: the yagna backend and the execution
    unit's transfer command translate them at their edge.
    """


class GftpIntegrityError(GftpError):
    """The content that arrived is not what was announced: wrong hash, short, or with gaps."""


class GftpLimitExceeded(GftpError):
    """An upload reached beyond the ``max_size`` its receiver was opened with."""


# --- the protocol's names ------------------------------------------------------------------

def file_hash(path: Path) -> str:
    """The SHA3-256 of the file's content in lowercase hex: a published file's GFTP name.

    Reads in blocks, never the whole file at once. Blocking: call it in a thread.
    """
    hasher = hashlib.sha3_256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def gftp_url(node_id: str, name: str) -> str:
    """``gftp://<node_id>/<name>``, the node id in yagna's spelling (``0x``, lowercase)."""
    node_id, name = _check_node_id(node_id), _check_name(name)
    return f"gftp://{node_id}/{name}"


def parse_url(url: str) -> tuple[str, str]:
    """The node id (lowercase) and the name in ``gftp://<node_id>/<name>``; ``GftpError`` if not.

    The name is a content hash (see :func:`is_content_hash`) or an upload target's random id.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "gftp":
        raise GftpError(f"{url!r} is not a gftp:// URL")
    if parts.query or parts.fragment or parts.username or parts.port is not None:
        raise GftpError(f"gftp URL {url!r} must be gftp://<node_id>/<name> and nothing more")
    try:
        return _check_node_id(parts.netloc), _check_name(parts.path[1:])
    except ValueError as exc:
        raise GftpError(f"gftp URL {url!r}: {exc}") from None


def is_content_hash(name: str) -> bool:
    """Whether a GFTP name is a content hash (so a download can be verified against it)."""
    return _CONTENT_HASH.fullmatch(name) is not None


def _check_node_id(node_id: str) -> str:
    if not _NODE_ID.fullmatch(node_id):
        raise ValueError(f"{node_id!r} is not a node id (0x and 40 hex digits)")
    return node_id.lower()


def _check_name(name: str) -> str:
    # The name becomes one GSB address segment: no '/', nothing the router would split on.
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a GFTP file name (letters, digits, '-', '_')")
    return name


# --- a file descriptor shared with worker threads ------------------------------------------

class _SharedFd:
    """A file descriptor used from worker threads, closed only once no thread uses it.

    Closing an fd while a thread still reads it would let that thread read (or write!) whatever
    file next gets the same number. A cancelled ``await`` does not stop its thread, so the
    bookkeeping happens in the thread itself, under a lock: once closing, no new I/O starts,
    and the close waits for the I/O already running.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Condition()
        self._busy = 0
        self._closing = False

    async def run(self, io: Callable[[int], _T]) -> _T:
        """Runs ``io(fd)`` in a worker thread; ``GftpError`` if the file is closed meanwhile."""
        return await asyncio.to_thread(self._run, io)

    def _run(self, io: Callable[[int], _T]) -> _T:
        with self._lock:
            if self._closing:
                raise GftpError("the file was closed")
            self._busy += 1
        try:
            return io(self._fd)
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()

    async def aclose(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._busy == 0
        if idle:  # the common case: no thread hop
            os.close(self._fd)
        else:
            await asyncio.to_thread(self._close_when_idle)

    def _close_when_idle(self) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self._busy == 0)
        os.close(self._fd)


def _open_for_writing(path: Path) -> int:
    # O_NOFOLLOW: a symbolic link planted where a file should arrive must not redirect the write.
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC  # read: to hash
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)
    except OSError as exc:
        raise GftpError(f"cannot create {path}: {exc.strerror}") from exc


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:  # regular files read short only at the end; be safe anyway
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _hash_fd(fd: int) -> str:
    hasher, offset = hashlib.sha3_256(), 0
    while block := os.pread(fd, _HASH_BLOCK, offset):
        hasher.update(block)
        offset += len(block)
    return hasher.hexdigest()


# --- the moving side -----------------------------------------------------------------------

async def download(bus: GsbClient, url: str, dest: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   concurrency: int = DEFAULT_CONCURRENCY,
                   call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> int:
    """Fetches the file published at ``url`` into ``dest``; returns its size in bytes.

    ``dest`` is created or truncated (its parent directories too; a symbolic link at ``dest``
    is refused). When the URL's name is a content hash -- it is for every published file --
    the content's SHA3-256 must equal it. Raises :class:`GftpError` if the transfer fails and
    :class:`GftpIntegrityError` if what arrived is short or not what the URL names; ``dest`` is
    then removed, so a partial file is never left behind.
    """
    _check_tuning(chunk_size, concurrency)
    fd = await asyncio.to_thread(_open_for_writing, dest)
    complete = False
    try:
        size = await download_into(bus, url, fd, chunk_size=chunk_size,
                                   concurrency=concurrency, call_timeout=call_timeout)
        complete = True
    finally:
        os.close(fd)
        if not complete:
            await asyncio.to_thread(dest.unlink, missing_ok=True)
    return size


async def download_into(bus: GsbClient, url: str, fd: int, *,
                        chunk_size: int = DEFAULT_CHUNK_SIZE,
                        concurrency: int = DEFAULT_CONCURRENCY,
                        call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> int:
    """:func:`download` into an open descriptor (readable and writable, owned by the caller:
    it stays open); the caller removes what a failure left."""
    _check_tuning(chunk_size, concurrency)
    node_id, name = parse_url(url)
    base = f"{REMOTE_PREFIX}/{node_id}/gftp/{name}"
    metadata = await _call(bus, f"{base}/{GET_METADATA}", None, call_timeout)
    size = metadata.get("fileSize") if isinstance(metadata, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise GftpError(f"{url}: {GET_METADATA} answered {metadata!r}, not {{'fileSize': n}}")
    # A duplicate: the file may be used by worker threads after a cancelled await, and must
    # not be closed under them (see _SharedFd); the caller's descriptor stays its own.
    file = _SharedFd(os.dup(fd))
    try:
        digest = await _fetch_chunks(bus, f"{base}/{GET_CHUNK}", url, file, size,
                                     chunk_size, concurrency, call_timeout)
        if is_content_hash(name) and digest != name:
            raise GftpIntegrityError(f"{url}: the content's SHA3-256 is {digest}")
    finally:
        await file.aclose()
    logger.debug("downloaded %s (%d bytes)", url, size)
    return size


async def upload(bus: GsbClient, src: Path, url: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> int:
    """Sends ``src`` to the receiver at ``url``; returns the number of bytes sent.

    Ends with ``UploadFinished`` carrying the content's SHA3-256, so the receiver can check
    what arrived. Raises :class:`GftpError` if the transfer fails, and
    :class:`GftpIntegrityError` if the receiver found the content wrong.
    """
    _check_tuning(chunk_size, concurrency)
    try:
        fd = await asyncio.to_thread(os.open, src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise GftpError(f"cannot upload {src}: {exc.strerror}") from exc
    try:
        return await upload_from(bus, fd, url, chunk_size=chunk_size, concurrency=concurrency,
                                 call_timeout=call_timeout)
    finally:
        os.close(fd)


async def upload_from(bus: GsbClient, fd: int, url: str, *,
                      chunk_size: int = DEFAULT_CHUNK_SIZE,
                      concurrency: int = DEFAULT_CONCURRENCY,
                      call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> int:
    """:func:`upload` from an open descriptor (owned by the caller: it stays open)."""
    _check_tuning(chunk_size, concurrency)
    node_id, name = parse_url(url)
    base = f"{REMOTE_PREFIX}/{node_id}/gftp/{name}"
    file = _SharedFd(os.dup(fd))
    try:
        size, digest = await _send_chunks(bus, f"{base}/{UPLOAD_CHUNK}", url, file,
                                          chunk_size, concurrency, call_timeout)
    finally:
        await file.aclose()
    await _call(bus, f"{base}/{UPLOAD_FINISHED}", {"hash": digest}, call_timeout)
    logger.debug("uploaded %d bytes to %s", size, url)
    return size


class GftpScheme:
    """The ``gftp`` transport of the execution unit's ``transfer`` command, on one node's GSB.

    ``bus`` must be connected to the provider's own daemon: calls go out through it to the
    node named in each URL. Matches :class:`workgen.provider.exeunit.transfer.RemoteScheme`.
    """

    def __init__(self, bus: GsbClient, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> None:
        _check_tuning(chunk_size, concurrency)
        self._bus = bus
        self._chunk_size = chunk_size
        self._concurrency = concurrency
        self._call_timeout = call_timeout

    async def fetch(self, url: str, fd: int) -> int:
        """Downloads the file published at ``url`` into ``fd``; see :func:`download`."""
        return await download_into(self._bus, url, fd, chunk_size=self._chunk_size,
                                   concurrency=self._concurrency, call_timeout=self._call_timeout)

    async def push(self, fd: int, url: str) -> int:
        """Uploads the content of ``fd`` to the receiver at ``url``; see :func:`upload`."""
        return await upload_from(self._bus, fd, url, chunk_size=self._chunk_size,
                                 concurrency=self._concurrency, call_timeout=self._call_timeout)


async def _fetch_chunks(bus: GsbClient, address: str, url: str, file: _SharedFd, size: int,
                        chunk_size: int, concurrency: int, call_timeout: float | None) -> str:
    """Asks for the chunks, writes them in order; returns the content's SHA3-256 in hex."""
    hasher = hashlib.sha3_256()
    offsets = iter(range(0, size, chunk_size))
    try:
        async with task_scope(first_error=True) as tasks:
            # A window of requests in file order: the oldest is written while the others travel.
            window: collections.deque[tuple[int, int, asyncio.Task[Any]]] = collections.deque()

            def ask_next() -> None:
                offset = next(offsets, None)
                if offset is not None:
                    wanted = min(chunk_size, size - offset)
                    call = _call(bus, address, {"offset": offset, "size": wanted}, call_timeout,
                                 blob_views=True)
                    window.append((offset, wanted, tasks.create_task(call)))

            for _ in range(concurrency):
                ask_next()
            while window:
                offset, wanted, reply = window.popleft()
                content = _chunk_content(url, await reply, offset, wanted)
                ask_next()
                await file.run(functools.partial(_write_and_hash, hasher=hasher, content=content,
                                                 offset=offset))
    except OSError as exc:
        raise GftpError(f"{url}: cannot write the file: {exc}") from exc
    return hasher.hexdigest()


async def _send_chunks(bus: GsbClient, address: str, src: str, file: _SharedFd,
                       chunk_size: int, concurrency: int,
                       call_timeout: float | None) -> tuple[int, str]:
    """Sends the file in chunks, a window at a time; returns its size and SHA3-256 in hex."""
    hasher = hashlib.sha3_256()
    offset = 0
    try:
        async with task_scope(first_error=True) as tasks:
            window: collections.deque[asyncio.Task[Any]] = collections.deque()
            while True:
                content = await file.run(functools.partial(_read_and_hash, hasher=hasher,
                                                           size=chunk_size, offset=offset))
                if not content:
                    break
                if len(window) >= concurrency:
                    await window.popleft()
                request = {"chunk": {"offset": offset, "content": content}}
                window.append(tasks.create_task(_call(bus, address, request, call_timeout)))
                offset += len(content)
            for sent in window:  # every chunk must be written before UploadFinished
                await sent
    except OSError as exc:
        raise GftpError(f"cannot read {src}: {exc}") from exc
    return offset, hasher.hexdigest()


def _check_tuning(chunk_size: int, concurrency: int) -> None:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, not {chunk_size}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")


async def _call(bus: GsbClient, address: str, payload: Any, timeout: float | None, *,
                blob_views: bool = False) -> Any:
    """``bus.call``, with the GSB's failures translated into :class:`GftpError` here, once."""
    try:
        return await bus.call(address, payload, timeout=timeout, blob_views=blob_views)
    except GsbRemoteError as exc:
        error = exc.error
        if error == "IntegrityError":
            raise GftpIntegrityError(f"{address}: {_ERROR_TEXTS[error]}") from exc
        if isinstance(error, dict) and len(error) == 1:
            [(kind, text)] = error.items()
            raise GftpError(f"{address}: {kind}: {text}") from exc
        text = _ERROR_TEXTS.get(error, error) if isinstance(error, str) else error
        raise GftpError(f"{address}: {text!r}") from exc
    except GsbError as exc:  # no such file (nothing serves the address), a broken bus, ...
        raise GftpError(str(exc) if address in str(exc) else f"{address}: {exc}") from exc
    except TimeoutError as exc:
        raise GftpError(f"{address}: no answer within {timeout} s") from exc


def _chunk_content(url: str, reply: Any, offset: int, wanted: int) -> memoryview:
    """The chunk's bytes: a view of the frame they arrived in, written and hashed from there."""
    content = reply.get("content") if isinstance(reply, dict) else None
    if isinstance(content, list):  # a peer without serde_bytes sends a vector of ints
        content = memoryview(bytes(content))
    if not isinstance(content, memoryview) or reply.get("offset") != offset:
        raise GftpError(f"{url}: {GET_CHUNK} at {offset} answered with a malformed chunk")
    if len(content) != wanted:
        raise GftpIntegrityError(f"{url}: {GET_CHUNK} at {offset} answered {len(content)} "
                                 f"bytes of the {wanted} the file's size calls for")
    return content


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def _write_and_hash(fd: int, *, hasher: _Hasher, content: memoryview, offset: int) -> None:
    _pwrite_all(fd, content, offset)
    hasher.update(content)  # in a thread too: hashlib releases the GIL on large buffers


def _read_and_hash(fd: int, *, hasher: _Hasher, size: int, offset: int) -> bytes:
    content = _pread_exact(fd, size, offset)
    hasher.update(content)
    return content
