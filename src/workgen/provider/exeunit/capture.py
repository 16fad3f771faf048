"""Output capture: turns a command's stdout/stderr bytes into what its capture mode asks for.

``atEnd`` keeps the output (or its head, tail or both ends) for the command's result; ``stream``
hands each chunk on as a runtime event while the command runs, and the result carries what was
streamed as well (as yagna's exe unit does), within the same cap. Memory stays
bounded in every mode: a whole ``atEnd`` capture is capped by ``max_at_end`` bytes, and hitting
the cap fails the command (:class:`CaptureLimitExceeded`) rather than passing a cut output off as
whole; what it keeps then is the first and last half of the cap. A head/tail limit above the cap
keeps no more than the cap either (the command succeeds). Whatever is left out is said in
the result's message, and text that is not valid UTF-8 is shown with ``\\x`` escapes and
reported, never dropped (the caps count raw bytes, before any escaping).
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Awaitable, Callable

from ...protocol.exescript import AtEnd, CaptureMode, Stream

DEFAULT_MAX_AT_END = 64 << 20
STREAM_KEPT = 1 << 20
"""What a streamed command's result keeps of output without a stream limit (its two ends)."""
ERROR_TAIL = 2048
# Small pieces of output are gathered into blocks of this size before they are kept.
_BLOCK = 64 << 10


class CaptureLimitExceeded(Exception):
    """A whole-output capture outgrew its cap."""


