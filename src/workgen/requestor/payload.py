"""The VM payload: which image a task runs in and what a provider must have to run it.

:func:`repo` builds a :class:`VmPayload`, which the engine turns into demand properties (the
image, in Golem's ``golem.srv.comp.*`` terms) and constraint clauses (memory, storage, threads,
runtime, capabilities). Nothing is fetched here: a backend resolves the image, by hash or tag,
from its own store (the local network) or a registry (yagna), and reports an image it cannot
resolve. Building is synchronous, but a payload is also awaitable, so yapapi's
``await vm.repo(...)`` works unchanged.

Which image arguments go together:

* ``image_hash``: the SHA3 (hex) of a GVMI image, which providers check the download against;
  with ``image_url`` if the image lives outside the registry (a URL alone can't be verified, so
  it needs the hash);
* ``image_tag`` (``name:version`` or ``owner/name:version``): a registry name that the backend
  resolves to a hash and a URL;
* not both a hash and a tag: one image, named one way, so the two can never disagree;
* neither: the backend's default image (the local network's development image).
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from ..images.store import TAG_RE
from ..protocol.constraints import compare
from ..protocol.properties import (
    SRV_COMP_VM_IMAGE_TAG,
    INF_CPU_THREADS,
    INF_MEM_GIB,
    INF_STORAGE_GIB,
    RUNTIME_CAPABILITIES,
    RUNTIME_NAME,
    SRV_COMP_TASK_PACKAGE,
    SRV_COMP_VM_PACKAGE_FORMAT,
)

__all__ = ["SRV_COMP_VM_IMAGE_TAG", "VmPayload", "repo"]

# Our own property (not a Golem standard one): the tag a backend resolves to an image.
PACKAGE_FORMAT_GVMKIT_SQUASH = "gvmkit-squash"
RUNTIME_VM = "vm"

# SHA3-224 (what gvmkit-build prints), -256, -384 and -512, in hex digits.
_HASH_LENGTHS = (56, 64, 96, 128)
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_CAPABILITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _size(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of GiB, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class VmPayload:
    """A VM image reference plus the resources it needs; validated and normalised on creation."""

    image_hash: str | None = None
    image_tag: str | None = None
    image_url: str | None = None
    min_mem_gib: float = 0.5
    min_storage_gib: float = 2.0
    min_cpu_threads: int = 1
    capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Validated here rather than only in repo(), so that no invalid payload can exist.
        image_hash, tag, url = self.image_hash, self.image_tag, self.image_url
        if image_hash is not None:
            if not isinstance(image_hash, str):
                raise TypeError(f"image_hash must be a str, got {image_hash!r}")
            if not _HEX_RE.fullmatch(image_hash) or len(image_hash) not in _HASH_LENGTHS:
                lengths = " or ".join(map(str, _HASH_LENGTHS))
                raise ValueError(
                    f"image_hash must be a SHA3 digest in hex ({lengths} digits, as"
                    f" `sha3sum -a 224 image.gvmi` prints), got {image_hash!r}"
                )
            # Digests are compared as text by providers and image stores: one spelling.
            object.__setattr__(self, "image_hash", image_hash.lower())
        if tag is not None:
            if not isinstance(tag, str):
                raise TypeError(f"image_tag must be a str, got {tag!r}")
            if not TAG_RE.fullmatch(tag):
                raise ValueError(
                    f"image_tag must look like 'name:version' or 'owner/name:version', got {tag!r}"
                )
            if image_hash is not None:
                raise ValueError("give image_hash or image_tag, not both")
        if url is not None:
            if not isinstance(url, str):
                raise TypeError(f"image_url must be a str, got {url!r}")
            if "://" not in url or any(char.isspace() for char in url):
                raise ValueError(f"image_url must be an absolute URL, got {url!r}")
            if image_hash is None:
                raise ValueError(
                    "image_url needs image_hash: providers verify the downloaded image against it"
                    + (" (a tag is resolved by the backend, not fetched from a URL)" if tag else "")
                )
        object.__setattr__(self, "min_mem_gib", _size(self.min_mem_gib, "min_mem_gib"))
        object.__setattr__(
            self, "min_storage_gib", _size(self.min_storage_gib, "min_storage_gib")
        )
        threads = self.min_cpu_threads
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise TypeError(f"min_cpu_threads must be an int, got {threads!r}")
        if threads < 1:
            raise ValueError(f"min_cpu_threads must be at least 1, got {threads!r}")
        object.__setattr__(self, "capabilities", _capabilities(self.capabilities))

    @property
    def names_image(self) -> bool:
        """Whether an image is named; if not, the backend runs its default image."""
        return self.image_hash is not None or self.image_tag is not None

    def properties(self) -> dict[str, object]:
        """The demand properties that name the image (empty when none is named)."""
        props: dict[str, object] = {}
        if self.image_hash is not None:
            # Golem's task package: the digest, then where to get the image ("" if unknown).
            props[SRV_COMP_TASK_PACKAGE] = f"hash:sha3:{self.image_hash}:{self.image_url or ''}"
        if self.image_tag is not None:
            props[SRV_COMP_VM_IMAGE_TAG] = self.image_tag
        if self.names_image:
            props[SRV_COMP_VM_PACKAGE_FORMAT] = PACKAGE_FORMAT_GVMKIT_SQUASH
        return props

    def constraints(self) -> list[str]:
        """The constraint clauses a provider's offer must satisfy, one per requirement."""
        clauses = [
            compare(INF_MEM_GIB, ">=", self.min_mem_gib),
            compare(INF_STORAGE_GIB, ">=", self.min_storage_gib),
            compare(INF_CPU_THREADS, ">=", self.min_cpu_threads),
            compare(RUNTIME_NAME, "=", RUNTIME_VM),
            # An offer lists its capabilities; "=" on a list property holds if any item equals.
            *(compare(RUNTIME_CAPABILITIES, "=", cap) for cap in self.capabilities),
        ]
        return [str(clause) for clause in clauses]

    def __await__(self) -> Generator[object, None, VmPayload]:
        # yapapi's vm.repo() is a coroutine; awaiting ours just gives the payload back.
        return self._resolved().__await__()

    async def _resolved(self) -> VmPayload:
        return self


