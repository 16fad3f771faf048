"""The ``transfer`` command: copies between a ``container:`` path and a URL.

Everything in it is the requestor's choice, so none of it may reach the provider's host:

* container paths are opened beneath their volume's directory (:mod:`.volumes`): no symbolic
  link, ``..`` or rename race leads out of the volume;
* ``file://`` is refused: a requestor has no business naming the provider's files. Storage that
  the provider's host does serve (the local network's, GFTP on a yagna node) comes as a
  :class:`RemoteScheme` of its own, whose URLs name only what was published through it;
* ``http(s)://`` is allowed only to an activity with network access (``inet``). Such an
  activity shares the provider's network namespace, so the request reaches exactly what the
  activity's commands could reach themselves. Without ``inet`` it is refused outright.

Data moves in chunks through descriptors, never held whole; a failed download leaves no
half-written file behind.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import BinaryIO, Protocol

from .volumes import VolumeError, Volumes, describe

__all__ = ["RemoteScheme", "TransferError", "Volumes", "transfer"]

CHUNK = 1 << 20
HTTP_TIMEOUT = 60.0


class TransferError(Exception):
    """A transfer that cannot be done (bad URL, refused path, I/O or HTTP failure)."""


class RemoteScheme(Protocol):
    """A transport for a URL scheme served by the provider's node (``gftp://`` on yagna).

    Both calls get an open descriptor owned by the caller: the transport reads or writes
    through it and never opens a path of its own.
    """

    async def fetch(self, url: str, fd: int) -> int:
        """Write the content at ``url`` into ``fd`` from offset 0; return its size."""

    async def push(self, fd: int, url: str) -> int:
        """Send the content of ``fd`` to ``url``; return the number of bytes sent."""


def _split(url: str) -> tuple[str, str]:
    if not isinstance(url, str) or "\0" in url:
        raise TransferError(f"{url!r} is not a URL")
    scheme, sep, rest = url.partition(":")
    if not sep or not scheme:
        raise TransferError(f"{url!r} is not a URL (expected container:, http:, https: "
                            "or the provider's storage scheme)")
    return scheme.lower(), rest


async def transfer(src: str, dst: str, volumes: Volumes,
                   remote: Mapping[str, RemoteScheme] | None = None, *,
                   inet: bool = False) -> int:
    """Copy ``src`` to ``dst``; returns the number of bytes copied."""
    remote = remote or {}
    src_scheme, src_rest = _split(src)
    dst_scheme, dst_rest = _split(dst)
    if (src_scheme == "container") == (dst_scheme == "container"):
        raise TransferError("a transfer goes into or out of the container: exactly one side "
                            f"must be a container: path (got {src!r} -> {dst!r})")
    other, other_scheme = (dst, dst_scheme) if src_scheme == "container" else (src, src_scheme)
    _check_scheme(other_scheme, other, remote, inet)
    try:
        if src_scheme == "container":
            return await _upload(volumes, src_rest, dst, dst_scheme, remote)
        if dst_rest.endswith("/"):
            dst_rest += _url_name(src)
        return await _download(volumes, src, src_scheme, dst_rest, remote)
    except TransferError:
        raise
    except VolumeError as exc:
        raise TransferError(str(exc)) from exc
    except OSError as exc:
        raise TransferError(f"{src} -> {dst}: {describe(exc)}") from exc
    except Exception as exc:  # a remote transport's own failure (GFTP, the local storage)
        raise TransferError(f"{src} -> {dst}: {exc}") from exc


def _check_scheme(scheme: str, url: str, remote: Mapping[str, RemoteScheme], inet: bool) -> None:
    if scheme in remote:
        return
    if scheme in ("http", "https"):
        if not inet:
            raise TransferError(f"{url!r}: this activity has no network access, so it can't "
                                "transfer from or to the network (the demand must ask for inet)")
        return
    if scheme == "file":
        raise TransferError(f"{url!r}: file URLs are not accepted; the provider's files are "
                            "not the requestor's to name")
    if scheme == "gftp":
        raise TransferError(f"{url!r}: gftp:// transfers need a provider on a yagna node")
    raise TransferError(f"{url!r}: unsupported URL scheme {scheme!r}")


def _url_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    return name if name not in ("", ".", "..") else "download"


async def _download(volumes: Volumes, src: str, scheme: str, dst_path: str,
                    remote: Mapping[str, RemoteScheme]) -> int:
    fd = await asyncio.to_thread(volumes.open_write, dst_path)
    done = False
    try:
        if scheme in remote:
            size = await remote[scheme].fetch(src, fd)
        else:
            size = await asyncio.to_thread(_http_get, src, fd)
        done = True
        return size
    finally:
        os.close(fd)
        if not done:
            await asyncio.to_thread(volumes.remove, dst_path)


async def _upload(volumes: Volumes, src_path: str, dst: str, scheme: str,
                  remote: Mapping[str, RemoteScheme]) -> int:
    fd = await asyncio.to_thread(volumes.open_read, src_path)
    try:
        if scheme in remote:
            return await remote[scheme].push(fd, dst)
        return await asyncio.to_thread(_http_put, fd, dst)
    finally:
        os.close(fd)


def _http_get(url: str, fd: int) -> int:
    try:
        response: BinaryIO = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise TransferError(f"GET {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TransferError(f"cannot read {url!r}: {exc}") from exc
    total = 0
    with response:
        while True:
            try:
                chunk = response.read(CHUNK)
            except OSError as exc:
                raise TransferError(f"reading {url!r} failed: {exc}") from exc
            if not chunk:
                return total
            _write_all(fd, chunk)
            total += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _http_put(fd: int, url: str) -> int:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        while chunk := os.read(fd, CHUNK):
            sent += len(chunk)
            yield chunk

    request = urllib.request.Request(url, data=chunks(), method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT):
            pass
    except urllib.error.HTTPError as exc:
        exc.close()
        raise TransferError(f"PUT {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TransferError(f"cannot write {url!r}: {exc}") from exc
    return sent
