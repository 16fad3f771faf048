"""The GSB wire format, as a pure codec: bytes in, messages out, and back. No I/O.

The Golem Service Bus (ya-service-bus) speaks frames of a **u32 big-endian length** followed by
a protobuf ``Packet`` (``gsb_api.proto``), whose ``oneof`` carries exactly one of the messages
below, tagged with the field number in ``Packet``. A call's ``data`` is a serde value encoded as
**flexbuffers**, possibly zlib-compressed; replies are serde ``Result``s, ``{"Ok": v}`` or
``{"Err": e}``. The protobuf side is hand-written (a dozen flat messages of strings, bytes, enums
and a bool do not justify generated code), and so is flexbuffers, so that a megabyte blob is
neither copied into a payload and a frame on its way out, nor out of one on its way in.

The asyncio client in :mod:`workgen.gsb.client` owns the socket and uses only this module to
turn bytes into messages, as httpcore keeps h11 apart from its I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, ClassVar, Final, TypeAlias, Union, get_args

from .errors import GsbProtocolError, GsbRemoteError

# Reply codes, as the proto's enums spell them (one namespace: the values never clash).
CODE_OK: Final = 0
CODE_BAD_REQUEST: Final = 400  # call: no such address, bad payload; register: invalid name
CODE_NOT_FOUND: Final = 404  # unregister/unsubscribe: not registered by this connection
CODE_CONFLICT: Final = 409  # register: the prefix is taken
CODE_SERVICE_FAILURE: Final = 500  # call: the service failed or its connection was lost

# A length prefix above this is taken as garbage (say, an HTTP server answering) rather than
# a frame to wait for; GSB frames carry one call's data, GFTP chunks are well below it.
MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
# A compressed payload may not inflate beyond this (a zlib bomb must not exhaust memory).
MAX_PAYLOAD_SIZE: Final = 256 * 1024 * 1024
_MAX_NESTING: Final = 200

_HEADER = struct.Struct(">I")
# Frames are gathered in a buffer of this size; a larger one is received into its own.
_STAGING_SIZE: Final = 256 * 1024
# Buffers at least this long are referenced by the encoders' pieces instead of copied, and
# frames at least this long are received in place.
_BY_REFERENCE: Final = 64 * 1024

Buffer: TypeAlias = bytes | bytearray | memoryview


class ReplyType(enum.IntEnum):
    """``CallReply.reply_type``: a stream is PARTIAL replies ended by a FULL (possibly empty) one."""

    FULL = 0
    PARTIAL = 1


# Each message is a frozen dataclass whose fields are declared in the proto's field-number
# order (1, 2, 3, ...), so the schema is read off the dataclass; ``_TAG`` is its number in
# ``Packet``. A field's annotation gives its proto3 type: str/bytes are length-delimited,
# int (an enum code) and bool are varints. Messages of one shape share a base.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class _ServiceIdMessage:
    service_id: str = ""


@dataclass(frozen=True)
class _TopicMessage:
    topic: str = ""


@dataclass(frozen=True)
class _CodeMessage:
    code: int = CODE_OK


@dataclass(frozen=True)
class _CodeTextMessage:
    code: int = CODE_OK
    message: str = ""  # in case of errors


@dataclass(frozen=True)
class Hello:
    name: str = ""
    version: str = ""
    instance_id: bytes = b""
    _TAG: ClassVar[int] = 1


class RegisterRequest(_ServiceIdMessage):
    _TAG: ClassVar[int] = 2


class RegisterReply(_CodeTextMessage):
    _TAG: ClassVar[int] = 3


class UnregisterRequest(_ServiceIdMessage):
    _TAG: ClassVar[int] = 4


class UnregisterReply(_CodeMessage):
    _TAG: ClassVar[int] = 5


@dataclass(frozen=True)
class CallRequest:
    caller: str = ""
    address: str = ""
    request_id: str = ""
    data: Buffer = b""
    no_reply: bool = False
    _TAG: ClassVar[int] = 6


@dataclass(frozen=True)
class CallReply:
    request_id: str = ""
    code: int = CODE_OK
    reply_type: ReplyType = ReplyType.FULL
    data: Buffer = b""
    _TAG: ClassVar[int] = 7

    def __post_init__(self) -> None:
        try:  # an unknown reply type would be silently read as FULL by the router: refuse it
            object.__setattr__(self, "reply_type", ReplyType(self.reply_type))
        except ValueError:
            raise GsbProtocolError(f"unknown CallReply.reply_type {self.reply_type}") from None


class SubscribeRequest(_TopicMessage):
    _TAG: ClassVar[int] = 8


class SubscribeReply(_CodeTextMessage):
    _TAG: ClassVar[int] = 9


class UnsubscribeRequest(_TopicMessage):
    _TAG: ClassVar[int] = 10


class UnsubscribeReply(_CodeMessage):
    _TAG: ClassVar[int] = 11


@dataclass(frozen=True)
class BroadcastRequest:
    caller: str = ""
    data: Buffer = b""  # the proto numbers data 2 and topic 3
    topic: str = ""
    _TAG: ClassVar[int] = 12


class BroadcastReply(_CodeTextMessage):
    _TAG: ClassVar[int] = 13


@dataclass(frozen=True)
class Ping:
    _TAG: ClassVar[int] = 14


@dataclass(frozen=True)
class Pong:
    _TAG: ClassVar[int] = 15


GsbMessage: TypeAlias = Union[
    Hello, RegisterRequest, RegisterReply, UnregisterRequest, UnregisterReply, CallRequest,
    CallReply, SubscribeRequest, SubscribeReply, UnsubscribeRequest, UnsubscribeReply,
    BroadcastRequest, BroadcastReply, Ping, Pong,
]
_BY_TAG: Final[dict[int, type[GsbMessage]]] = {cls._TAG: cls for cls in get_args(GsbMessage)}
# ``Buffer`` fields (a call's data) decode as views of the frame, ``bytes`` ones as copies.
_KINDS: Final = {"str": "str", "bytes": "bytes", "Buffer": "buffer", "int": "int",
                 "ReplyType": "int", "bool": "bool"}
# Per message type: (field number, attribute, kind), from the declarations above.
_SCHEMA: Final[dict[type[GsbMessage], tuple[tuple[int, str, str], ...]]] = {
    cls: tuple((number, f.name, _KINDS[str(f.type)])
               for number, f in enumerate(dataclasses.fields(cls), start=1))
    for cls in _BY_TAG.values()
}


# --- protobuf ---------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    value &= 0xFFFF_FFFF_FFFF_FFFF  # negative int32/enum values go out as 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(buf) - pos >= 10:
        raise GsbProtocolError("protobuf varint longer than 10 bytes")
    raise GsbProtocolError("protobuf message truncated inside a varint")


def _read_fields(buf: memoryview) -> dict[int, tuple[int, int | memoryview]]:
    """Field number -> (wire type, value); for a repeated number the last one wins (proto3).

    Length-delimited values are views of ``buf``, not copies."""
    fields: dict[int, tuple[int, int | memoryview]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise GsbProtocolError("protobuf field number 0")
        value: int | memoryview
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire_type in (_I64, _I32):  # not in gsb_api.proto; skipped like any unknown field
            value, pos = buf[:0], pos + (8 if wire_type == _I64 else 4)
        else:
            raise GsbProtocolError(f"unsupported protobuf wire type {wire_type} (field {number})")
        if pos > len(buf):
            raise GsbProtocolError(f"protobuf field {number} overruns its message")
        fields[number] = (wire_type, value)
    return fields


def _nbytes(buf: Buffer) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def _bytes_view(buf: Buffer) -> memoryview:
    # Pieces go to the socket as views: a transport slices what it could not send at once,
    # and slicing a view copies nothing (slicing bytes would).
    return memoryview(buf).cast("B")


def _encode_body(msg: GsbMessage, data: Sequence[Buffer] | None) -> list[Buffer]:
    parts: list[Buffer] = []
    out = bytearray()
    for number, name, kind in _SCHEMA[type(msg)]:
        value = getattr(msg, name)
        if kind == "int" or kind == "bool":
            if value:  # proto3 leaves default values out, as prost does
                out += _varint(number << 3 | _VARINT) + _varint(int(value))
            continue
        if kind == "buffer" and data is not None:
            if _nbytes(value):
                raise ValueError(f"{type(msg).__name__}.{name} is given twice")
            pieces = list(data)
        else:
            pieces = [value.encode("utf-8") if kind == "str" else value]
        length = sum(_nbytes(piece) for piece in pieces)
        if not length:
            continue
        out += _varint(number << 3 | _LEN) + _varint(length)
        for piece in pieces:
            if _nbytes(piece) >= _BY_REFERENCE:
                parts += (out, _bytes_view(piece))
                out = bytearray()
            else:
                out += piece
    parts.append(out)
    return parts


def _decode_body(cls: type[GsbMessage], body: memoryview) -> GsbMessage:
    fields = _read_fields(body)
    kwargs: dict[str, Any] = {}
    for number, name, kind in _SCHEMA[cls]:
        if number not in fields:
            continue
        wire_type, value = fields[number]
        expected = _VARINT if kind in ("int", "bool") else _LEN
        if wire_type != expected:
            raise GsbProtocolError(f"{cls.__name__}.{name}: wire type {wire_type}, expected {expected}")
        if kind == "str":
            assert isinstance(value, memoryview)
            try:
                kwargs[name] = str(value, "utf-8")
            except UnicodeDecodeError as exc:
                raise GsbProtocolError(f"{cls.__name__}.{name} is not UTF-8") from exc
        elif kind == "bytes":
            assert isinstance(value, memoryview)
            kwargs[name] = bytes(value)
        elif kind == "buffer":  # a call's data: a view of the frame, decoded once and dropped
            kwargs[name] = value
        elif kind == "bool":
            kwargs[name] = bool(value)
        else:
            assert isinstance(value, int)
            value &= 0xFFFF_FFFF  # proto3 enums are int32: keep the low 32 bits, signed
            kwargs[name] = value - (1 << 32) if value >= 1 << 31 else value
    return cls(**kwargs)


def encode_message(msg: GsbMessage) -> bytes:
    """The protobuf ``Packet`` carrying ``msg`` (without the length prefix)."""
    return b"".join(encode_frame_parts(msg))[_HEADER.size:]


def decode_message(packet: Buffer) -> GsbMessage:
    """The message in one protobuf ``Packet``; :class:`GsbProtocolError` if there is none.

    A ``data`` field comes back as a view of ``packet``, not a copy."""
    found: GsbMessage | None = None
    for number, (wire_type, value) in _read_fields(memoryview(packet).cast("B")).items():
        cls = _BY_TAG.get(number)
        if cls is None:
            continue  # an unknown oneof member from a newer peer: skip, as protobuf does
        if wire_type != _LEN:
            raise GsbProtocolError(f"Packet field {number} has wire type {wire_type}")
        assert isinstance(value, memoryview)
        found = _decode_body(cls, value)  # several oneof members: the last one wins
    if found is None:
        raise GsbProtocolError("GSB packet carries no known message")
    return found


def encode_frame(msg: GsbMessage) -> bytes:
    """``msg`` as it goes on the wire: u32 big-endian length, then the ``Packet``."""
    return b"".join(encode_frame_parts(msg))


def encode_frame_parts(msg: GsbMessage, data: Sequence[Buffer] | None = None) -> list[Buffer]:
    """:func:`encode_frame` in pieces to write in order; large buffers are referenced, not copied.

    ``data``, when given, goes on the wire as ``msg``'s ``data`` field (left empty in ``msg``):
    the pieces of :func:`encode_payload_parts`, say. The pieces are only valid until the
    buffers they reference change: write them at once.
    """
    parts = _encode_body(msg, data)
    size = sum(_nbytes(part) for part in parts)
    # The oneof field is written even when empty (Ping, Pong): its presence is the message.
    head = _varint(msg._TAG << 3 | _LEN) + _varint(size)
    first = parts[0]
    assert isinstance(first, bytearray)
    first[:0] = _HEADER.pack(len(head) + size) + head
    return [part for part in parts if _nbytes(part)]


class FrameDecoder:
    """Splits a byte stream into messages, whatever the chunking of the reads.

    Bytes are either fed (:meth:`feed`), or read straight into the decoder's own memory
    (:meth:`get_buffer`, then :meth:`advance`, as ``asyncio.BufferedProtocol`` does): small
    frames are gathered in one reusable buffer, and a large frame is received in place into
    a buffer of its own, which its message's ``data`` then views. After a
    :class:`GsbProtocolError` the stream cannot be resynchronised: the decoder keeps raising
    it, and the connection has to be dropped.
    """

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._max = max_frame_size
        self._buf = bytearray(_STAGING_SIZE)
        self._start = self._end = 0  # the bytes not decoded yet are self._buf[start:end]
        self._frame: bytearray | None = None  # a large frame being received in place
        self._filled = 0
        self._error: GsbProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet making a whole frame (non-zero at EOF: a cut frame)."""
        if self._frame is not None:
            return _HEADER.size + self._filled
        return self._end - self._start

    def get_buffer(self) -> memoryview:
        """Where the next bytes read should go (any number, up to its length)."""
        if self._error is not None:
            raise self._error
        if self._frame is not None:
            return memoryview(self._frame)[self._filled:]
        if self._end == len(self._buf):  # move the start of a frame to the front
            unread = self._end - self._start
            self._buf[:unread] = self._buf[self._start:self._end]
            self._start, self._end = 0, unread
        return memoryview(self._buf)[self._end:]

    def advance(self, count: int) -> list[GsbMessage]:
        """``count`` bytes were written at the start of :meth:`get_buffer`'s buffer; returns the
        messages of every frame now complete, in order."""
        if self._error is not None:
            raise self._error
        try:
            if self._frame is None:
                self._end += count
                return self._split()
            self._filled += count
            if self._filled < len(self._frame):
                return []
            frame, self._frame = self._frame, None
            return [decode_message(memoryview(frame).toreadonly())]
        except GsbProtocolError as exc:
            self._error = exc
            raise

    def feed(self, data: Buffer) -> list[GsbMessage]:
        """Adds ``data`` and returns the messages of every frame now complete, in order."""
        view, messages = memoryview(data).cast("B"), []
        while view:
            buf = self.get_buffer()
            count = min(len(buf), len(view))
            buf[:count] = view[:count]
            messages += self.advance(count)
            view = view[count:]
        return messages

    def _split(self) -> list[GsbMessage]:
        messages: list[GsbMessage] = []
        buf, pos, end = self._buf, self._start, self._end
        while end - pos >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > self._max:
                raise GsbProtocolError(f"GSB frame of {length} bytes exceeds the limit of "
                                       f"{self._max} (is this a GSB router?)")
            start, stop = pos + _HEADER.size, pos + _HEADER.size + length
            if stop <= end:  # whole: copied out, as this buffer is reused
                messages.append(decode_message(bytes(buf[start:stop])))
                pos = stop
            elif length >= _BY_REFERENCE:  # large: the rest goes straight into its own buffer
                self._frame = bytearray(length)
                self._filled = end - start
                self._frame[:self._filled] = memoryview(buf)[start:end]
                pos = end
                break
            else:
                break
        self._start, self._end = (pos, end) if pos < end else (0, 0)
        return messages


