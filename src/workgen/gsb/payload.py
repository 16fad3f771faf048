"""GSB payloads: serde values as flexbuffers, the way ya-service-bus encodes a call's data.

A value is a dict, list, str, bytes, int, float, bool or None; a reply is a serde ``Result``
(``{"Ok": v}`` or ``{"Err": e}``). Both directions are hand-written so that a megabyte blob is
neither copied into a payload on its way out (the encoder hands it on as a piece of its own)
nor out of one on its way in (``blob_views``). Frames and messages are :mod:`.codec`'s.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final, TypeAlias

from .errors import GsbProtocolError, GsbRemoteError

Buffer: TypeAlias = bytes | bytearray | memoryview
# A compressed payload may not inflate beyond this (a zlib bomb must not exhaust memory).
MAX_PAYLOAD_SIZE: Final = 256 * 1024 * 1024
_MAX_NESTING: Final = 200
# Buffers at least this long are referenced by the encoders' pieces instead of copied, and
# frames at least this long are received in place.
BY_REFERENCE: Final = 64 * 1024


def ok(value: Any) -> dict[str, Any]:
    """A successful serde ``Result``: ``{"Ok": value}``."""
    return {"Ok": value}


def err(error: Any) -> dict[str, Any]:
    """A failed serde ``Result``: ``{"Err": error}`` (services put an error enum here)."""
    return {"Err": error}


def unwrap_result(value: Any, *, address: str = "") -> Any:
    """The ``v`` of ``{"Ok": v}``; raises :class:`GsbRemoteError` for ``{"Err": e}``."""
    if isinstance(value, dict) and len(value) == 1:
        if "Ok" in value:
            return value["Ok"]
        if "Err" in value:
            raise GsbRemoteError(value["Err"], address=address)
    raise GsbProtocolError(f"reply is not a serde Result ({{'Ok': ...}} or {{'Err': ...}}): {value!r}")


def encode_payload(value: Any) -> bytes:
    """``value`` as serde would write it in flexbuffers.

    ``None`` is unit / ``Option::None``, dicts are structs and maps (``str`` keys), lists and
    tuples are sequences, ``bytes`` (or any buffer) are blobs (``serde_bytes``), floats are f64.
    Anything else is a ``TypeError``; an int beyond 64 bits or a key with a NUL is a
    ``ValueError``.
    """
    return b"".join(encode_payload_parts(value))


def encode_payload_parts(value: Any) -> list[Buffer]:
    """:func:`encode_payload` in consecutive pieces, large blobs among them uncopied.

    A GFTP chunk is a blob of a megabyte or more: it goes to the socket as the very buffer it
    was read into rather than being copied into the payload, then into the frame.
    """
    encoder = _Encoder()
    return encoder.finish(encoder.add(value, 0))


# flexbuffers' type codes (flexbuffers.h), those serde writes and reads.
_NULL, _INT, _UINT, _FLOAT, _KEY, _STRING = 0, 1, 2, 3, 4, 5
_INDIRECT_INT, _INDIRECT_UINT, _INDIRECT_FLOAT = 6, 7, 8
_MAP, _VECTOR, _VECTOR_INT, _VECTOR_KEY, _VECTOR_STRING = 9, 10, 11, 14, 15
_VECTOR_INT2, _VECTOR_FLOAT4, _BLOB, _BOOL, _VECTOR_BOOL = 16, 24, 25, 26, 36

_Value: TypeAlias = tuple[int, Any, int]
"""A value written or to be written: (type code, scalar or absolute position, bit width code)."""


def _width_of_uint(value: int) -> int:
    return 0 if value < 1 << 8 else 1 if value < 1 << 16 else 2 if value < 1 << 32 else 3


def _width_of_int(value: int) -> int:
    value *= 2
    return _width_of_uint(value if value >= 0 else ~value)


def _is_inline(kind: int) -> bool:
    return kind <= _FLOAT or kind == _BOOL


class _Encoder:
    """A flexbuffers writer that lays out bytes exactly as the reference builder does (the
    ``flatbuffers`` package's, which matches flexbuffers.h): values first, each vector or map
    after its elements, the root last. Widths are the narrowest that fit; map keys are sorted.
    The output is a list of pieces, so a large blob is never copied into it.
    """

    def __init__(self) -> None:
        self._parts: list[Buffer] = []
        self._buf = bytearray()
        self._flushed = 0  # bytes in self._parts

    @property
    def _pos(self) -> int:
        return self._flushed + len(self._buf)

    def _align(self, bit_width: int) -> int:
        byte_width = 1 << bit_width
        self._buf += bytes(-self._pos & (byte_width - 1))
        return byte_width

    def _elem_width(self, value: _Value, pos: int, index: int) -> int:
        kind, where, bit_width = value
        if _is_inline(kind):
            return bit_width
        for byte_width in (1, 2, 4, 8):  # the offset's width depends on the padding before it
            loc = pos + (-pos & (byte_width - 1)) + index * byte_width
            width = _width_of_uint(loc - where)
            if byte_width == 1 << width:
                return width
        raise ValueError("flexbuffers offset too large")

    def _write(self, value: _Value, byte_width: int) -> None:
        kind, scalar, _ = value
        if kind == _FLOAT:
            self._buf += struct.pack("<d" if byte_width == 8 else "<f", scalar)
        elif _is_inline(kind):
            self._buf += int(scalar).to_bytes(byte_width, "little", signed=kind == _INT)
        else:
            self._buf += (self._pos - scalar).to_bytes(byte_width, "little")

    def _blob(self, data: Buffer, kind: int) -> _Value:
        bit_width = _width_of_uint(len(data))
        self._buf += len(data).to_bytes(self._align(bit_width), "little")
        loc = self._pos
        if len(data) >= BY_REFERENCE:
            self._parts.append(self._buf)
            self._parts.append(data)
            self._flushed += len(self._buf) + len(data)
            self._buf = bytearray()
        else:
            self._buf += data
        if kind == _STRING:
            self._buf.append(0)
        return kind, loc, bit_width

    def _vector(self, elements: list[_Value], *, typed: bool = False,
                keys: _Value | None = None) -> _Value:
        # The hot path of every message: _pos, _elem_width and _write inlined, by hand.
        buf = self._buf
        pos = self._flushed + len(buf)
        bit_width, prefix = _width_of_uint(len(elements)), 1
        if keys is not None:
            bit_width, prefix = max(bit_width, self._elem_width(keys, pos, 0)), 3
        for i, element in enumerate(elements):
            kind, where, width = element
            if not (kind <= _FLOAT or kind == _BOOL):
                # An offset that fits a byte from where a byte-wide element would sit does:
                # the rest of this vector's bytes come after.
                width = 0 if pos + prefix + i - where < 256 else \
                    self._elem_width(element, pos, prefix + i)
            if width > bit_width:
                bit_width = width
        byte_width = 1 << bit_width
        buf += bytes(-pos & (byte_width - 1))
        if keys is not None:
            self._write(keys, byte_width)
            buf += (1 << keys[2]).to_bytes(byte_width, "little")
        buf += len(elements).to_bytes(byte_width, "little")
        loc = self._flushed + len(buf)
        at = loc
        for kind, scalar, _ in elements:
            if kind == _INT or kind == _UINT or kind == _BOOL or kind == _NULL:
                buf += int(scalar).to_bytes(byte_width, "little", signed=kind == _INT)
            elif kind == _FLOAT:
                buf += struct.pack("<d" if byte_width == 8 else "<f", scalar)
            else:
                buf += (at - scalar).to_bytes(byte_width, "little")
            at += byte_width
        if not typed:
            buf += bytes([kind << 2 | (max(width, bit_width) if kind <= _FLOAT or kind == _BOOL
                                       else width) for kind, _, width in elements])
        return (_MAP if keys is not None else _VECTOR_KEY if typed else _VECTOR), loc, bit_width

    def add(self, value: Any, depth: int) -> _Value:
        """Writes ``value`` (checking it: see :func:`encode_payload`) and what it contains."""
        if depth > _MAX_NESTING:
            raise ValueError("payload nested too deeply")
        kind = type(value)  # the exact types first: messages are made of little else
        if kind is str:
            return self._blob(value.encode("utf-8"), _STRING)
        if kind is dict:
            return self._map(value, depth)
        if kind is list or kind is tuple:
            return self._vector([self.add(item, depth + 1) for item in value])
        if value is None:
            return _NULL, 0, 0
        if isinstance(value, bool):  # before int: a bool is an int in Python
            return _BOOL, int(value), 0
        if isinstance(value, int):
            if value < -(1 << 63) or value >= 1 << 64:
                raise ValueError(f"integer {value} does not fit in 64 bits")
            if value < 1 << 63:
                return _INT, value, _width_of_int(value)
            return _UINT, value, _width_of_uint(value)  # u64 values above i64::MAX
        if isinstance(value, float):
            return _FLOAT, value, 3  # always f64, as serde writes an f64
        if isinstance(value, str):
            return self._blob(value.encode("utf-8"), _STRING)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._blob(value, _BLOB)
        if isinstance(value, dict):
            return self._map(value, depth)
        if isinstance(value, (list, tuple)):
            return self._vector([self.add(item, depth + 1) for item in value])
        raise TypeError(f"cannot encode {type(value).__name__} as a GSB payload")

    def _map(self, value: dict[Any, Any], depth: int) -> _Value:
        pairs = []
        buf = self._buf
        for key, item in value.items():  # keys are written where the builder writes them
            if not isinstance(key, str):
                raise TypeError(f"payload map keys must be str, not {type(key).__name__}")
            if "\0" in key:
                raise ValueError(f"payload map key {key!r} contains NUL")
            raw = key.encode("utf-8")
            loc = self._flushed + len(buf)
            buf += raw
            buf.append(0)
            pairs.append((raw, (_KEY, loc, 0), self.add(item, depth + 1)))
            buf = self._buf  # a large blob inside starts a new piece
        pairs.sort(key=lambda pair: pair[0])  # readers look keys up by binary search
        keys = self._vector([key for _, key, _ in pairs], typed=True)
        return self._vector([item for _, _, item in pairs], keys=keys)

    def finish(self, root: _Value) -> list[Buffer]:
        byte_width = self._align(self._elem_width(root, self._pos, 0))
        self._write(root, byte_width)
        kind, _, width = root
        self._buf.append(kind << 2 | width)  # the root's parent width is 8 bits
        self._buf.append(byte_width)
        self._parts.append(self._buf)
        return self._parts


def _maybe_zlib(data: memoryview) -> bool:
    # RFC 1950's header: deflate (CM 8) and a check making the first two bytes a multiple of 31.
    # A flexbuffers payload seldom passes; when it does, inflating it fails at once.
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def decode_payload(data: Buffer, *, blob_views: bool = False) -> Any:
    """The value in a call's or reply's ``data``: zlib-inflated first if it is compressed.

    yagna may compress (ya-service-bus tries zlib first, then reads plain flexbuffers); a
    flexbuffers buffer never passes zlib's header and checksum, so the order is safe. Blobs
    come back as ``bytes``, copied out of ``data``, so nothing returned keeps ``data`` alive;
    with ``blob_views``, as read-only views of it instead (for bulk data that is written out
    and dropped: a GFTP chunk).
    """
    view = memoryview(data).cast("B").toreadonly()
    if _maybe_zlib(view):
        try:
            inflater = zlib.decompressobj()
            inflated = inflater.decompress(view, MAX_PAYLOAD_SIZE)
        except zlib.error:
            pass
        else:
            if inflater.unconsumed_tail:
                raise GsbProtocolError(
                    f"compressed payload inflates beyond {MAX_PAYLOAD_SIZE} bytes")
            if inflater.eof:
                view = memoryview(inflated)
    size = len(view)
    if size < 3 or view[-1] not in (1, 2, 4, 8):
        raise GsbProtocolError(f"not a flexbuffers payload ({size} bytes)")
    try:
        return _Decoder(view, blob_views).value(size - 2 - view[-1], view[-1], view[-2], 0)
    except GsbProtocolError:
        raise
    except (IndexError, ValueError, struct.error, RecursionError) as exc:
        raise GsbProtocolError(f"malformed flexbuffers payload: {exc}") from exc


_UNPACK_UINT: Final = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_UNPACK_INT: Final = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}
_UNPACK_FLOAT: Final = {4: "<f", 8: "<d"}


class _Decoder:
    """Reads flexbuffers (as serde and :class:`_Encoder` write them) straight off a buffer.

    Offsets point backwards, so a malformed buffer cannot loop forever; every position is
    checked, as a negative one would silently wrap around.
    """

    def __init__(self, buf: memoryview, blob_views: bool) -> None:
        self._buf = buf
        self._blob_views = blob_views

    def _unpack(self, formats: dict[int, str], pos: int, width: int) -> Any:
        fmt = formats.get(width)
        if fmt is None:
            raise GsbProtocolError(f"flexbuffers scalar of {width} bytes")
        if pos < 0:
            raise GsbProtocolError("flexbuffers offset out of the buffer")
        return struct.unpack_from(fmt, self._buf, pos)[0]

    def _target(self, pos: int, width: int) -> int:
        target: int = pos - self._unpack(_UNPACK_UINT, pos, width)
        if not 0 <= target < len(self._buf):
            raise GsbProtocolError("flexbuffers offset out of the buffer")
        return target

    def _sized(self, target: int, width: int) -> memoryview:
        size = self._unpack(_UNPACK_UINT, target - width, width)
        if target + size > len(self._buf):
            raise GsbProtocolError("flexbuffers string or blob overruns the buffer")
        return self._buf[target:target + size]

    def _key(self, target: int) -> str:
        end = target
        buf = self._buf
        while buf[end]:  # keys are short: a loop beats copying the rest of the buffer to find NUL
            end += 1
        return str(buf[target:end], "utf-8")

    def value(self, pos: int, parent_width: int, packed: int, depth: int) -> Any:
        if depth > _MAX_NESTING:
            raise GsbProtocolError("payload nested too deeply")
        kind, width = packed >> 2, 1 << (packed & 3)
        if kind == _NULL:
            return None
        if kind == _INT:
            return self._unpack(_UNPACK_INT, pos, parent_width)
        if kind == _UINT:
            return self._unpack(_UNPACK_UINT, pos, parent_width)
        if kind == _FLOAT:
            return self._unpack(_UNPACK_FLOAT, pos, parent_width)
        if kind == _BOOL:
            return bool(self._unpack(_UNPACK_UINT, pos, parent_width))
        target = self._target(pos, parent_width)
        if kind in (_INDIRECT_INT, _INDIRECT_UINT, _INDIRECT_FLOAT):
            formats = {_INDIRECT_INT: _UNPACK_INT, _INDIRECT_UINT: _UNPACK_UINT}
            return self._unpack(formats.get(kind, _UNPACK_FLOAT), target, width)
        if kind == _KEY:
            return self._key(target)
        if kind == _STRING:
            return str(self._sized(target, width), "utf-8")
        if kind == _BLOB:
            blob = self._sized(target, width)
            return blob if self._blob_views else bytes(blob)
        if kind == _MAP:
            return self._map(target, width, depth)
        if kind == _VECTOR:
            size = self._unpack(_UNPACK_UINT, target - width, width)
            types = target + size * width
            return [self.value(target + i * width, width, self._buf[types + i], depth + 1)
                    for i in range(size)]
        if _VECTOR_INT <= kind <= _VECTOR_STRING or kind == _VECTOR_BOOL:
            size = self._unpack(_UNPACK_UINT, target - width, width)
            element = _BOOL if kind == _VECTOR_BOOL else kind - _VECTOR_INT + _INT
            return self._typed(target, width, element, size, depth)
        if _VECTOR_INT2 <= kind <= _VECTOR_FLOAT4:
            size, element = divmod(kind - _VECTOR_INT2, 3)
            return self._typed(target, width, element + _INT, size + 2, depth)
        raise GsbProtocolError(f"unsupported flexbuffers type {kind}")

    def _typed(self, target: int, width: int, element: int, size: int, depth: int) -> list[Any]:
        if target + size * width > len(self._buf):
            raise GsbProtocolError("flexbuffers vector overruns the buffer")
        packed = element << 2 | (width.bit_length() - 1)  # (a string's size is as wide)
        return [self.value(target + i * width, width, packed, depth + 1) for i in range(size)]

    def _map(self, target: int, width: int, depth: int) -> dict[str, Any]:
        size = self._unpack(_UNPACK_UINT, target - width, width)
        keys = self._target(target - 3 * width, width)
        keys_width = self._unpack(_UNPACK_UINT, target - 2 * width, width)
        types = target + size * width
        if types + size > len(self._buf):
            raise GsbProtocolError("flexbuffers map overruns the buffer")
        result = {}
        for i in range(size):
            # Keys decode as UTF-8: serde writes any text in a HashMap<String, _>'s keys.
            key = self._key(self._target(keys + i * keys_width, keys_width))
            result[key] = self.value(target + i * width, width, self._buf[types + i], depth + 1)
        return result
