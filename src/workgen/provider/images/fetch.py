"""Downloading an image from the URL a requestor put in its demand.

The URL is hostile input: it may point at the provider's own network (its yagna API on loopback,
a cloud metadata address, a router), redirect there, announce a wrong length, send forever, or
send something else than the hash it was named by. So:

* only ``http`` and ``https``; every address the host name resolves to must be a public one,
  unless the policy lists that host and port as an image source (``workgen devnet``'s registry
  on loopback, say); plain ``http`` connects to the checked address itself, so a second DNS
  answer can't move it; redirects are followed by hand and checked the same way, at most 5;
* the size is capped, by ``Content-Length`` before reading and by counting while reading;
* the body is hashed as it arrives and the file is kept only if the SHA3 matches.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

MAX_REDIRECTS = 5
DEFAULT_MAX_IMAGE_BYTES = 4 << 30
_PROGRESS_EVERY_SEC = 1.0


class FetchError(Exception):
    """The image could not be fetched; the message is meant for the requestor."""


@dataclass(frozen=True)
class FetchPolicy:
    """Where a provider fetches images from, and how much."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    allow_private: bool = False
    """Whether non-public addresses (loopback, private ranges) may be fetched from at all."""
    sources: tuple[str, ...] = ()
    """``host:port`` pairs (or base URLs) allowed even if their addresses are not public."""
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    """Longest wait for the next bytes."""
    total_timeout: float = 1800.0
    """Longest time for the whole download (a server trickling bytes can't hold it longer)."""

    def allows_source(self, host: str, port: int) -> bool:
        wanted = f"{host}:{port}".lower()
        for source in self.sources:
            if "://" in source:
                parsed = urllib.parse.urlsplit(source)
                source = f"{parsed.hostname}:{parsed.port or _default_port(parsed.scheme)}"
            if source.lower() == wanted:
                return True
        return False


Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total or ``None``) about once a second."""


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _checked_address(url: httpx.URL, policy: FetchPolicy) -> str:
    """The address to connect to for ``url``, once every address it names is allowed."""
    if url.scheme not in ("http", "https"):
        raise FetchError(f"images are fetched over http or https only, not {url.scheme!r}")
    host = url.host
    if not host:
        raise FetchError(f"the image URL {url} names no host")
    port = url.port or _default_port(url.scheme)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchError(f"cannot resolve the image host {host!r}: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise FetchError(f"the image host {host!r} has no address")
    if not (policy.allow_private or policy.allows_source(host, port)):
        private = [a for a in addresses if not _is_public(a)]
        if private:
            raise FetchError(
                f"the image URL's host {host!r} is at {', '.join(private)}, which is not a "
                "public address: this provider fetches images from the internet only (its "
                "owner may allow a local source with --image-source)")
    return addresses[0]


async def download(url: str, dest: Path, expected_sha3: str, policy: FetchPolicy,
                   progress: Progress | None = None) -> int:
    """Fetch ``url`` into ``dest`` (created new), checking its size and its SHA3 against
    ``expected_sha3`` (224, 256, 384 or 512 bits, by its length). Returns the size."""
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _download(url, dest, expected_sha3, policy, progress)
    except TimeoutError:
        raise FetchError(f"fetching the image from {url} took over "
                         f"{policy.total_timeout:g}s") from None


async def _download(url: str, dest: Path, expected_sha3: str, policy: FetchPolicy,
                    progress: Progress | None) -> int:
    algorithm = {56: hashlib.sha3_224, 64: hashlib.sha3_256, 96: hashlib.sha3_384,
                 128: hashlib.sha3_512}.get(len(expected_sha3))
    if algorithm is None:
        raise FetchError(f"the image hash {expected_sha3!r} is not a SHA3 digest")
    digest = algorithm()
    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    current = httpx.URL(url)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = await _checked_address(current, policy)
            request_url, headers = current, {}
            if current.scheme == "http":
                # Connect to the address checked above, not to a second DNS answer.
                request_url = current.copy_with(host=address)
                headers["Host"] = current.netloc.decode()
            try:
                async with client.stream("GET", request_url, headers=headers) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(f"{current} redirects without a Location")
                        current = current.join(location)
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"fetching the image from {current} failed: HTTP "
                                         f"{response.status_code} {response.reason_phrase}")
                    return await _save(response, dest, digest, expected_sha3, policy, progress,
                                       str(current))
            except httpx.RemoteProtocolError as exc:
                # The server closed before the length it announced: a truncated image.
                raise FetchError(f"the image download from {current} was cut short: {exc}") \
                    from None
            except httpx.HTTPError as exc:
                raise FetchError(f"fetching the image from {current} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
    raise FetchError(f"the image URL {url} redirects more than {MAX_REDIRECTS} times")


async def _save(response: httpx.Response, dest: Path, digest: hashlib._Hash, expected: str,
                policy: FetchPolicy, progress: Progress | None, url: str) -> int:
    total: int | None = None
    declared = response.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise FetchError(f"the image server sent a malformed Content-Length {declared!r}")
        total = int(declared)
        if total > policy.max_bytes:
            raise FetchError(f"the image at {url} is {total} bytes, over this provider's limit "
                             f"of {policy.max_bytes} bytes")
    received = 0
    last = time.monotonic()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        async for chunk in response.aiter_raw(1 << 20):
            received += len(chunk)
            if received > policy.max_bytes:
                raise FetchError(f"the image at {url} is over this provider's limit of "
                                 f"{policy.max_bytes} bytes")
            digest.update(chunk)
            await asyncio.to_thread(out.write, chunk)
            if progress is not None and time.monotonic() - last >= _PROGRESS_EVERY_SEC:
                last = time.monotonic()
                progress(received, total)
    if total is not None and received != total:
        raise FetchError(f"the image download from {url} was cut short: {received} of {total} "
                         "bytes")
    actual = digest.hexdigest()
    if actual != expected:
        raise FetchError(f"the image from {url} does not match its hash: expected sha3 "
                         f"{expected}, got {actual} ({received} bytes)")
    if progress is not None:
        progress(received, total)
    return received
