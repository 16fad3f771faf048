"""Which root filesystem an activity's sandbox runs on, and where it comes from.

A demand names its image as Golem's payloads do, with ``golem.srv.comp.task_package``
(``hash:sha3:<hex>:<url>``), and/or with :data:`IMAGE_TAG` (``golem.srv.comp.vm.image_tag``)
naming a tag. The provider looks, in order:

1. in its :class:`ImageStore`: root directories registered by hash or tag (a development aid);
2. in its image files (:class:`~workgen.images.store.ImageFiles`, what ``workgen image`` builds
   and adds), by hash or tag;
3. in its cache of unpacked images, by hash;
4. at the demand's URL, if it fetches images (:class:`~.fetch.FetchPolicy`).

Images of 2 to 4 are GVMI files, prepared at ``deploy`` (:class:`GvmiImage`): fetched, checked
against their hash, unpacked once into the cache. A demand that names no image runs on the
host's system directories (the *host image*). An image found nowhere is
:class:`~workgen.errors.ImageNotFound`, unless development mode is on: then it runs on the host
image and one warning line says so. Both the local network's providers and the Python provider
on yagna resolve images here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import ImageNotFound
from ...images.gvmi import sha3_224_file
from ...images.store import ImageFiles
from ...protocol.properties import SRV_COMP_TASK_PACKAGE, SRV_COMP_VM_IMAGE_TAG
from .cache import ImageCache, ImageLease, ImageUnavailable
from .fetch import FetchError, FetchPolicy, download

log = logging.getLogger(__name__)

IMAGE_TAG = SRV_COMP_VM_IMAGE_TAG
"""Demand property naming an image by tag."""

DEV_IMAGES_ENV = "WORKGEN_DEV_IMAGES"
"""Set to ``1`` to run unknown images on the host image (development mode)."""

_HEX_RE = re.compile(r"[0-9a-f]+")


def _normalize_hash(value: str) -> str:
    text = value.strip().lower()
    text = text.removeprefix("sha3:")
    if not _HEX_RE.fullmatch(text) or len(text) not in (56, 64, 96, 128):
        raise ValueError("an image hash is a SHA3 digest in hex, 56, 64, 96 or 128 digits "
                         f"(optionally after 'sha3:'), got {value!r}")
    return text


@dataclass(frozen=True)
class ImageRequest:
    """What a demand asks for: a hash (from the task package) and/or a tag; both may be absent."""

    hash: str | None = None
    url: str | None = None
    tag: str | None = None

    @property
    def is_host(self) -> bool:
        return self.hash is None and self.tag is None

    def describe(self) -> str:
        parts = []
        if self.hash is not None:
            parts.append(f"hash {self.hash}" + (f" ({self.url})" if self.url else ""))
        if self.tag is not None:
            parts.append(f"tag {self.tag!r}")
        return " / ".join(parts) or "the host image"

    @classmethod
    def from_properties(cls, properties: Mapping[str, object]) -> ImageRequest:
        """Read a (flat) demand's image properties; a malformed one is a ``ValueError``."""
        package = properties.get(SRV_COMP_TASK_PACKAGE)
        tag = properties.get(IMAGE_TAG)
        if tag is not None and (not isinstance(tag, str) or not tag):
            raise ValueError(f"{IMAGE_TAG} must be a non-empty string, got {tag!r}")
        if package is None:
            return cls(tag=tag)
        if not isinstance(package, str):
            raise ValueError(f"{SRV_COMP_TASK_PACKAGE} must be a string, got {package!r}")
        # Golem's format is hash:sha3:<hex>:<url>; the URL itself contains colons.
        fields = package.split(":", 3)
        if len(fields) < 3 or fields[0] != "hash" or fields[1] != "sha3":
            raise ValueError(
                f"{SRV_COMP_TASK_PACKAGE} must read 'hash:sha3:<hex>:<url>', got {package!r}"
            )
        url = fields[3] if len(fields) == 4 else None
        return cls(hash=_normalize_hash(fields[2]), url=url or None, tag=tag)


