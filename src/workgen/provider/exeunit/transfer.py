"""The ``transfer`` command: copies between ``container:`` paths and ``file://``/``http(s)://`` URLs.

A ``container:`` path must lie inside one of the activity's volumes: ``..`` components are
refused outright, and symbolic links are resolved on the host side so that a link planted in a
volume cannot lead a transfer out of it. Files the transfer creates belong to the sandbox's
user, so the activity can go on using them. Data is copied in chunks, never held whole.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

CHUNK = 1 << 20
HTTP_TIMEOUT = 60.0


class TransferError(Exception):
    """A transfer that cannot be done (bad URL, refused path, I/O or HTTP failure)."""


class Volumes:
    """The activity's container paths and the host directories behind them."""

    def __init__(self, mapping: Mapping[str, Path], owner: tuple[int, int] | None):
        # Longest container path first, so /golem/work/sub would win over /golem/work.
        self._mapping = sorted(mapping.items(), key=lambda kv: -len(kv[0]))
        self._owner = owner

    def resolve(self, container_path: str) -> Path:
        """The host path for a container path, or :class:`TransferError` if it escapes."""
        path = PurePosixPath(container_path)
        if not path.is_absolute():
            raise TransferError(f"container path {container_path!r} must be absolute")
        if ".." in path.parts:
            raise TransferError(f"container path {container_path!r} contains '..'")
        for mount, host in self._mapping:
            try:
                rel = path.relative_to(mount)
            except ValueError:
                continue
            target = host.joinpath(*rel.parts)
            real_root = os.path.realpath(host)
            real = os.path.realpath(target)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise TransferError(
                    f"container path {container_path!r} leads outside its volume {mount}"
                )
            return Path(real)
        mounts = ", ".join(sorted(m for m, _ in self._mapping))
        raise TransferError(f"container path {container_path!r} is not inside a volume ({mounts})")

    def make_parents(self, target: Path) -> None:
        missing = []
        parent = target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir()
            self.give(directory)

    def give(self, path: Path) -> None:
        """Hand a file we created to the sandbox's user."""
        if self._owner is not None:
            os.chown(path, *self._owner, follow_symlinks=False)


def _split(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise TransferError(f"{url!r} is not a URL (expected container:, file:, http: or https:)")
    return scheme.lower(), rest


def _file_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise TransferError(f"file URL {url!r} names a remote host")
    path = urllib.parse.unquote(parsed.path)
    if not path.startswith("/"):
        raise TransferError(f"file URL {url!r} must hold an absolute path")
    return Path(path)


class RemoteScheme(Protocol):
    """A transport for URLs the host cannot open itself (``gftp://`` on a yagna node)."""

    async def fetch(self, url: str, dest: Path) -> int: ...

    async def push(self, src: Path, url: str) -> int: ...


async def transfer(src: str, dst: str, volumes: Volumes,
                   remote: Mapping[str, RemoteScheme] | None = None) -> int:
    """Copy ``src`` to ``dst``; returns the number of bytes copied."""
    src_scheme, src_rest = _split(src)
    dst_scheme, dst_rest = _split(dst)
    remote = remote or {}
    if src_scheme in remote or dst_scheme in remote:
        try:
            if src_scheme in remote and dst_scheme == "container":
                if dst_rest.endswith("/"):
                    dst_rest += PurePosixPath(src_rest).name or "download"
                target = volumes.resolve(dst_rest)
                volumes.make_parents(target)
                size = await remote[src_scheme].fetch(src, target)
                volumes.give(target)
                return size
            if dst_scheme in remote and src_scheme == "container":
                return await remote[dst_scheme].push(volumes.resolve(src_rest), dst)
        except TransferError:
            raise
        except Exception as exc:
            raise TransferError(f"{src} -> {dst}: {exc}") from exc
        raise TransferError("a transfer goes into or out of the container: one side must be "
                            f"a container: path (got {src!r} -> {dst!r})")
    return await asyncio.to_thread(_transfer, src, dst, volumes)


def _transfer(src: str, dst: str, volumes: Volumes) -> int:
    src_scheme, src_rest = _split(src)
    dst_scheme, dst_rest = _split(dst)
    if "container" not in (src_scheme, dst_scheme):
        raise TransferError("a transfer goes into or out of the container: one side must be "
                            f"a container: path (got {src!r} -> {dst!r})")
    with _open_source(src, src_scheme, src_rest, volumes) as (reader, name):
        if dst_scheme == "container":
            if dst_rest.endswith("/"):
                dst_rest += name
            target = volumes.resolve(dst_rest)
            volumes.make_parents(target)
            return _write_file(reader, target, volumes)
        if dst_scheme == "file":
            path = _file_path(dst)
            if dst.endswith("/"):
                path = path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            return _write_file(reader, path, None)
        if dst_scheme in ("http", "https"):
            return _http_put(reader, dst)
        raise _unsupported(dst_scheme, dst)


class _open_source:
    """Opens a transfer's source as a binary reader and gives the name to use for ``dir/``."""

    def __init__(self, url: str, scheme: str, rest: str, volumes: Volumes):
        self._url, self._scheme, self._rest, self._volumes = url, scheme, rest, volumes
        self._reader: BinaryIO | None = None

    def __enter__(self) -> tuple[BinaryIO, str]:
        url = self._url
        try:
            if self._scheme == "container":
                path = self._volumes.resolve(self._rest)
                self._reader = open(path, "rb")
                return self._reader, path.name
            if self._scheme == "file":
                path = _file_path(url)
                self._reader = open(path, "rb")
                return self._reader, path.name
            if self._scheme in ("http", "https"):
                response = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
                self._reader = response
                name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
                return response, name
        except IsADirectoryError as exc:
            raise TransferError(f"{url!r} is a directory; transfers copy single files") from exc
        except FileNotFoundError as exc:
            raise TransferError(f"{url!r} does not exist") from exc
        except urllib.error.HTTPError as exc:
            exc.close()
            raise TransferError(f"GET {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransferError(f"cannot read {url!r}: {exc}") from exc
        raise _unsupported(self._scheme, url)

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.close()


def _unsupported(scheme: str, url: str) -> TransferError:
    if scheme == "gftp":
        return TransferError(f"{url!r}: gftp:// transfers need a provider on a yagna node")
    return TransferError(f"{url!r}: unsupported URL scheme {scheme!r}")


def _write_file(reader: BinaryIO, target: Path, volumes: Volumes | None) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o644)
    except IsADirectoryError as exc:
        raise TransferError(f"destination {target.name!r} is a directory") from exc
    except OSError as exc:
        raise TransferError(f"cannot write {target.name!r}: {exc.strerror}") from exc
    total = 0
    with os.fdopen(fd, "wb") as out:
        if volumes is not None:
            volumes.give(target)
        while chunk := reader.read(CHUNK):
            out.write(chunk)
            total += len(chunk)
    return total


def _http_put(reader: BinaryIO, url: str) -> int:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        while chunk := reader.read(CHUNK):
            sent += len(chunk)
            yield chunk

    request = urllib.request.Request(url, data=chunks(), method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT):
            pass
    except urllib.error.HTTPError as exc:
        exc.close()
        raise TransferError(f"PUT {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransferError(f"cannot write {url!r}: {exc}") from exc
    return sent