class _Text:
    """Incremental UTF-8 decoding that switches to visible escapes on the first bad byte."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.invalid = False

    def decode(self, data: bytes, final: bool = False) -> str:
        if not self.invalid:
            pending = self._decoder.getstate()[0]
            try:
                return self._decoder.decode(data, final)
            except UnicodeDecodeError:
                self.invalid = True
                self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
                data = pending + data
        return self._decoder.decode(data, final)


class _Bytes:
    """Bytes kept in order, as a list of blocks: appending never copies what is held, dropping
    from the front never moves it, and what is held is never more than what was kept plus one
    block (or one piece, if pieces are larger), whatever the sizes of the pieces appended (a
    bytearray would over-allocate by an eighth, and copy itself whenever its front is cut)."""

    def __init__(self) -> None:
        self._blocks: deque[bytes] = deque()
        self._skip = 0  # bytes of the first block that were dropped
        self._open = bytearray()  # small pieces, until they make a block
        self.size = 0

    def append(self, data: bytes | bytearray) -> None:
        if not data:
            return
        if len(data) >= _BLOCK:
            self._close()
            self._blocks.append(bytes(data))
        else:
            self._open += data
            if len(self._open) >= _BLOCK:
                self._close()
        self.size += len(data)

    def _close(self) -> None:
        if self._open:
            self._blocks.append(bytes(self._open))
            self._open = bytearray()

    def drop_front(self, count: int) -> None:
        count = max(0, min(count, self.size))
        self.size -= count
        while count and self._blocks:
            left = len(self._blocks[0]) - self._skip
            if count < left:
                self._skip += count
                return
            self._blocks.popleft()
            self._skip = 0
            count -= left
        if count:
            del self._open[:count]

    def parts(self) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = list(self._blocks)
        if parts and self._skip:
            parts[0] = memoryview(parts[0])[self._skip:]
        if self._open:
            parts.append(bytes(self._open))
        return parts


class Collector:
    """Collects one stream (stdout or stderr) of one command."""

    def __init__(
        self,
        name: str,
        mode: CaptureMode | None,
        emit: Callable[[str | bytes], Awaitable[None]],
        *,
        max_at_end: int = DEFAULT_MAX_AT_END,
    ):
        self.name = name
        self.mode = mode
        self._emit = emit
        self._max_at_end = max_at_end
        self._text = _Text() if mode is not None and mode.format != "bin" else None
        self.total = 0
        # An ``atEnd`` capture keeps its first and last bytes: a whole one up to half its cap
        # each, so nothing is cut from output that fits the cap; one with a part its limit's
        # worth, but never more than the cap (a requestor may ask for any limit).
        self._limit = max_at_end
        part = mode.part if isinstance(mode, AtEnd) else None
        if isinstance(mode, AtEnd) and mode.part is not None:
            assert mode.limit is not None
            self._limit = min(mode.limit, max_at_end)
        elif isinstance(mode, Stream):
            # A streamed command's result carries its output too (as yagna's exe unit does):
            # what was streamed, up to its limit; without one, its ends (the events carry it
            # all), so that streaming stays the way to move much output in little memory.
            if mode.limit is not None:
                self._limit, part = min(mode.limit, max_at_end), "head"
            else:
                self._limit = min(STREAM_KEPT, max_at_end)
        self._rooms = _split(part, self._limit)
        self._head = _Bytes()
        self._tail = _Bytes()
        self._kept: tuple[int, int] | None = None  # (head, tail) once finished
        self.overflowed = False
        """Whether a whole capture outgrew its cap (:meth:`feed` raised)."""
        self._streamed = 0
        self._value: str | bytes | None = None
        self._chars_cut = (0, 0)  # (characters of the text form, characters cut from it)
        # Always kept, whatever the mode: the end of stderr explains a failure in its message.
        self.last = bytearray()

    @property
    def streams(self) -> bool:
        """Whether output is wanted as it comes (events), not only at the end."""
        return isinstance(self.mode, Stream)

    async def feed(self, data: bytes | bytearray) -> None:
        """Takes the next piece of the stream (see :meth:`take`), and emits it if streamed."""
        emitted = self.take(data)
        if emitted is not None:
            await emitted

    def take(self, data: bytes | bytearray) -> Awaitable[None] | None:
        """Takes the next piece of the stream; for a streamed capture, returns the emission of
        the piece, to be awaited before the next one (else ``None``: nothing to wait for).

        Raises :class:`CaptureLimitExceeded` when this piece takes a whole ``atEnd`` capture
        over its cap (once: later pieces are taken, and cut, silently); the piece is kept all
        the same, so the capture's tail is the end of what was fed.
        """
        self.total += len(data)
        self.last += data[-ERROR_TAIL:]
        if len(self.last) > ERROR_TAIL:
            del self.last[: len(self.last) - ERROR_TAIL]
        mode = self.mode
        if isinstance(mode, Stream):
            room = len(data) if mode.limit is None else max(0, mode.limit - self._streamed)
            chunk = bytes(data[:room])  # no copy when data is bytes
            if chunk:
                self._streamed += len(chunk)
                self._keep(chunk)
                return self._emit(self._text.decode(chunk) if self._text else chunk)
        elif isinstance(mode, AtEnd):
            self._keep(data)
            if mode.part is None and not self.overflowed and self.total > self._max_at_end:
                self.overflowed = True
                raise CaptureLimitExceeded(
                    f"{self.name} exceeded the {self._max_at_end} byte limit of a whole "
                    "capture; capture it as a stream, or with head/tail limits"
                )
        return None

    def _keep(self, data: bytes | bytearray) -> None:
        head_room, tail_room = self._rooms
        if self._head.size < head_room:
            take = head_room - self._head.size
            self._head.append(data if take >= len(data) else data[:take])
            data = data[take:]
        if tail_room and data:
            self._tail.append(data if len(data) <= tail_room else data[-tail_room:])
            self._tail.drop_front(self._tail.size - tail_room)

    async def finish(self) -> None:
        """Called once the command has exited; call before :meth:`value` and :meth:`notes`."""
        if isinstance(self.mode, Stream) and self._text is not None:
            rest = self._text.decode(b"", final=True)
            if rest:
                await self._emit(rest)
            self._text = _Text()  # the kept copy is decoded afresh below
        if self.mode is not None and self._kept is None:
            self._kept = (self._head.size, self._tail.size)
            parts = [*self._head.parts(), *self._tail.parts()]
            self._head, self._tail = _Bytes(), _Bytes()  # held once, in the value, from now
            if self._text is None:
                self._value = b"".join(parts)
                return
            if sum(map(len, parts)) <= min(self._limit, _BLOCK):
                # The usual case, a little valid text, without the general path's pieces.
                try:
                    self._value = b"".join(parts).decode()
                    self._chars_cut = (len(self._value), 0)
                    return
                except UnicodeDecodeError:
                    pass
            # Escapes make bad bytes four characters each: the text is kept to the cap in
            # characters too, piece by piece, so it never grows to four times the cap.
            text = _HeadTailText(self._limit)
            for part in parts:
                for at in range(0, len(part), _BLOCK):
                    text.add(self._text.decode(bytes(part[at:at + _BLOCK])))
            text.add(self._text.decode(b"", final=True))
            self._value = text.value()
            self._chars_cut = (text.total, text.total - len(self._value))

    def value(self) -> str | bytes | None:
        """What goes in the result's ``stdout``/``stderr`` field."""
        return self._value

    def notes(self) -> list[str]:
        notes = []
        mode = self.mode
        if isinstance(mode, AtEnd):
            head, tail = self._kept or (self._head.size, self._tail.size)
            kept = head + tail
            if kept < self.total and mode.part is None:
                notes.append(
                    f"{self.name}: {self.total} bytes exceed the {self._max_at_end} byte limit "
                    f"of a whole capture; kept the first {head} and last {tail} bytes, "
                    f"cut {self.total - kept}"
                )
            elif kept < self.total and mode.part is not None:
                where = {"head": "first", "tail": "last", "headTail": "first and last"}[mode.part]
                capped = (f", capped at this provider's {self._limit}"
                          if self._limit != mode.limit else "")
                notes.append(
                    f"{self.name}: kept the {where} {kept} of {self.total} bytes "
                    f"({mode.part} limit {mode.limit}{capped})"
                )
        if isinstance(mode, Stream) and self._kept is not None and \
                sum(self._kept) < self._streamed:
            head, tail = self._kept
            notes.append(f"{self.name}: all {self._streamed} bytes were streamed; the result "
                         f"keeps the first {head} and last {tail}")
        if isinstance(mode, Stream) and self._streamed < self.total:
            notes.append(
                f"{self.name}: stream limit of {mode.limit} bytes reached, "
                f"{self.total - self._streamed} of {self.total} bytes not sent"
            )
        if self._text is not None and self._text.invalid:
            notes.append(f"{self.name}: not valid UTF-8, bad bytes shown as \\x escapes "
                         "(capture with format 'bin' for the exact bytes)")
        chars, cut = self._chars_cut
        if cut:
            notes.append(f"{self.name}: its text with escapes ran to {chars} characters; kept "
                         f"the first and last {chars - cut} within the {self._limit} limit, "
                         f"cut {cut}")
        return notes

    def tail_text(self) -> str:
        return bytes(self.last).decode("utf-8", errors="backslashreplace").strip()


class _HeadTailText:
    """The first and last characters of a text given piece by piece, at most ``limit`` in all."""

    def __init__(self, limit: int) -> None:
        self._head_room = limit // 2
        self._tail_room = limit - self._head_room
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self.total = 0

    def add(self, piece: str) -> None:
        self.total += len(piece)
        if self._head_len < self._head_room:
            take = piece[: self._head_room - self._head_len]
            self._head.append(take)
            self._head_len += len(take)
            piece = piece[len(take):]
        if piece:
            self._tail.append(piece)
            self._tail_len += len(piece)
            while self._tail and self._tail_len - len(self._tail[0]) >= self._tail_room:
                self._tail_len -= len(self._tail.popleft())

    def value(self) -> str:
        tail = "".join(self._tail)
        return "".join(self._head) + tail[max(0, len(tail) - self._tail_room):]


def _split(part: str | None, limit: int) -> tuple[int, int]:
    """Bytes kept from the start and from the end for a head/tail/headTail (or whole) limit."""
    if part == "head":
        return limit, 0
    if part == "tail":
        return 0, limit
    return limit // 2, limit - limit // 2
