"""The GSB codec on bytes: protobuf messages, framing and flexbuffers payloads."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import flatbuffers.flexbuffers as fx  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workgen.gsb import GsbProtocolError, GsbRemoteError, decode_payload, encode_payload
from workgen.gsb.codec import (
    BroadcastReply, BroadcastRequest, CallReply, CallRequest, FrameDecoder, GsbMessage, Hello,
    Ping, Pong, RegisterReply, RegisterRequest, ReplyType, SubscribeReply, SubscribeRequest,
    UnregisterReply, UnregisterRequest, UnsubscribeReply, UnsubscribeRequest, decode_message,
    encode_frame, encode_frame_parts, encode_message, encode_payload_parts, err, ok, unwrap_result,
)

EVERY_MESSAGE: list[GsbMessage] = [
    Hello(name="workgen", version="0.7.3", instance_id=bytes(range(16))),
    RegisterRequest(service_id="/public/gftp/abc"),
    RegisterReply(code=409, message="already registered"),
    UnregisterRequest(service_id="/public/gftp/abc"),
    UnregisterReply(code=404),
    CallRequest(caller="0xabc", address="/public/exeunit/1/Exec", request_id="r-1",
                data=b"\x00\x01\xff", no_reply=True),
    CallReply(request_id="r-1", code=500, reply_type=ReplyType.PARTIAL, data=b"oops"),
    SubscribeRequest(topic="market-offers"),
    SubscribeReply(code=400, message="topic already registered"),
    UnsubscribeRequest(topic="market-offers"),
    UnsubscribeReply(code=404),
    BroadcastRequest(caller="0xabc", topic="market-offers", data=b"\x01\x02"),
    BroadcastReply(code=400, message="bad topic"),
    Ping(),
    Pong(),
]


def frame(packet: bytes) -> bytes:
    return struct.pack(">I", len(packet)) + packet


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip(message: GsbMessage) -> None:
    assert decode_message(encode_message(message)) == message
    assert FrameDecoder().feed(encode_frame(message)) == [message]


@pytest.mark.parametrize("message", [type(m)() for m in EVERY_MESSAGE], ids=lambda m: type(m).__name__)
def test_default_messages_survive_a_round_trip(message: GsbMessage) -> None:
    assert decode_message(encode_message(message)) == message


def test_packet_numbers_follow_gsb_api_proto() -> None:
    # Packet.oneof field number n, wire type 2 (length-delimited): key byte n << 3 | 2.
    for number, message in enumerate(EVERY_MESSAGE, start=1):
        assert encode_message(message)[0] == number << 3 | 2


def test_call_request_bytes_match_protobuf() -> None:
    packet = encode_message(CallRequest(caller="c", address="/a", request_id="1", data=b"\x07",
                                        no_reply=True))
    body = b"\x0a\x01c" b"\x12\x02/a" b"\x1a\x011" b"\x22\x01\x07" b"\x28\x01"
    assert packet == b"\x32" + bytes([len(body)]) + body


def test_broadcast_request_numbers_data_before_topic() -> None:
    body = encode_message(BroadcastRequest(caller="c", topic="t", data=b"d"))[2:]
    assert body == b"\x0a\x01c" b"\x12\x01d" b"\x1a\x01t"


def test_call_reply_codes_are_varints() -> None:
    packet = encode_message(CallReply(request_id="x", code=500, reply_type=ReplyType.PARTIAL))
    assert packet == b"\x3a\x08" b"\x0a\x01x" b"\x10\xf4\x03" b"\x18\x01"


def test_empty_messages_are_still_present_in_the_packet() -> None:
    assert encode_frame(Ping()) == b"\x00\x00\x00\x02\x72\x00"
    assert encode_frame(Pong()) == b"\x00\x00\x00\x02\x7a\x00"


def test_default_field_values_are_left_out() -> None:
    assert encode_message(CallReply(request_id="x")) == b"\x3a\x03\x0a\x01x"


def test_unknown_fields_and_packet_members_are_skipped() -> None:
    body = encode_message(RegisterRequest(service_id="/s"))[2:]
    extra = b"\x48\x05" b"\x52\x01z" b"\x5d\x00\x00\x00\x00" b"\x61" + bytes(8)  # fields 9-12
    unknown_member = b"\x82\x01\x00"  # Packet field 16, empty
    packet = unknown_member + b"\x12" + bytes([len(body + extra)]) + body + extra
    assert decode_message(packet) == RegisterRequest(service_id="/s")


def test_negative_codes_round_trip_as_int32() -> None:
    assert decode_message(encode_message(RegisterReply(code=-1))) == RegisterReply(code=-1)


def test_frames_split_across_chunks_are_reassembled() -> None:
    stream = b"".join(encode_frame(m) for m in EVERY_MESSAGE)
    decoder = FrameDecoder()
    received = []
    for i in range(len(stream)):  # one byte at a time: every possible split point
        received += decoder.feed(stream[i:i + 1])
    assert received == EVERY_MESSAGE
    assert decoder.buffered == 0


def test_merged_frames_come_out_in_order() -> None:
    stream = b"".join(encode_frame(m) for m in EVERY_MESSAGE)
    decoder = FrameDecoder()
    assert decoder.feed(stream[:-3]) == EVERY_MESSAGE[:-1]
    assert decoder.buffered == len(encode_frame(Pong())) - 3
    assert decoder.feed(stream[-3:]) == [Pong()]
    assert decoder.feed(b"") == []


def test_a_large_frame_is_received_in_place_whatever_the_reads() -> None:
    big = CallReply(request_id="r-big", data=bytes(range(256)) * 4096)  # 1 MiB
    stream = encode_frame(Ping()) + encode_frame(big) + encode_frame(Pong())
    for read in (1000, 65536, 300_000, len(stream)):
        decoder, received = FrameDecoder(), []
        pos = 0
        while pos < len(stream):
            buf = decoder.get_buffer()
            count = min(len(buf), read, len(stream) - pos)
            buf[:count] = stream[pos:pos + count]
            received += decoder.advance(count)
            pos += count
        assert received == [Ping(), big, Pong()]
        assert decoder.buffered == 0


def _big_reply(fill: int, size: int = 1 << 20) -> bytes:
    return encode_frame(CallReply(request_id=f"r-{fill}", data=bytes([fill]) * size))


def _data(message: GsbMessage) -> memoryview:
    assert isinstance(message, CallReply) and isinstance(message.data, memoryview)
    return message.data


def test_a_large_frame_buffer_is_reused_once_nothing_views_it() -> None:
    decoder = FrameDecoder()
    [first] = decoder.feed(_big_reply(1))
    buffer = _data(first).obj
    del first  # the consumer is done with the chunk
    [second] = decoder.feed(_big_reply(2))
    assert _data(second).obj is buffer
    assert bytes(_data(second)) == bytes([2]) * (1 << 20)
    del second
    # A smaller frame in the same buffer shows its own bytes only, none of the last frame's.
    [third] = decoder.feed(_big_reply(3, size=600_000))
    assert _data(third).obj is buffer
    assert bytes(_data(third)) == bytes([3]) * 600_000


def test_a_buffer_still_viewed_is_never_written_over() -> None:
    decoder = FrameDecoder()
    [first] = decoder.feed(_big_reply(1))
    kept = _data(first)[10:20]  # a slice is a view too
    del first
    received = [decoder.feed(_big_reply(fill)) for fill in range(2, 6)]
    assert bytes(kept) == bytes([1]) * 10
    assert all(_data(m).obj is not kept.obj for [m] in received)


@pytest.mark.parametrize("size", [300_000, 1 << 20], ids=["count-bound", "byte-bound"])
def test_buffers_kept_for_reuse_are_bounded(size: int) -> None:
    # Frames too large for the staging buffer (256 KiB): 40 of 300 kB meet the pool's count
    # limit (16) first, 40 of 1 MiB its bytes (16 MiB).
    decoder = FrameDecoder()
    held = [decoder.feed(_big_reply(fill, size))[0] for fill in range(40)]
    buffers = [_data(m).obj for m in held]  # the buffers, not views: free once held is gone
    del held
    again = [decoder.feed(_big_reply(100 + fill, size))[0] for fill in range(40)]
    reused = [b for b in buffers if any(_data(m).obj is b for m in again)]
    assert 0 < len(reused) <= 16
    assert sum(len(b) for b in reused) <= 16 * 1024 * 1024
    # All 40 are alive at once: each still shows its own content, none another's.
    assert [bytes(_data(m)[::size // 7]) for m in again] == [
        bytes([100 + fill]) * len(range(0, size, size // 7)) for fill in range(40)]


def test_a_large_frame_cut_short_counts_as_buffered() -> None:
    decoder = FrameDecoder()
    frame_bytes = encode_frame(CallReply(request_id="r", data=bytes(100_000)))
    assert decoder.feed(frame_bytes[:-10]) == []
    assert decoder.buffered == len(frame_bytes) - 10


def test_frame_parts_reference_large_data_and_join_to_the_frame() -> None:
    content = bytes(range(256)) * 1024
    payload = encode_payload_parts(ok({"offset": 0, "content": content}))
    parts = encode_frame_parts(CallReply(request_id="r-1"), payload)
    assert any(isinstance(part, memoryview) and part.obj is content for part in parts)
    joined = b"".join(parts)
    assert joined == encode_frame(CallReply(request_id="r-1", data=b"".join(payload)))
    [message] = FrameDecoder().feed(joined)
    assert isinstance(message, CallReply)
    assert decode_payload(message.data) == ok({"offset": 0, "content": content})


def test_frame_parts_refuse_data_given_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        encode_frame_parts(CallReply(data=b"x"), [b"y"])


def test_oversized_frame_is_refused_without_waiting_for_it() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(GsbProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 101))
    with pytest.raises(GsbProtocolError):  # the stream cannot be resynchronised
        decoder.feed(encode_frame(Ping()))


def test_http_answer_is_not_taken_for_a_frame() -> None:
    with pytest.raises(GsbProtocolError, match="GSB router"):
        FrameDecoder().feed(b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest.mark.parametrize("packet, problem", [
    (b"", "no known message"),
    (b"\x82\x01\x00", "no known message"),  # only an unknown member
    (b"\x0a\x05\x0a\x01", "overruns"),  # Hello declared longer than the packet
    (b"\x0a\x02\x0a\x05", "overruns"),  # Hello.name longer than Hello
    (b"\x08\x01", "wire type"),  # Hello as a varint
    (b"\x3a\x02\x10\x80", "varint"),  # CallReply.code cut inside a varint
    (b"\x3a\x02\x0a\x01", "overruns"),
    (b"\x0a\x04\x08\x01\x10\x02", "wire type"),  # Hello.name as a varint
    (b"\x0a\x03\x0a\x01\xff", "UTF-8"),  # Hello.name not UTF-8
    (b"\x3a\x02\x18\x07", "reply_type"),  # CallReply.reply_type 7
    (b"\x0b", "wire type 3"),  # a group
    (b"\x02\x00", "field number 0"),
    (b"\x0a" + b"\xff" * 11, "longer than 10 bytes"),
])
def test_malformed_packets_raise_protocol_errors(packet: bytes, problem: str) -> None:
    with pytest.raises(GsbProtocolError, match=problem):
        decode_message(packet)
    with pytest.raises(GsbProtocolError, match=problem):
        FrameDecoder().feed(frame(packet))


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(GsbProtocolError, ValueError)


PAYLOADS: list[Any] = [
    None, True, False, 0, -1, 255, 2**40, -(2**63), 2**64 - 1, 1.5, -2.25e300, "", "zażółć",
    b"", b"\x00\xff" * 100, [], {}, [1, "a", None, [2.5]], ("tuple", "becomes", "list"),
    {"Ok": None}, {"Err": {"InternalError": "Failed to read file"}},
    {"activityId": "a1", "exeScript": [{"run": {"entry_point": "/bin/sh", "args": ["-c", "date"]}}],
     "timeout": None, "numbers": [1, 2, 3], "flags": [True, False], "ключ": {"ß": b"x"}},
]


@pytest.mark.parametrize("value", PAYLOADS, ids=repr)
def test_payloads_survive_a_round_trip(value: Any) -> None:
    expected = list(value) if isinstance(value, tuple) else value
    assert decode_payload(encode_payload(value)) == expected


@pytest.mark.parametrize("value", PAYLOADS, ids=repr)
def test_zlib_compressed_payloads_are_inflated(value: Any) -> None:
    expected = list(value) if isinstance(value, tuple) else value
    assert decode_payload(zlib.compress(encode_payload(value))) == expected


def test_payloads_interoperate_with_the_flexbuffers_module() -> None:
    value = {"fileSize": 1024, "name": "x", "content": b"\x01\x02", "list": [1.0, None]}
    assert fx.Loads(encode_payload(value)) == value
    assert decode_payload(bytes(fx.Dumps(value))) == value


def _reference_encoding(value: Any) -> bytes:
    """The flatbuffers package's own builder, given values as serde writes them."""
    builder = fx.Builder()

    def add(value: Any) -> None:
        if value is None:
            builder.Null()
        elif isinstance(value, bool):
            builder.Bool(value)
        elif isinstance(value, int):
            builder.Int(value) if value < 1 << 63 else builder.UInt(value)
        elif isinstance(value, float):
            builder.Float(value, 8)
        elif isinstance(value, str):
            builder.String(value)
        elif isinstance(value, bytes):
            builder.Blob(value)
        elif isinstance(value, dict):
            with builder.Map():
                for key, item in value.items():
                    builder.Key(key.encode("utf-8"))
                    add(item)
        else:
            with builder.Vector():
                for item in value:
                    add(item)

    add(value)
    return bytes(builder.Finish())


