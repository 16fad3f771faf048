"""The progress display: the default consumer of a run's events.

:class:`ProgressDisplay` is ``Golem``'s default ``event_consumer``: a live status line on a
terminal (log records otherwise), live command output, and the end-of-run summary
(:class:`~workgen.requestor.summary.RunSummary`, re-exported here). :func:`log_events` logs
every event, for plain logs. Consumers only read events; they never call back into the engine,
and they never raise into it.
"""

from __future__ import annotations

import codecs
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

from ..protocol.money import exact, readable
from ..protocol.pricing import LinearPricing
from ..protocol.properties import USAGE_CPU_SEC, USAGE_DURATION_SEC
from .events import (
    ActivityCreated, ActivityDestroyed, ActivityFailed, AgreementCreated, AgreementRejected,
    AgreementTerminated, CommandOutput, DebitNoteRejected, Event, GolemStarted, GolemStopped,
    InvoiceAccepted, InvoiceRejected, JobFinished, JobStarted, PaymentMissing, ScriptFinished,
    ServiceStateChanged, TaskAccepted, TaskFailed, TaskRejected, TaskRetried, TaskStarted,
)
from .summary import RunSummary, _duration, _one_line, _plural, _service_failed, _short_repr

__all__ = ["ProgressDisplay", "RunSummary", "log_events"]

logger = logging.getLogger("workgen")
_events_logger = logging.getLogger("workgen.events")

_REDRAW_INTERVAL = 0.1  # seconds: at most ~10 status redraws per second
_MAX_PARTIAL_LINE = 4096  # output without a newline is shown once this long, not held forever
_CLEAR_LINE = "\r\x1b[2K"
_MAX_PROVIDER_LINES = 8  # live provider lines; more are counted on one line


def _notable(event: Event) -> tuple[int, str] | None:
    """The line (and log level) for an event worth telling the user about as it happens."""
    match event:
        case TaskRetried():
            return logging.INFO, (f"task {event.task_id} will be tried again (attempt "
                                  f"{event.attempt + 1}): {_one_line(event.reason)}")
        case TaskFailed():
            return logging.WARNING, (
                f"task {event.task_id} failed after {_plural(event.attempts, 'attempt')}: "
                f"{event.reason} (data={_short_repr(event.data)})")
        case ActivityFailed():
            return logging.WARNING, (
                f"activity {event.activity_id} on {event.provider_name} failed: {event.reason}")
        case AgreementRejected():
            return logging.INFO, f"agreement with {event.provider_name} rejected: {event.reason}"
        case InvoiceRejected() | DebitNoteRejected():
            kind = "invoice" if isinstance(event, InvoiceRejected) else "debit note"
            return logging.WARNING, (f"{kind} of {exact(event.amount)} from "
                                     f"{event.provider_name} rejected: {event.reason}")
        case PaymentMissing():
            return logging.WARNING, (f"no invoice from {event.provider_name} for agreement "
                                     f"{event.agreement_id}")
        case ServiceStateChanged() if _service_failed(event):
            return logging.WARNING, (f"service instance {event.instance_id} ({event.service}) "
                                     f"on {event.provider_name}: {event.state}, "
                                     f"{event.reason}")
        case ServiceStateChanged(state="running"):
            return logging.INFO, (f"service instance {event.instance_id} ({event.service}) "
                                  f"running on {event.provider_name}")
        case JobFinished(error=None):
            return logging.INFO, f"job {event.job_id} finished"
        case JobFinished():
            return logging.WARNING, f"job {event.job_id} ended early: {event.error}"
    return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@dataclass
class _LiveAgreement:
    """What the display needs to estimate an agreement's cost before its provider bills."""

    provider: str
    pricing: LinearPricing | None
    since: float
    busy: float = 0.0  # seconds its tasks ran, finished ones
    task_since: float | None = None  # when its current task started


