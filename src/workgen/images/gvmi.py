"""The GVMI file format: a squashfs root filesystem with the image's metadata appended.

Layout, as Golem's image builder writes it and its VM runtime reads it::

    <squashfs filesystem> <CRC-32 of the JSON, 4 bytes little-endian> <JSON> <len(JSON), 8 ASCII digits>

The JSON is a container configuration in Docker's spelling (``Env``, ``Entrypoint``, ``Cmd``,
``WorkingDir``, ``Volumes``, ...). An image is named by the SHA3-224 of the whole file.

Everything here reads untrusted files: sizes are checked before anything is read into memory,
and a malformed file is a :class:`GvmiError` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

SIZE_DIGITS = 8
CRC_BYTES = 4
MAX_METADATA_BYTES = 1 << 20
"""Larger metadata is refused: real images carry a few kilobytes."""
SQUASHFS_MAGIC = b"hsqs"
_SUPERBLOCK = struct.Struct("<4sIIIIHHHHHHQQQQQQQQ")
_CHUNK = 1 << 20
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class GvmiError(ValueError):
    """A file that is not a well-formed GVMI image (or metadata that cannot be one)."""


@dataclass(frozen=True)
class ImageMetadata:
    """What an image says about how its commands run."""

    env: tuple[str, ...] = ()
    """``NAME=value`` entries, applied to every command (the command's own env wins)."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    """The working directory of commands that name none ('' means the runtime's default)."""
    volumes: tuple[str, ...] = ()
    """Absolute paths that are writable per activity, besides Golem's own volumes."""
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for entry in self.env:
            name, eq, _ = entry.partition("=")
            if not eq or not _ENV_NAME_RE.fullmatch(name):
                raise GvmiError(f"an image's env entry must read NAME=value, got {entry!r}")
            if "\0" in entry:
                raise GvmiError(f"an image's env entry contains a NUL byte: {entry!r}")
        if self.working_dir and not _clean_absolute(self.working_dir):
            raise GvmiError(f"an image's working directory must be a plain absolute path, "
                            f"got {self.working_dir!r}")
        for volume in self.volumes:
            if not _clean_absolute(volume) or volume == "/":
                raise GvmiError(f"an image's volume must be a plain absolute path below /, "
                                f"got {volume!r}")
        for part in (*self.entrypoint, *self.cmd):
            if "\0" in part:
                raise GvmiError("an image's entrypoint or command contains a NUL byte")

    @property
    def env_map(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.env)

    def to_json(self) -> dict[str, Any]:
        """Docker's container configuration keys, as Golem's builder writes them."""
        config: dict[str, Any] = {"Env": list(self.env), "Volumes": {v: {} for v in self.volumes},
                                  "WorkingDir": self.working_dir}
        if self.entrypoint:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            config["Cmd"] = list(self.cmd)
        if self.labels:
            config["Labels"] = dict(self.labels)
        return config

    @classmethod
    def from_json(cls, config: object) -> ImageMetadata:
        if not isinstance(config, dict):
            raise GvmiError(f"an image's metadata must be a JSON object, got {type(config).__name__}")
        volumes = config.get("Volumes") or {}
        if not isinstance(volumes, dict):
            raise GvmiError("an image's Volumes must be an object of paths")
        labels = config.get("Labels") or {}
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise GvmiError("an image's Labels must map strings to strings")
        working_dir = config.get("WorkingDir") or ""
        if not isinstance(working_dir, str):
            raise GvmiError("an image's WorkingDir must be a string")
        return cls(env=_strings(config.get("Env"), "Env"),
                   entrypoint=_strings(config.get("Entrypoint"), "Entrypoint"),
                   cmd=_strings(config.get("Cmd"), "Cmd"), working_dir=working_dir,
                   volumes=tuple(sorted(str(v) for v in volumes)), labels=dict(labels))


def _strings(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GvmiError(f"an image's {name} must be a list of strings")
    return tuple(value)


def _clean_absolute(path: str) -> bool:
    """An absolute path with no empty, ``.`` or ``..`` parts (``/`` itself included)."""
    if path == "/":
        return True
    if not path.startswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path[1:].split("/"))


@dataclass(frozen=True)
class GvmiInfo:
    """What reading a GVMI file found."""

    metadata: ImageMetadata
    squashfs_bytes: int
    """Where the filesystem ends (its superblock's ``bytes_used``)."""
    file_bytes: int


def metadata_trailer(metadata: ImageMetadata) -> bytes:
    """The bytes appended to a squashfs file to make it a GVMI image."""
    body = json.dumps(metadata.to_json(), separators=(",", ":")).encode()
    if len(body) > MAX_METADATA_BYTES:
        raise GvmiError(f"the image's metadata is {len(body)} bytes, over the "
                        f"{MAX_METADATA_BYTES} a reader accepts")
    return struct.pack("<I", zlib.crc32(body)) + body + f"{len(body):0{SIZE_DIGITS}d}".encode()


def read_gvmi(path: Path) -> GvmiInfo:
    """Read and check a GVMI file's squashfs superblock and metadata."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        squashfs_bytes = _squashfs_bytes(f, size)
        metadata = _read_trailer(f, size, squashfs_bytes)
    return GvmiInfo(metadata, squashfs_bytes, size)


def _squashfs_bytes(f: BinaryIO, size: int) -> int:
    head = f.read(_SUPERBLOCK.size)
    if len(head) < _SUPERBLOCK.size or head[:4] != SQUASHFS_MAGIC:
        raise GvmiError("not a GVMI image: it does not start with a squashfs filesystem")
    fields = _SUPERBLOCK.unpack(head)
    major, minor = fields[9], fields[10]
    if (major, minor) != (4, 0):
        raise GvmiError(f"squashfs version {major}.{minor} is not supported (only 4.0)")
    bytes_used = fields[13]
    if not _SUPERBLOCK.size <= bytes_used <= size:
        raise GvmiError(f"the squashfs filesystem claims {bytes_used} bytes but the file has "
                        f"{size}: it is truncated or corrupt")
    return int(bytes_used)


def _read_trailer(f: BinaryIO, size: int, squashfs_bytes: int) -> ImageMetadata:
    # The filesystem is padded to 4 KiB by its writer, so the metadata starts at or after its end.
    trailer = size - squashfs_bytes
    if trailer < SIZE_DIGITS + CRC_BYTES:
        raise GvmiError("the image has no metadata after its filesystem (is it a plain "
                        "squashfs file, or truncated?)")
    f.seek(size - SIZE_DIGITS)
    digits = f.read(SIZE_DIGITS)
    if not digits.isdigit():
        raise GvmiError(f"the image's metadata length is not {SIZE_DIGITS} digits: {digits!r}")
    length = int(digits)
    if length > MAX_METADATA_BYTES or length + SIZE_DIGITS + CRC_BYTES > trailer:
        raise GvmiError(f"the image's metadata length {length} does not fit the file")
    f.seek(size - SIZE_DIGITS - length - CRC_BYTES)
    (crc,) = struct.unpack("<I", f.read(CRC_BYTES))
    body = f.read(length)
    if zlib.crc32(body) != crc:
        raise GvmiError("the image's metadata fails its CRC check: the file is corrupt")
    try:
        config = json.loads(body)
    except ValueError as exc:
        raise GvmiError(f"the image's metadata is not JSON: {exc}") from None
    return ImageMetadata.from_json(config)


def sha3_224_file(path: Path) -> str:
    """The image's name: SHA3-224 of the whole file, in hex (as ``sha3sum -a 224`` prints)."""
    digest = hashlib.sha3_224()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