# --- payloads (flexbuffers) -------------------------------------------------------------------

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
    _check(value, 0)
    encoder = _Encoder()
    return encoder.finish(encoder.add(value))


def _check(value: Any, depth: int) -> None:
    if depth > _MAX_NESTING:
        raise ValueError("payload nested too deeply")
    if value is None or isinstance(value, (bool, float, str, bytes, bytearray, memoryview)):
        return
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 64:
            raise ValueError(f"integer {value} does not fit in 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"payload map keys must be str, not {type(key).__name__}")
            if "\0" in key:
                raise ValueError(f"payload map key {key!r} contains NUL")
            _check(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a GSB payload")


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
        if len(data) >= _BY_REFERENCE:
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
        pos = self._pos
        bit_width, prefix = _width_of_uint(len(elements)), 1
        if keys is not None:
            bit_width, prefix = max(bit_width, self._elem_width(keys, pos, 0)), 3
        for i, element in enumerate(elements):
            bit_width = max(bit_width, self._elem_width(element, pos, prefix + i))
        byte_width = self._align(bit_width)
        if keys is not None:
            self._write(keys, byte_width)
            self._buf += (1 << keys[2]).to_bytes(byte_width, "little")
        self._buf += len(elements).to_bytes(byte_width, "little")
        loc = self._pos
        for element in elements:
            self._write(element, byte_width)
        if not typed:
            for kind, _, width in elements:
                self._buf.append(kind << 2 | (max(width, bit_width) if _is_inline(kind) else width))
        return (_MAP if keys is not None else _VECTOR_KEY if typed else _VECTOR), loc, bit_width

    def add(self, value: Any) -> _Value:
        if value is None:
            return _NULL, 0, 0
        if isinstance(value, bool):  # before int: a bool is an int in Python
            return _BOOL, int(value), 0
        if isinstance(value, int):
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
            pairs = []
            for key, item in value.items():  # keys are written where the builder writes them
                raw = key.encode("utf-8")
                loc = self._pos
                self._buf += raw
                self._buf.append(0)
                pairs.append((raw, (_KEY, loc, 0), self.add(item)))
            pairs.sort(key=lambda pair: pair[0])  # readers look keys up by binary search
            keys = self._vector([key for _, key, _ in pairs], typed=True)
            return self._vector([item for _, _, item in pairs], keys=keys)
        return self._vector([self.add(item) for item in value])

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