LARGE_PAYLOADS: list[Any] = [
    ok({"offset": 3 << 40, "content": bytes(200_000)}),
    [b"x" * 70_000, "y" * 300, [b"z" * 66_000, 2**63], {"b": b"\x01" * 65_536, "a": -5}],
    {f"k{i}": i * 1000 for i in range(300)},
]


@pytest.mark.parametrize("value", PAYLOADS + LARGE_PAYLOADS, ids=lambda v: repr(v)[:40])
def test_payloads_are_laid_out_as_the_reference_builder_does(value: Any) -> None:
    assert encode_payload(value) == _reference_encoding(value)


@pytest.mark.parametrize("value", LARGE_PAYLOADS, ids=lambda v: repr(v)[:40])
def test_large_payloads_survive_a_round_trip(value: Any) -> None:
    assert decode_payload(memoryview(encode_payload(value))) == value


def test_blobs_can_come_back_as_views_of_the_payload() -> None:
    data = encode_payload({"content": b"abc" * 30_000})
    content = decode_payload(data, blob_views=True)["content"]
    assert isinstance(content, memoryview) and content.readonly and content.obj is data
    assert content == b"abc" * 30_000
    assert type(decode_payload(data)["content"]) is bytes


def test_typed_vectors_as_serde_writes_vec_u8_decode_to_lists() -> None:
    builder = fx.Builder()
    builder.TypedVectorFromElements([1, 2, 255], element_type=fx.Type.UINT)
    assert decode_payload(bytes(builder.Finish())) == [1, 2, 255]