class ImageStore:
    """Root directories by image hash and by tag. Owned by its creator; nothing is global."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Path] = {}
        self._by_tag: dict[str, Path] = {}

    def register(
        self, rootfs: Path, *, hash: str | None = None, tags: Sequence[str] = ()
    ) -> None:
        """Make ``rootfs`` (an image's root directory) resolvable by ``hash`` and each tag.

        The directory must hold the image's system directories (``usr``, ``bin``, ...), and
        ``/usr/bin/python3``, which the sandbox's supervisor runs on.
        """
        if isinstance(tags, str):
            raise TypeError("tags is a sequence of strings, not one string")
        if hash is None and not tags:
            raise ValueError("register an image under a hash, a tag, or both")
        root = Path(rootfs).resolve()
        if not root.is_dir():
            raise ValueError(f"an image's rootfs must be a directory: {rootfs}")
        if hash is not None:
            self._by_hash[_normalize_hash(hash)] = root
        for tag in tags:
            if not tag:
                raise ValueError("an image tag must not be empty")
            self._by_tag[tag] = root

    @property
    def hashes(self) -> Mapping[str, Path]:
        return dict(self._by_hash)

    @property
    def tags(self) -> Mapping[str, Path]:
        return dict(self._by_tag)

    def lookup(self, request: ImageRequest) -> Path | None:
        """The registered root of ``request`` (hash first, then tag), or ``None``."""
        if request.hash is not None and request.hash in self._by_hash:
            return self._by_hash[request.hash]
        if request.tag is not None and request.tag in self._by_tag:
            return self._by_tag[request.tag]
        return None


@dataclass(frozen=True)
class GvmiImage:
    """A GVMI image an activity prepares at ``deploy``: from a local file or a URL."""

    hash: str
    cache: ImageCache
    file: Path | None = None
    url: str | None = None
    fetch: FetchPolicy | None = None
    host_if_unavailable: bool = False
    """Development mode: if the image can't be had, run on the host image (and say so)."""

    async def prepare(self, note: Callable[[str], None] = lambda _: None) -> ImageLease:
        """Fetch, check and unpack the image (or find it cached), and hold it.

        Raises :class:`~.cache.ImageUnavailable` with a message for the requestor."""
        return await self.cache.acquire(self.hash, self._obtain, note)

    async def _obtain(self, work: Path, note: Callable[[str], None]) -> Path:
        if self.file is not None:
            actual = await asyncio.to_thread(sha3_224_file, self.file)
            if actual != self.hash:
                raise ImageUnavailable(f"the stored image file {self.file.name} does not match "
                                       f"its hash (it is {actual}): the store is damaged")
            return self.file
        if self.url is None or self.fetch is None:
            raise ImageUnavailable(f"image {self.hash[:12]} is not cached here and the demand "
                                   "gives no URL to fetch it from")
        dest = work / "image.gvmi"
        note(f"fetching image {self.hash[:12]} from {self.url}")
        started = time.monotonic()

        def progress(done: int, total: int | None) -> None:
            note(f"fetched {_mib(done)}" + (f" of {_mib(total)}" if total else ""))

        try:
            size = await download(self.url, dest, self.hash, self.fetch, progress)
        except FetchError as exc:
            raise ImageUnavailable(str(exc)) from None
        note(f"fetched and verified image {self.hash[:12]}: {_mib(size)} in "
             f"{time.monotonic() - started:.1f}s")
        return dest


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


Image = Path | GvmiImage | None
"""What an activity runs on: a root directory, a GVMI image to prepare, or the host image."""


class ImageResolver:
    """Resolves demands to images for one network, warning once per image in development mode.

    ``files`` are the provider's image files; ``cache`` its unpacked images (the default place
    if ``None``); ``fetch`` whether and from where it downloads images (``None``: never)."""

    def __init__(self, store: ImageStore, *, dev_images: bool, owner: str = "this provider",
                 remedy: str = "register its root directory with ImageStore.register(rootfs, "
                               "hash=..., tags=[...]), or run in development mode "
                               f"({DEV_IMAGES_ENV}=1) to use the host system image instead",
                 files: ImageFiles | None = None, cache: ImageCache | None = None,
                 fetch: FetchPolicy | None = None):
        self.store = store
        self.dev_images = dev_images
        self.files = files
        self.cache = cache if cache is not None else ImageCache()
        self.fetch = fetch
        self._owner = owner
        self._remedy = remedy
        self._warned: set[ImageRequest] = set()

    def resolve(self, properties: Mapping[str, object]) -> Image:
        """The image a demand's properties name (``None``: the host image).

        Raises :class:`~workgen.errors.ImageNotFound` for an image found nowhere (outside
        development mode), or a URL this provider would not fetch from.
        """
        try:
            request = ImageRequest.from_properties(properties)
        except ValueError as exc:
            raise ImageNotFound(f"the demand's image cannot be read: {exc}") from None
        if request.is_host:
            return None
        root = self.store.lookup(request)
        if root is not None:
            return root
        image_hash = request.hash
        if self.files is not None:
            found = self.files.resolve(image_hash or request.tag or "")
            if found is not None:
                return GvmiImage(found, self.cache, file=self.files.path_of(found))
        if image_hash is not None:
            fetchable = request.url is not None and self.fetch is not None
            if fetchable:
                assert request.url is not None
                scheme = urllib.parse.urlsplit(request.url).scheme
                if scheme not in ("http", "https"):
                    raise ImageNotFound(f"image {request.describe()}: this provider fetches "
                                        f"images over http or https only, not {scheme!r}")
            if fetchable or image_hash in self.cache.cached():
                return GvmiImage(image_hash, self.cache, url=request.url, fetch=self.fetch,
                                 host_if_unavailable=self.dev_images)
        if not self.dev_images:
            raise ImageNotFound(
                f"image {request.describe()} is not in {self._owner}'s image store"
                + ("" if self.fetch is None or request.url else " and the demand gives no URL")
                + f": {self._remedy}"
            )
        if request not in self._warned:
            self._warned.add(request)
            log.warning("development mode: image %s is unknown, running it on the host "
                        "system image", request.describe())
        return None