def _capabilities(values: object) -> tuple[str, ...]:
    # A bare string is a sequence too, and would silently become one capability per character.
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"capabilities must be a list or tuple of str, got {values!r}")
    seen: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str) or not _CAPABILITY_RE.fullmatch(value):
            raise ValueError(
                f"capabilities must be names like 'vpn' or 'manifest-support', got {value!r}"
            )
        seen.setdefault(value)  # a dict keeps the first-seen order; a repeat adds nothing
    return tuple(seen)


def repo(
    *,
    image_hash: str | None = None,
    image_tag: str | None = None,
    image_url: str | None = None,
    min_mem_gib: float = 0.5,
    min_storage_gib: float = 2.0,
    min_cpu_threads: int = 1,
    capabilities: Sequence[str] | None = None,
) -> VmPayload:
    """A VM payload; see the module docstring for which image arguments go together.

    Raises :class:`ValueError` for a bad value (a hash that is not a hex SHA3 digest, a tag not
    shaped ``[owner/]name:version``, a URL without a hash, both a hash and a tag, a negative
    size, fewer than one thread) and :class:`TypeError` for an argument of the wrong type.
    Usable plainly or awaited: ``vm.repo(...)`` and ``await vm.repo(...)`` are the same payload.
    """
    if capabilities is not None and isinstance(capabilities, (str, bytes)):
        raise TypeError(f"capabilities must be a list of str, not one string: {capabilities!r}")
    return VmPayload(
        image_hash=image_hash,
        image_tag=image_tag,
        image_url=image_url,
        min_mem_gib=min_mem_gib,
        min_storage_gib=min_storage_gib,
        min_cpu_threads=min_cpu_threads,
        capabilities=tuple(capabilities or ()),
    )