def test_typed_and_fixed_vectors_of_every_kind_decode() -> None:
    builder = fx.Builder()
    with builder.Vector():
        builder.TypedVectorFromElements([-1, 300], element_type=fx.Type.INT)
        builder.TypedVectorFromElements([1.5, 2.5], element_type=fx.Type.FLOAT)
        builder.TypedVectorFromElements([True, False], element_type=fx.Type.BOOL)
        builder.FixedTypedVectorFromElements([1, 2, 3], element_type=fx.Type.UINT)
        builder.IndirectInt(-7)
        builder.IndirectFloat(0.5)
    assert decode_payload(bytes(builder.Finish())) == [
        [-1, 300], [1.5, 2.5], [True, False], [1, 2, 3], -7, 0.5]


def test_unit_variants_and_unit_are_a_string_and_null() -> None:
    # serde: Get::ByDefault (rename_all camelCase) is "byDefault"; () and None are null.
    assert encode_payload("byDefault") == bytes(fx.Dumps("byDefault"))
    assert encode_payload(None) == b"\x00\x00\x01"


@pytest.mark.parametrize("value, error", [
    ({1: "x"}, TypeError), ({"a\0b": 1}, ValueError), (object(), TypeError), ({"s": {1, 2}}, TypeError),
    (2**64, ValueError), (-(2**63) - 1, ValueError),
])
def test_values_serde_cannot_hold_are_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_payload(value)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00\x00\x03", b"\x01\x02\x03\x04\x05\x06\x07",
    encode_payload({"a": [1, 2, 3]})[3:], b"\xff" * 40 + b"\x2a\x01",
    zlib.compress(b"not flexbuffers at all"),
])
def test_malformed_payloads_raise_protocol_errors(data: bytes) -> None:
    with pytest.raises(GsbProtocolError):
        decode_payload(data)


