"""Output capture: turns a command's stdout/stderr bytes into what its capture mode asks for.

``atEnd`` keeps the output (or its head, tail or both ends) for the command's result; ``stream``
hands each chunk on as a runtime event while the command runs and keeps nothing. Memory stays
bounded in every mode except a whole ``atEnd`` capture, which is capped by ``max_at_end`` bytes:
hitting the cap fails the command instead of cutting its output. Whatever is left out is said in
the result's message, and text that is not valid UTF-8 is shown with ``\\x`` escapes and
reported, never dropped.
"""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable

from ...protocol.exescript import AtEnd, CaptureMode, Stream

DEFAULT_MAX_AT_END = 64 << 20
ERROR_TAIL = 2048


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
        self._head = bytearray()
        self._tail = bytearray()
        self._streamed = 0
        self._value: str | bytes | None = None
        # Always kept, whatever the mode: the end of stderr explains a failure in its message.
        self.last = bytearray()

    async def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.last += data
        if len(self.last) > ERROR_TAIL:
            del self.last[: len(self.last) - ERROR_TAIL]
        mode = self.mode
        if isinstance(mode, Stream):
            room = len(data) if mode.limit is None else max(0, mode.limit - self._streamed)
            chunk = data[:room]
            if chunk:
                self._streamed += len(chunk)
                await self._emit(self._text.decode(chunk) if self._text else bytes(chunk))
        elif isinstance(mode, AtEnd):
            if mode.part is None:
                if self.total > self._max_at_end:
                    raise CaptureLimitExceeded(
                        f"{self.name} exceeded the {self._max_at_end} byte limit of a whole "
                        "capture; capture it as a stream, or with head/tail limits"
                    )
                self._head += data
                return
            assert mode.limit is not None
            head_room, tail_room = _split(mode)
            if len(self._head) < head_room:
                take = head_room - len(self._head)
                self._head += data[:take]
                data = data[take:]
            if tail_room and data:
                self._tail += data
                if len(self._tail) > tail_room:
                    del self._tail[: len(self._tail) - tail_room]

    async def finish(self) -> None:
        """Called once the command has exited; call before :meth:`value` and :meth:`notes`."""
        if isinstance(self.mode, Stream) and self._text is not None:
            rest = self._text.decode(b"", final=True)
            if rest:
                await self._emit(rest)
        elif isinstance(self.mode, AtEnd):
            data = bytes(self._head + self._tail)
            self._value = data if self._text is None else self._text.decode(data, final=True)

    def value(self) -> str | bytes | None:
        """What goes in the result's ``stdout``/``stderr`` field."""
        return self._value

    def notes(self) -> list[str]:
        notes = []
        mode = self.mode
        if isinstance(mode, AtEnd) and mode.part is not None:
            kept = len(self._head) + len(self._tail)
            if kept < self.total:
                where = {"head": "first", "tail": "last", "headTail": "first and last"}[mode.part]
                notes.append(
                    f"{self.name}: kept the {where} {kept} of {self.total} bytes "
                    f"({mode.part} limit {mode.limit})"
                )
        if isinstance(mode, Stream) and self._streamed < self.total:
            notes.append(
                f"{self.name}: stream limit of {mode.limit} bytes reached, "
                f"{self.total - self._streamed} of {self.total} bytes not sent"
            )
        if self._text is not None and self._text.invalid:
            notes.append(f"{self.name}: not valid UTF-8, bad bytes shown as \\x escapes "
                         "(capture with format 'bin' for the exact bytes)")
        return notes

    def tail_text(self) -> str:
        return bytes(self.last).decode("utf-8", errors="backslashreplace").strip()


def _split(mode: AtEnd) -> tuple[int, int]:
    """Bytes kept from the start and from the end for a head/tail/headTail limit."""
    assert mode.limit is not None
    if mode.part == "head":
        return mode.limit, 0
    if mode.part == "tail":
        return 0, mode.limit
    return mode.limit // 2, mode.limit - mode.limit // 2
