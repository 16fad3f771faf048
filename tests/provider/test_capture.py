"""Output capture on its own: what a collector keeps, what it says, and how much memory it holds."""

from __future__ import annotations

import tracemalloc

import pytest

from workgen.protocol.exescript import AtEnd, CaptureMode, Stream
from workgen.provider.exeunit.capture import CaptureLimitExceeded, Collector

MIB = 1 << 20


def collector(mode: CaptureMode | None, *, max_at_end: int = 1000,
              emitted: list[str | bytes] | None = None) -> Collector:
    async def emit(data: str | bytes) -> None:
        if emitted is not None:
            emitted.append(data)

    return Collector("stdout", mode, emit, max_at_end=max_at_end)


async def feed_all(c: Collector, *pieces: bytes) -> list[str]:
    """Feeds every piece, as unit.py would not after an error; returns the errors raised."""
    errors = []
    for piece in pieces:
        try:
            await c.feed(piece)
        except CaptureLimitExceeded as exc:
            errors.append(str(exc))
    await c.finish()
    return errors


async def test_whole_capture_within_its_cap_is_kept_whole() -> None:
    c = collector(AtEnd(), max_at_end=10)
    assert await feed_all(c, b"01234", b"56789") == []
    assert c.value() == "0123456789"
    assert c.notes() == []


async def test_whole_capture_over_its_cap_fails_once_and_keeps_head_and_tail() -> None:
    c = collector(AtEnd(format="bin"), max_at_end=10)
    errors = await feed_all(c, b"abcdef", b"ghijkl", b"mnop", b"qrst")
    assert errors == ["stdout exceeded the 10 byte limit of a whole capture; capture it as a "
                      "stream, or with head/tail limits"]
    assert c.overflowed
    assert c.value() == b"abcde" + b"pqrst"
    assert c.notes() == ["stdout: 20 bytes exceed the 10 byte limit of a whole capture; "
                         "kept the first 5 and last 5 bytes, cut 10"]


async def test_the_piece_that_crosses_the_cap_is_in_the_kept_tail() -> None:
    # unit.py stops feeding at the first error: the tail must then end with that piece.
    c = collector(AtEnd(format="bin"), max_at_end=10)
    with pytest.raises(CaptureLimitExceeded):
        await c.feed(b"0123456789abcdefghij")
    await c.finish()
    assert c.value() == b"01234fghij"
    assert "cut 10" in c.notes()[0]


async def test_head_tail_and_headtail_limits_are_exact_across_pieces() -> None:
    pieces = [bytes([i]) * 100_000 for i in range(1, 6)]
    data = b"".join(pieces)
    for mode, expected in [
        (AtEnd("head", 150_000, "bin"), data[:150_000]),
        (AtEnd("tail", 150_000, "bin"), data[-150_000:]),
        (AtEnd("headTail", 150_001, "bin"), data[:75_000] + data[-75_001:]),
        (AtEnd("headTail", 10**6, "bin"), data),
    ]:
        c = collector(mode, max_at_end=10**6)
        assert await feed_all(c, *pieces) == []
        assert c.value() == expected, mode


async def test_many_small_pieces_keep_the_exact_tail() -> None:
    c = collector(AtEnd("tail", 100_001, "bin"), max_at_end=10**6)
    data = bytes(range(256)) * 4000
    await feed_all(c, *(data[i:i + 7] for i in range(0, len(data), 7)))
    assert c.value() == data[-100_001:]


async def test_invalid_utf8_is_escaped_and_the_text_kept_within_the_cap() -> None:
    # The cap counts raw bytes (8 fit), and the escaped text is kept to the cap in characters
    # too: four escapes would make it 32, four times what was allowed.
    c = collector(AtEnd(), max_at_end=8)
    assert await feed_all(c, b"\xff" * 8) == []
    assert c.value() == "\\xff" * 2
    notes = " ".join(c.notes())
    assert "not valid UTF-8" in notes and "ran to 32 characters" in notes and "cut 24" in notes


async def test_valid_text_within_the_cap_is_kept_whole() -> None:
    c = collector(AtEnd(), max_at_end=8)
    assert await feed_all(c, "añb€".encode()) == []
    assert c.value() == "añb€" and c.notes() == []


async def test_stream_result_carries_what_was_sent_and_says_what_was_not() -> None:
    emitted: list[str | bytes] = []
    c = collector(Stream(limit=5), emitted=emitted)
    await feed_all(c, b"abc", b"defg")
    assert emitted == ["abc", "de"]
    assert c.value() == "abcde"
    assert c.notes() == ["stdout: stream limit of 5 bytes reached, 2 of 7 bytes not sent"]


async def test_stream_without_a_limit_keeps_the_ends_within_the_cap() -> None:
    emitted: list[str | bytes] = []
    c = collector(Stream(format="bin"), emitted=emitted, max_at_end=4)
    await feed_all(c, b"abc", b"defg")
    assert b"".join(e for e in emitted if isinstance(e, bytes)) == b"abcdefg"
    assert c.value() == b"abfg"
    assert c.notes() == ["stdout: all 7 bytes were streamed; the result keeps the first 2 "
                         "and last 2"]


async def test_300_mb_into_a_64_mib_whole_capture_holds_about_the_cap() -> None:
    cap = 64 * MIB
    c = collector(AtEnd(format="bin"), max_at_end=cap)
    # One chunk object, refilled each time: the collector must copy it, as it must keep any
    # output it is given, so memory measures what the collector holds.
    chunk = bytearray(MIB)
    errors = []
    tracemalloc.start()
    try:
        for i in range(300):
            chunk[0] = i % 256
            try:
                await c.feed(chunk)
            except CaptureLimitExceeded as exc:
                errors.append(str(exc))
        _, feeding_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await c.finish()
        value = c.value()
        _, finish_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert feeding_peak < cap + 4 * MIB, f"held {feeding_peak / MIB:.1f} MiB while fed"
    # The value is one copy of what is kept, made while the pieces are still held.
    assert finish_peak < 2 * cap + 4 * MIB, f"held {finish_peak / MIB:.1f} MiB while finishing"
    assert errors == [f"stdout exceeded the {cap} byte limit of a whole capture; capture it as "
                      "a stream, or with head/tail limits"]
    assert c.notes() == [
        "stdout: 314572800 bytes exceed the 67108864 byte limit of a whole capture; "
        "kept the first 33554432 and last 33554432 bytes, cut 247463936"
    ]
    assert isinstance(value, bytes) and len(value) == cap
    # The first 32 chunks, then the last 32 (their first bytes say which chunk they were).
    assert [value[i * MIB] for i in range(64)] == [*range(32), *(i % 256 for i in range(268, 300))]


async def test_part_limits_above_the_cap_keep_no_more_than_the_cap() -> None:
    data = bytes(range(100)) * 10
    for part, expected in [("head", data[:100]), ("tail", data[-100:]),
                           ("headTail", data[:50] + data[-50:])]:
        c = collector(AtEnd(part, 1 << 53, "bin"), max_at_end=100)  # type: ignore[arg-type]
        assert await feed_all(c, data[:300], data[300:]) == []
        assert c.value() == expected
        assert c.notes() == [f"stdout: kept the {where} 100 of 1000 bytes ({part} limit "
                             f"{1 << 53}, capped at this provider's 100)"
                             for where in [{"head": "first", "tail": "last",
                                            "headTail": "first and last"}[part]]]
