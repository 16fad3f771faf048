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
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, ClassVar, Final, TypeAlias, Union, get_args

from .errors import GsbProtocolError
# The payloads' half of the format, re-exported: callers see one codec.
from .payload import (
    BY_REFERENCE as BY_REFERENCE, MAX_PAYLOAD_SIZE as MAX_PAYLOAD_SIZE, Buffer as Buffer,
    decode_payload as decode_payload, encode_payload as encode_payload,
    encode_payload_parts as encode_payload_parts, err as err, ok as ok,
    unwrap_result as unwrap_result,
)

# Reply codes, as the proto's enums spell them (one namespace: the values never clash).
CODE_OK: Final = 0
CODE_BAD_REQUEST: Final = 400  # call: no such address, bad payload; register: invalid name
CODE_NOT_FOUND: Final = 404  # unregister/unsubscribe: not registered by this connection
CODE_CONFLICT: Final = 409  # register: the prefix is taken
CODE_SERVICE_FAILURE: Final = 500  # call: the service failed or its connection was lost

# A length prefix above this is taken as garbage (say, an HTTP server answering) rather than
# a frame to wait for; GSB frames carry one call's data, GFTP chunks are well below it.
MAX_FRAME_SIZE: Final = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")
# Frames are gathered in a buffer of this size; a larger one is received into its own.
_STAGING_SIZE: Final = 256 * 1024
# Large frames' buffers kept for reuse, per connection (freed with it): a GFTP window of 1 MiB
# chunks and more.
_POOL_BUFFERS: Final = 16
_POOL_BYTES: Final = 16 * 1024 * 1024
_STEP: Final = 64 * 1024



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
            if _nbytes(piece) >= BY_REFERENCE:
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
        self._frame: memoryview | None = None  # a large frame being received in place
        self._filled = 0
        self._pool = _BufferPool(_POOL_BUFFERS, _POOL_BYTES)
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
            return self._frame[self._filled:]
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
            return [decode_message(frame.toreadonly())]
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
            elif length >= BY_REFERENCE:  # large: the rest goes straight into its own buffer
                self._frame = memoryview(self._pool.take(length))[:length]
                self._filled = end - start
                self._frame[:self._filled] = memoryview(buf)[start:end]
                pos = end
                break
            else:
                break
        self._start, self._end = (pos, end) if pos < end else (0, 0)
        return messages


class _BufferPool:
    """Buffers for large frames, each reused once nothing views it any more.

    A large frame's message views the buffer it arrived in (a GFTP chunk is written and hashed
    from there, in a worker thread), so a buffer is busy for as long as its consumer keeps a
    view. With a new buffer per frame, the C allocator gives a window's worth of megabytes
    back to the kernel and faults it in again: 60,000 to 100,000 page faults per GB downloaded
    (about 7,000 with reuse), 7-11% of the downloader's CPU. A ``bytearray`` that is still
    viewed cannot be resized; that is how a free buffer is told from a busy one.

    Buffers are sized in steps of ``_STEP``: frames of one kind differ by a few bytes (a GFTP
    chunk's offset takes 1 to 8), and one buffer fits them all. Bounded by count and bytes: a
    frame that finds no free buffer that fits gets a new one, kept if there is room, or in
    place of a free one that does not fit (the frames a connection sees change size).
    """

    def __init__(self, max_buffers: int, max_bytes: int) -> None:
        self._buffers: list[bytearray] = []
        self._max_buffers = max_buffers
        self._max_bytes = max_bytes
        self._bytes = 0

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` to ``2 * size`` bytes (rounded up) that nothing views."""
        unfit: int | None = None  # a free buffer of another size, to give way to this one
        for index, buffer in enumerate(self._buffers):
            if size <= len(buffer) <= 2 * size + _STEP:
                if _unused(buffer):
                    return buffer
            elif unfit is None and _unused(buffer):
                unfit = index
        capacity = -(-size // _STEP) * _STEP
        # Allocated a byte longer than it is: _unused's probe then never reallocates.
        buffer = bytearray(capacity + 1)
        del buffer[capacity:]
        if unfit is not None and not self._room(capacity):
            self._bytes -= len(self._buffers.pop(unfit))
        if self._room(capacity):
            self._buffers.append(buffer)
            self._bytes += capacity
        return buffer

    def _room(self, capacity: int) -> bool:
        return (len(self._buffers) < self._max_buffers
                and self._bytes + capacity <= self._max_bytes)


def _unused(buffer: bytearray) -> bool:
    try:
        buffer.append(0)  # refused while any view of the buffer exists
    except BufferError:
        return False
    del buffer[-1]
    return True