def test_a_zlib_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import workgen.gsb.payload as payload
    monkeypatch.setattr(payload, "MAX_PAYLOAD_SIZE", 1000)
    with pytest.raises(GsbProtocolError, match="inflates"):
        decode_payload(zlib.compress(bytes(10_000)))


def test_results_wrap_and_unwrap() -> None:
    assert ok(3) == {"Ok": 3}
    assert err({"NotFound": "x"}) == {"Err": {"NotFound": "x"}}
    assert unwrap_result(decode_payload(encode_payload(ok([1])))) == [1]
    with pytest.raises(GsbRemoteError) as caught:
        unwrap_result(err({"NotFound": "x"}), address="/public/x")
    assert caught.value.error == {"NotFound": "x"}
    assert caught.value.address == "/public/x"


@pytest.mark.parametrize("value", [None, 3, {}, {"Ok": 1, "Err": 2}, {"ok": 1}])
def test_a_reply_that_is_no_result_is_a_protocol_error(value: Any) -> None:
    with pytest.raises(GsbProtocolError):
        unwrap_result(value)


# -- hostile bytes ---------------------------------------------------------------------------
# A peer's daemon relays what any node sends: whatever the bytes, decoding either gives a value
# or raises GsbProtocolError, never another exception, and never hangs or balloons.

