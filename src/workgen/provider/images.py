"""A provider's image store: which root filesystem an activity's sandbox runs on.

A demand names its image as Golem's payloads do, with ``golem.srv.comp.task_package``
(``hash:sha3:<hex>:<url>``), and/or with :data:`IMAGE_TAG` (``golem.srv.comp.vm.image_tag``)
naming a tag. The store maps hashes and tags to root directories registered with
:meth:`ImageStore.register`. A demand that names no image runs on the host's system directories
(the *host image*). An image that cannot be resolved is :class:`~workgen.errors.ImageNotFound`,
unless development mode is on: then it runs on the host image and one warning line says so.
Both the local network's providers and the Python provider on yagna resolve images here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageNotFound
from ..protocol.properties import SRV_COMP_TASK_PACKAGE, SRV_COMP_VM_IMAGE_TAG

log = logging.getLogger(__name__)

IMAGE_TAG = SRV_COMP_VM_IMAGE_TAG
"""Demand property naming an image by tag."""

DEV_IMAGES_ENV = "WORKGEN_DEV_IMAGES"
"""Set to ``1`` to run unknown images on the host image (development mode)."""

_HEX_RE = re.compile(r"[0-9a-f]+")


def _normalize_hash(value: str) -> str:
    text = value.strip().lower()
    text = text.removeprefix("sha3:")
    if not _HEX_RE.fullmatch(text):
        raise ValueError(f"an image hash is hex digits (optionally after 'sha3:'), got {value!r}")
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


class ImageResolver:
    """Resolves demands to roots for one network, warning once per image in development mode."""

    def __init__(self, store: ImageStore, *, dev_images: bool, owner: str = "this provider",
                 remedy: str = "register its root directory with ImageStore.register(rootfs, "
                               "hash=..., tags=[...]), or run in development mode "
                               f"({DEV_IMAGES_ENV}=1) to use the host system image instead"):
        self.store = store
        self.dev_images = dev_images
        self._owner = owner
        self._remedy = remedy
        self._warned: set[ImageRequest] = set()

    def resolve(self, properties: Mapping[str, object]) -> Path | None:
        """The rootfs for a demand's image; ``None`` means the host image.

        Raises :class:`~workgen.errors.ImageNotFound` for an unknown image (outside dev mode).
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
        if not self.dev_images:
            raise ImageNotFound(
                f"image {request.describe()} is not in {self._owner}'s image store: "
                f"{self._remedy}"
            )
        if request not in self._warned:
            self._warned.add(request)
            log.warning("development mode: image %s is unknown, running it on the host "
                        "system image", request.describe())
        return None
