"""The GSB wire format, as a pure codec: bytes in, messages out, and back. No I/O.

The Golem Service Bus (ya-service-bus) speaks frames of a **u32 big-endian length** followed by
a protobuf ``Packet`` (``gsb_api.proto``), whose ``oneof`` carries exactly one of the messages
below, tagged with the field number in ``Packet``. A call's ``data`` is a serde value encoded as
**flexbuffers**, possibly zlib-compressed; replies are serde ``Result``s, ``{"Ok": v}`` or
``{"Err": e}``. The protobuf side is hand-written (a dozen flat messages of strings, bytes, enums
and a bool do not justify generated code); flexbuffers comes from the ``flatbuffers`` package.

The asyncio client in :mod:`workgen.gsb.client` owns the socket and uses only this module to
turn bytes into messages, as httpcore keeps h11 apart from its I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias, Union, get_args

import flatbuffers.flexbuffers as _fx  # type: ignore[import-untyped]

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
    data: bytes = b""
    no_reply: bool = False
    _TAG: ClassVar[int] = 6


@dataclass(frozen=True)
class CallReply:
    request_id: str = ""
    code: int = CODE_OK
    reply_type: ReplyType = ReplyType.FULL
    data: bytes = b""
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
    data: bytes = b""  # the proto numbers data 2 and topic 3
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
_KINDS: Final = {"str": "str", "bytes": "bytes", "int": "int", "ReplyType": "int", "bool": "bool"}
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


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
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


def _read_fields(buf: bytes) -> dict[int, tuple[int, int | bytes]]:
    """Field number -> (wire type, value); for a repeated number the last one wins (proto3)."""
    fields: dict[int, tuple[int, int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise GsbProtocolError("protobuf field number 0")
        value: int | bytes
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire_type in (_I64, _I32):  # not in gsb_api.proto; skipped like any unknown field
            value, pos = b"", pos + (8 if wire_type == _I64 else 4)
        else:
            raise GsbProtocolError(f"unsupported protobuf wire type {wire_type} (field {number})")
        if pos > len(buf):
            raise GsbProtocolError(f"protobuf field {number} overruns its message")
        fields[number] = (wire_type, value)
    return fields


def _encode_body(msg: GsbMessage) -> bytes:
    out = bytearray()
    for number, name, kind in _SCHEMA[type(msg)]:
        value = getattr(msg, name)
        if kind == "str" or kind == "bytes":
            raw = value.encode("utf-8") if kind == "str" else bytes(value)
            if raw:  # proto3 leaves default (empty) values out, as prost does
                out += _varint(number << 3 | _LEN) + _varint(len(raw)) + raw
        elif value:  # int or bool, non-zero
            out += _varint(number << 3 | _VARINT) + _varint(int(value))
    return bytes(out)


def _decode_body(cls: type[GsbMessage], body: bytes) -> GsbMessage:
    fields = _read_fields(body)
    kwargs: dict[str, Any] = {}
    for number, name, kind in _SCHEMA[cls]:
        if number not in fields:
            continue
        wire_type, value = fields[number]
        expected = _LEN if kind in ("str", "bytes") else _VARINT
        if wire_type != expected:
            raise GsbProtocolError(f"{cls.__name__}.{name}: wire type {wire_type}, expected {expected}")
        if kind == "str":
            assert isinstance(value, bytes)
            try:
                kwargs[name] = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise GsbProtocolError(f"{cls.__name__}.{name} is not UTF-8") from exc
        elif kind == "bytes":
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
    body = _encode_body(msg)
    # The oneof field is written even when empty (Ping, Pong): its presence is the message.
    return _varint(msg._TAG << 3 | _LEN) + _varint(len(body)) + body


def decode_message(packet: bytes) -> GsbMessage:
    """The message in one protobuf ``Packet``; :class:`GsbProtocolError` if there is none."""
    found: GsbMessage | None = None
    for number, (wire_type, value) in _read_fields(bytes(packet)).items():
        cls = _BY_TAG.get(number)
        if cls is None:
            continue  # an unknown oneof member from a newer peer: skip, as protobuf does
        if wire_type != _LEN:
            raise GsbProtocolError(f"Packet field {number} has wire type {wire_type}")
        assert isinstance(value, bytes)
        found = _decode_body(cls, value)  # several oneof members: the last one wins
    if found is None:
        raise GsbProtocolError("GSB packet carries no known message")
    return found


def encode_frame(msg: GsbMessage) -> bytes:
    """``msg`` as it goes on the wire: u32 big-endian length, then the ``Packet``."""
    packet = encode_message(msg)
    return _HEADER.pack(len(packet)) + packet


class FrameDecoder:
    """Splits a byte stream into messages, whatever the chunking of the reads.

    After a :class:`GsbProtocolError` the stream cannot be resynchronised: the decoder keeps
    raising it, and the connection has to be dropped.
    """

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_frame_size
        self._error: GsbProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet making a whole frame (non-zero at EOF: a cut frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[GsbMessage]:
        """Adds ``data`` and returns the messages of every frame now complete, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        messages: list[GsbMessage] = []
        pos = 0
        try:
            while len(self._buf) - pos >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._buf, pos)
                if length > self._max:
                    raise GsbProtocolError(
                        f"GSB frame of {length} bytes exceeds the limit of {self._max}"
                        " (is this a GSB router?)")
                end = pos + _HEADER.size + length
                if end > len(self._buf):
                    break
                messages.append(decode_message(bytes(self._buf[pos + _HEADER.size:end])))
                pos = end
        except GsbProtocolError as exc:
            self._error = exc
            raise
        finally:
            del self._buf[:pos]
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
    tuples are sequences, ``bytes`` are blobs (``serde_bytes``), floats are f64. Anything else
    is a ``TypeError``; an int beyond 64 bits or a key with a NUL is a ``ValueError``.
    """
    _check(value, 0)  # first: the builder's context managers would mask an error raised inside
    builder = _fx.Builder()
    _add(builder, value)
    return bytes(builder.Finish())


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


def _add(builder: Any, value: Any) -> None:
    if value is None:
        builder.Null()
    elif isinstance(value, bool):  # before int: a bool is an int in Python
        builder.Bool(value)
    elif isinstance(value, int):
        if value < 1 << 63:
            builder.Int(value)
        else:  # u64 values above i64::MAX
            builder.UInt(value)
    elif isinstance(value, float):
        # Always f64, as serde writes an f64; the module's own width guess overflows packing
        # large values as f32.
        builder.Float(value, 8)
    elif isinstance(value, str):
        builder.String(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        builder.Blob(bytes(value))
    elif isinstance(value, dict):
        with builder.Map():
            for key, item in value.items():
                builder.Key(key.encode("utf-8"))  # the module would insist on ASCII keys
                _add(builder, item)
    else:
        with builder.Vector():
            for item in value:
                _add(builder, item)


def decode_payload(data: bytes) -> Any:
    """The value in a call's or reply's ``data``: zlib-inflated first if it is compressed.

    yagna may compress (ya-service-bus tries zlib first, then reads plain flexbuffers); a
    flexbuffers buffer never passes zlib's header and checksum, so the order is safe.
    """
    data = bytes(data)
    try:
        inflater = zlib.decompressobj()
        inflated = inflater.decompress(data, MAX_PAYLOAD_SIZE)
    except zlib.error:
        pass
    else:
        if inflater.unconsumed_tail:
            raise GsbProtocolError(f"compressed payload inflates beyond {MAX_PAYLOAD_SIZE} bytes")
        if inflater.eof:
            data = inflated
    if len(data) < 3 or data[-1] not in (1, 2, 4, 8):
        raise GsbProtocolError(f"not a flexbuffers payload ({len(data)} bytes)")
    try:
        return _value(_fx.GetRoot(data), 0)
    except GsbProtocolError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, struct.error, RecursionError) as exc:
        raise GsbProtocolError(f"malformed flexbuffers payload: {exc}") from exc


def _value(ref: Any, depth: int) -> Any:
    # Walks the buffer ourselves rather than using flexbuffers.Loads: Loads decodes map keys
    # as ASCII, while serde writes UTF-8 keys (a HashMap<String, _> can hold any text).
    if depth > _MAX_NESTING:
        raise GsbProtocolError("payload nested too deeply")
    if ref.IsNull:
        return None
    if ref.IsBool:
        return ref.AsBool
    if ref.IsInt:
        return ref.AsInt
    if ref.IsFloat:
        return ref.AsFloat
    if ref.IsString or ref.IsKey:
        return bytes(ref.AsStringBytes).decode("utf-8")
    if ref.IsBlob:
        return bytes(ref.AsBlob)
    if ref.IsMap:
        mapping = ref.AsMap
        return {bytes(key.AsKeyBytes).decode("utf-8"): _value(item, depth + 1)
                for key, item in zip(mapping.Keys, mapping.Values, strict=False)}
    if ref.IsVector:
        return [_value(item, depth + 1) for item in ref.AsVector]
    if ref.IsTypedVector or ref.IsFixedTypedVector:
        vector = ref.AsTypedVector if ref.IsTypedVector else ref.AsFixedTypedVector
        if vector.ElementType in (_fx.Type.KEY, _fx.Type.STRING):
            return [_value(item, depth + 1) for item in vector]
        return list(vector.Value)  # numbers and bools, unpacked in one go (Vec<u8> arrives so)
    raise GsbProtocolError(f"unsupported flexbuffers value {ref!r}")