class ProgressDisplay:
    """``Golem``'s default event consumer: progress while running, the summary at the end.

    Live (default on a terminal): a status line redrawn in place, at most ~10 times a second
    and only when an event arrives (no threads), under a line per provider at work (its state
    and tasks done), with important events (retries and failures among them) and command
    output printed above them.
    Not live: no ANSI codes; important events go to the ``workgen`` logger. In both modes
    live command output is written to the stream as ``[provider] line``, and the
    :class:`RunSummary` report (``self.summary``) is written at ``GolemStopped``.
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self._stream: TextIO = sys.stderr if stream is None else stream
        self.live: bool = _isatty(self._stream) if live is None else live
        self.summary = RunSummary()
        self._status_shown = False
        self._region_lines = 0  # lines of the live region now on screen (0: none)
        self._at_work: dict[str, tuple[str, float]] = {}  # provider -> (what it does, since)
        self._live: dict[str, _LiveAgreement] = {}  # agreements not ended yet, by id
        self._last_draw = float("-inf")
        self._clock_start: float | None = None
        self._job_clock: dict[str, float] = {}
        self._stopped = False
        self._broken = False
        # Partial output lines and byte decoders per (activity, command index, stream).
        self._partial: dict[tuple[str, int, str], tuple[str, str]] = {}
        self._decoders: dict[tuple[str, int, str], codecs.IncrementalDecoder] = {}
        try:
            "·".encode(getattr(self._stream, "encoding", None) or "utf-8")
            self._sep = " · "
        except (UnicodeError, LookupError):
            self._sep = " | "

    def __call__(self, event: Event) -> None:
        try:
            self._handle(event)
        except Exception:  # e.g. a closed stream: say so once, never break the run
            if not self._broken:
                self._broken = True
                logger.warning("progress display failed", exc_info=True)

    def _handle(self, event: Event) -> None:
        self.summary(event)
        if self._clock_start is None or isinstance(event, GolemStarted):
            self._clock_start = time.monotonic()
            self._stopped = False
        if isinstance(event, GolemStopped):
            self._finish()
            return
        if isinstance(event, JobStarted):
            self._job_clock[event.job_id] = time.monotonic()
        self._track_provider(event)
        if isinstance(event, CommandOutput):
            self._output(event)
        elif isinstance(event, (ScriptFinished, ActivityFailed, ActivityDestroyed)):
            self._flush_output(event.activity_id)
        note = _notable(event)
        if note is not None and self.live:
            self._write(note[1] + "\n")
        elif note is not None:
            logger.log(note[0], "%s", note[1])
        if self.live and not self._stopped:
            # After a printed line the status must come back now, not at the next event.
            self._draw_status(force=note is not None)

    def _track_provider(self, event: Event) -> None:
        """What each provider with a live agreement is doing, for its live line."""
        now = time.monotonic()
        self._track_agreement(event, now)
        match event:
            case AgreementCreated():
                self._at_work[event.provider_name] = ("agreed", now)
            case ActivityCreated():
                self._at_work[event.provider_name] = ("starting", now)
            case TaskStarted():
                self._at_work[event.provider_name] = (f"task {event.task_id}", now)
            case TaskAccepted() | TaskRejected():
                self._at_work[event.provider_name] = ("between tasks", now)
            case ActivityFailed():
                self._at_work[event.provider_name] = ("failed", now)
            case ServiceStateChanged() if event.provider_name:
                self._at_work[event.provider_name] = (
                    f"instance {event.instance_id} {event.state}", now)
            case AgreementTerminated():
                self._at_work.pop(event.provider_name, None)

    def _track_agreement(self, event: Event, now: float) -> None:
        match event:
            case AgreementCreated():
                self._live[event.agreement_id] = _LiveAgreement(event.provider_name,
                                                                event.pricing, now)
            case AgreementTerminated() | InvoiceAccepted():
                self._live.pop(event.agreement_id, None)
            case TaskStarted():
                for live in self._live.values():
                    if live.provider == event.provider_name:
                        live.task_since = now
            case TaskAccepted() | TaskRejected():
                for live in self._live.values():
                    if live.provider == event.provider_name and live.task_since is not None:
                        live.busy += now - live.task_since
                        live.task_since = None

    def _estimated_cost(self, now: float) -> tuple[Decimal, bool]:
        """The cost so far, and whether it is an estimate: what was billed, or for agreements
        not billed yet, their agreed prices applied to their time and their tasks' time (as
        CPU time, one core each), whichever is more."""
        s = self.summary
        billed = s.running_cost
        known = {**s.debit_notes, **{i.agreement_id: i.amount for i in s.invoices}}
        extra = Decimal(0)
        for agreement_id, live in self._live.items():
            if live.pricing is None:
                continue
            busy = live.busy + (now - live.task_since if live.task_since is not None else 0.0)
            usage = {USAGE_DURATION_SEC: now - live.since, USAGE_CPU_SEC: busy}
            try:
                guess = live.pricing.price_for(
                    {k: v for k, v in usage.items() if k in live.pricing.usage_vector})
            except ValueError:
                continue
            extra += max(Decimal(0), guess - known.get(agreement_id, Decimal(0)))
        return billed + extra, extra > 0

    def _clear_region(self) -> str:
        """The codes that erase the live region (the cursor is at its last line's end)."""
        if not self._status_shown:
            return ""
        up = self._region_lines - 1
        self._status_shown = False
        self._region_lines = 0
        return (f"\x1b[{up}A" if up > 0 else "") + ("\r\x1b[J" if up > 0 else _CLEAR_LINE)

    def _write(self, text: str) -> None:
        self._stream.write(self._clear_region() + text)
        self._stream.flush()

    def _output(self, event: CommandOutput) -> None:
        key = (event.activity_id, event.index, event.stream)
        chunk = event.output
        if isinstance(chunk, bytes):
            # One incremental decoder per stream: a UTF-8 character may span two chunks.
            decoder = self._decoders.get(key)
            if decoder is None:
                decoder = self._decoders[key] = codecs.getincrementaldecoder("utf-8")("replace")
            chunk = decoder.decode(chunk)
        *lines, rest = (self._partial.pop(key, ("", ""))[1] + chunk).split("\n")
        if len(rest) > _MAX_PARTIAL_LINE:
            lines.append(rest)
            rest = ""
        self._partial[key] = (event.provider_name, rest)  # kept until the script finishes
        if lines:
            self._write("".join(f"[{event.provider_name}] {line.removesuffix(chr(13))}\n"
                                for line in lines))

    def _flush_output(self, activity_id: str | None) -> None:
        """Write held partial lines of one activity (all if ``None``): its output is complete."""
        text = ""
        for key in sorted(k for k in self._partial if activity_id in (None, k[0])):
            decoder = self._decoders.pop(key, None)
            provider, rest = self._partial.pop(key)
            rest += decoder.decode(b"", final=True) if decoder else ""
            if rest:
                text += f"[{provider}] {rest}\n"
        if text:
            self._write(text)

    def _draw_status(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < _REDRAW_INTERVAL:
            return
        self._last_draw = now
        s = self.summary
        job = s.current_job
        done, total = s.progress(job)
        since = self._job_clock.get(job or "", self._clock_start or now)
        rate = done / (now - since) if done and now > since else None
        if total is not None:
            head = f"{self._bar(done, total)} {done}/{total} tasks"
        else:
            head = f"{done} done"
        if rate is not None:
            head += f" · {rate:.1f}/s".replace(" · ", self._sep)
            if total is not None and total > done:
                head += f"{self._sep}ETA {_duration((total - done) / rate)}"
        parts = [f"[{job or 'workgen'}] {head}"]
        if failed := s.failed_tasks.count:
            parts.append(f"{failed} failed")
        if s.services:
            states = Counter(e.state for e in s.services.values())
            services = "services: " + ", ".join(f"{n} {state}"
                                                 for state, n in sorted(states.items()))
            if job is None:
                parts = [f"[workgen] {services}"]
            else:
                parts.append(services)
        parts += [_plural(len(s.providers), "provider"),
                  self._cost_text(now),
                  _duration(now - (self._clock_start or now))]
        width = self._width() - 1
        lines = [line[:width] for line in self._provider_lines(now)]
        lines.append(self._sep.join(parts)[:width])
        erase = self._clear_region() or _CLEAR_LINE
        self._stream.write(erase + "\n".join(lines))
        self._stream.flush()
        self._status_shown = True
        self._region_lines = len(lines)

    def _cost_text(self, now: float) -> str:
        cost, estimated = self._estimated_cost(now)
        return f"cost {'~' if estimated else ''}{readable(cost, self.summary.currency)}"

    def _provider_lines(self, now: float) -> list[str]:
        s = self.summary
        names = sorted(self._at_work)
        lines = []
        for name in names[:_MAX_PROVIDER_LINES]:
            doing, since = self._at_work[name]
            line = f"  {name}: {doing} ({_duration(now - since)}){self._sep}"
            line += f"{s.accepted_by_provider[name]} done"
            if failed := s.failures_by_provider[name]:
                line += f"{self._sep}{failed} failed"
            lines.append(line)
        if len(names) > _MAX_PROVIDER_LINES:
            lines.append(f"  and {_plural(len(names) - _MAX_PROVIDER_LINES, 'more provider')}")
        return lines

    def _bar(self, done: int, total: int, width: int = 20) -> str:
        filled = width if total <= 0 else min(width, width * done // total)
        full, empty = ("█", "░") if self._sep == " · " else ("#", "-")
        return full * filled + empty * (width - filled)

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):  # not a terminal (io.StringIO, a pipe)
            return 80

    def _finish(self) -> None:
        self._flush_output(None)
        self._write(self.summary.render() + "\n")
        self._stopped = True


def log_events(event: Event) -> None:
    """Log every event at DEBUG on the ``workgen.events`` logger: plain logs, no display."""
    _events_logger.debug("%r", event)