_SAMPLES = [encode_payload(v) for v in (
    {"Ok": {"batch_id": "b1", "commands": [{"run": {"entry_point": "/bin/sh", "args": ["-c"]}}]}},
    [1, -2, 3.5, None, True, "text", b"\x00\x01" * 40, {"k": [{"n": 2**40}]}],
    {"Err": {"message": "no", "code": 500}},
)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(_SAMPLES), st.integers(0, 10_000), st.integers(0, 255))
    .map(lambda t: t[0][:t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1:]),
    st.tuples(st.sampled_from(_SAMPLES), st.integers(1, 10_000))
    .map(lambda t: t[0][:t[1] % len(t[0])]),
))
def test_any_payload_bytes_decode_or_raise_a_protocol_error(data: bytes) -> None:
    try:
        decode_payload(data)
    except GsbProtocolError:
        pass
    try:
        decode_payload(data, blob_views=True)
    except GsbProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12),
       st.lists(st.sampled_from([encode_frame(m) for m in EVERY_MESSAGE]), max_size=3))
def test_any_frame_bytes_decode_or_raise_a_protocol_error(pieces: list[bytes],
                                                          frames: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame_size=1 << 16)
    try:
        for piece in [*frames, *pieces]:
            decoder.feed(piece)
    except GsbProtocolError:
        return
