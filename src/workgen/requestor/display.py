"""Progress display and end-of-run summary: the default consumers of a run's events.

:class:`RunSummary` folds the events of :mod:`workgen.requestor.events` into what a run is judged
by (tasks, providers, failures, money). :class:`ProgressDisplay` is ``Golem``'s default
``event_consumer``: a live status line on a terminal (log records otherwise), live command output,
and the summary at the end of the run. :func:`log_events` logs every event, for plain logs.
Consumers only read events; they never call back into the engine, and they never raise into it.
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
import reprlib
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from ..protocol.money import exact, readable
from ..protocol.pricing import LinearPricing
from ..protocol.properties import USAGE_CPU_SEC, USAGE_DURATION_SEC
from .events import (
    ActivityCreated, ActivityDestroyed, ActivityFailed, AgreementCreated, AgreementRejected,
    CommandOutput, DebitNoteAccepted, DebitNoteRejected, Event, GolemStarted, GolemStopped,
    AgreementTerminated, InvoiceAccepted, InvoiceRejected, JobFinished, JobStarted,
    PaymentMissing, ScriptFinished,
    ScriptSent, ServiceStateChanged, TaskAccepted, TaskFailed, TaskRejected, TaskRetried,
    TaskStarted,
)

__all__ = ["ProgressDisplay", "RunSummary", "log_events"]

logger = logging.getLogger("workgen")
_events_logger = logging.getLogger("workgen.events")

_MAX_LISTED = 20  # failures/providers listed one per line; the rest are counted, by reason
_REASON_WIDTH = 160
_REDRAW_INTERVAL = 0.1  # seconds: at most ~10 status redraws per second
_MAX_PARTIAL_LINE = 4096  # output without a newline is shown once this long, not held forever
_CLEAR_LINE = "\r\x1b[2K"
_MAX_PROVIDER_LINES = 8  # live provider lines; more are counted on one line


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"




def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _one_line(text: str | None, width: int = _REASON_WIDTH) -> str:
    """The first line of a reason; a cut is marked with '...' so it never looks complete."""
    lines = (text or "").strip().splitlines()
    if not lines:
        return "no reason given"
    if len(lines) > 1 or len(lines[0]) > width:
        return lines[0][:width].rstrip() + " ..."
    return lines[0]


def _short_repr(value: Any) -> str:
    # reprlib also survives a __repr__ that raises: user data must not break the report.
    short = reprlib.Repr()
    short.maxstring = short.maxother = 40
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 4
    return short.repr(value)


def _grouped(reasons: Counter[str]) -> str:
    return ", ".join(r if n == 1 else f"{r} x{n}" for r, n in reasons.most_common())


@dataclass(slots=True)
class _Task:
    attempts: int = 0


_FINISHED_KEYS = 256
"""Finished tasks remembered, so that a repeated outcome is not counted twice."""


class RunSummary:
    """An event consumer that aggregates a run; :meth:`render` gives the end-of-run report.

    Its attributes are the aggregates, to read, not to change; failures and payment problems
    are kept as the events themselves. Amounts are exact Decimals. Debit notes are cumulative
    per agreement (Golem's model), so only the last accepted one per agreement counts.
    """

    def __init__(self) -> None:
        self.currency = ""  # from GolemStarted
        self.started_at: datetime | None = None  # GolemStarted, else the first event
        self.stopped_at: datetime | None = None  # GolemStopped, else the latest event
        self.jobs: dict[str, str | None] = {}  # job id -> why it ended early; in start order
        self.accepted_by_provider: Counter[str] = Counter()
        self.time_by_provider: dict[str, float] = collections.defaultdict(float)
        """Seconds the accepted tasks of each provider ran."""
        self.failures_by_provider: Counter[str] = Counter()  # rejected results, failed activities
        self.rejected_results: Counter[str] = Counter()  # by reason; the task may be retried
        self.retries = 0
        self.failed_tasks: list[TaskFailed] = []  # failed for good, in order
        self.agreements: dict[str, str] = {}  # agreement id -> provider name
        self.agreements_rejected: list[AgreementRejected] = []
        self.activities = 0
        self.activities_failed: list[ActivityFailed] = []
        self.scripts = 0
        self.scripts_failed = 0
        self.debit_notes: dict[str, Decimal] = {}  # agreement id -> last accepted amount
        self.debit_notes_rejected: list[DebitNoteRejected] = []
        self.invoices: list[InvoiceAccepted] = []
        self.invoices_rejected: list[InvoiceRejected] = []
        self.payments_missing: list[PaymentMissing] = []
        self.services: dict[tuple[str, str], ServiceStateChanged] = {}
        """(cluster, instance) -> the instance's latest state change."""
        self.service_failures: list[ServiceStateChanged] = []
        # Tasks not finished yet (task ids are unique per job). A finished task leaves only
        # counts behind, and its key a while, so a long run's summary stays small.
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._finished: collections.OrderedDict[tuple[str, str], None] = \
            collections.OrderedDict()
        self._finished_count = 0
        self._finished_started = 0
        self._job_ids: set[str] = set()
        self._open_jobs: list[str] = []
        self._expected: dict[str, int] = {}
        self._done: Counter[str] = Counter()  # finished (accepted or failed) tasks per job
        self._stopped = False

    def __call__(self, event: Event) -> None:
        try:
            self._record(event)
        except Exception:  # a consumer must never break the run it reports on
            logger.warning("run summary could not record %s", type(event).__name__, exc_info=True)

    def _record(self, event: Event) -> None:
        # A mistyped amount is refused here, or it would break every later sum and render.
        if not isinstance(getattr(event, "amount", Decimal(0)), Decimal):
            raise TypeError(f"{type(event).__name__}.amount is not a Decimal")
        if self.started_at is None or isinstance(event, GolemStarted):
            self.started_at = event.timestamp
        if isinstance(event, GolemStarted):
            self.currency = event.currency
        if not self._stopped:
            self.stopped_at = event.timestamp
        match event:
            case GolemStopped():
                self._stopped = True
            case JobStarted():
                self.jobs[event.job_id] = None
                self._open_jobs.append(event.job_id)
                if event.tasks_total is not None:  # known when the data has a length
                    self._expected[event.job_id] = event.tasks_total
            case JobFinished():
                self.jobs[event.job_id] = event.error
                if event.job_id in self._open_jobs:
                    self._open_jobs.remove(event.job_id)
            case AgreementCreated():
                self.agreements[event.agreement_id] = event.provider_name
            case AgreementRejected():
                self.agreements_rejected.append(event)
            case ActivityCreated():
                self.activities += 1
            case ActivityFailed():
                self.activities_failed.append(event)
                self.failures_by_provider[event.provider_name] += 1
            case ScriptSent():
                self.scripts += 1
            case ScriptFinished(success=False):
                self.scripts_failed += 1
            case TaskStarted():
                self._job_ids.add(event.job_id)
                self._tasks.setdefault((event.job_id, event.task_id), _Task()).attempts += 1
            case TaskAccepted():
                if self._finish_task(event.job_id, event.task_id, "accepted"):
                    self.accepted_by_provider[event.provider_name] += 1
                    self.time_by_provider[event.provider_name] += event.running_time or 0.0
            case TaskRejected():
                self.rejected_results[_one_line(event.reason)] += 1
                self.failures_by_provider[event.provider_name] += 1
            case TaskRetried():
                self.retries += 1
            case TaskFailed():
                if self._finish_task(event.job_id, event.task_id, "failed"):
                    self.failed_tasks.append(event)
            case DebitNoteAccepted():
                self.debit_notes[event.agreement_id] = event.amount
            case DebitNoteRejected():
                self.debit_notes_rejected.append(event)
            case InvoiceAccepted():
                self.invoices.append(event)
            case InvoiceRejected():
                self.invoices_rejected.append(event)
            case PaymentMissing():
                self.payments_missing.append(event)
            case ServiceStateChanged():
                self.services[(event.cluster_id, event.instance_id)] = event
                if _service_failed(event):
                    self.service_failures.append(event)

    def _finish_task(self, job_id: str, task_id: str, outcome: str) -> bool:
        key = (job_id, task_id)
        if key in self._finished:
            return False  # a repeated outcome must not be counted twice
        task = self._tasks.pop(key, None)
        self._finished[key] = None
        if len(self._finished) > _FINISHED_KEYS:
            self._finished.popitem(last=False)
        self._job_ids.add(job_id)
        self._finished_count += 1
        self._finished_started += 1 if task is not None and task.attempts else 0
        self._done[job_id] += 1
        return True

    @property
    def tasks_total(self) -> int:
        """Tasks seen so far: started, or failed without ever running."""
        return len(self._tasks) + self._finished_count

    @property
    def tasks_started(self) -> int:
        return self._finished_started + sum(1 for t in self._tasks.values() if t.attempts)

    @property
    def tasks_accepted(self) -> int:
        return sum(self.accepted_by_provider.values())

    @property
    def providers(self) -> list[str]:
        """Providers we had an agreement with, that delivered a task or ran a service
        instance, sorted by name."""
        return sorted(set(self.agreements.values()) | set(self.accepted_by_provider)
                      | {e.provider_name for e in self.services.values() if e.provider_name})

    @property
    def total_cost(self) -> Decimal:
        """The sum of accepted invoices: what the run costs."""
        return sum((i.amount for i in self.invoices), Decimal(0))

    def _invoiced(self) -> dict[str, Decimal]:
        invoiced: dict[str, Decimal] = {}
        for invoice in self.invoices:
            invoiced[invoice.agreement_id] = invoiced.get(invoice.agreement_id, 0) + invoice.amount
        return invoiced

    @property
    def running_cost(self) -> Decimal:
        """Cost so far: per agreement, its invoices or else its last accepted debit note."""
        invoiced = self._invoiced()
        return sum((max(self.debit_notes.get(a, Decimal(0)), invoiced.get(a, Decimal(0)))
                    for a in self.debit_notes.keys() | invoiced.keys()), Decimal(0))

    @property
    def unpaid(self) -> dict[str, Decimal]:
        """Agreement id -> the accepted debit-note amount that no accepted invoice covers.

        An agreement whose invoice never arrived (PaymentMissing) is listed even at zero.
        """
        invoiced = self._invoiced()
        unpaid = {a: d - invoiced.get(a, 0) for a, d in self.debit_notes.items()
                  if d > invoiced.get(a, 0)}
        for missing in self.payments_missing:
            unpaid.setdefault(missing.agreement_id, Decimal(0))
        return unpaid

    @property
    def elapsed(self) -> float:
        """Seconds from GolemStarted to GolemStopped (or the first event to the latest)."""
        if self.started_at is None or self.stopped_at is None:
            return 0.0
        return max((self.stopped_at - self.started_at).total_seconds(), 0.0)

    @property
    def current_job(self) -> str | None:
        """The latest job still running, else the latest job."""
        return self._open_jobs[-1] if self._open_jobs else next(reversed(self.jobs), None)

    def progress(self, job_id: str | None = None) -> tuple[int, int | None]:
        """Finished tasks and the expected total (``None`` while unknown), of a job or the run."""
        if job_id is not None:
            return self._done[job_id], self._expected.get(job_id)
        known = bool(self.jobs) and self.jobs.keys() <= self._expected.keys()
        return sum(self._done.values()), sum(self._expected.values()) if known else None

    # -- the report ------------------------------------------------------------------------

    def render(self) -> str:
        """A compact multi-line end-of-run report; every failure is listed or counted."""
        total, accepted, failed = self.tasks_total, self.tasks_accepted, len(self.failed_tasks)
        head = f"workgen: {_plural(total, 'task') if total else 'no tasks'}"
        if self.services:
            head = (f"workgen: {_plural(total, 'task')} and "
                    if total else "workgen: ") + _plural(len(self.services), "service instance")
        head += f" in {_duration(self.elapsed)}"
        if total:
            head += f": {accepted} accepted, {failed} failed"
            if unfinished := total - accepted - failed:
                head += f", {unfinished} unfinished"
        if self.services:
            states = Counter(e.state for e in self.services.values())
            head += ("; " if total else ": ") + ", ".join(
                f"{n} {state}" for state, n in sorted(states.items()))
        lines = [head, *self._provider_lines(), *self._failure_lines()]
        lines += [f"  service instance {e.instance_id} ({e.service}) on "
                  f"{e.provider_name or 'no provider'}: {e.state}, {_one_line(e.reason)}"
                  for e in self.service_failures[:_MAX_LISTED]]
        lines += [f"  job {job} ended early: {_one_line(error)}"
                  for job, error in self.jobs.items() if error]
        if self.rejected_results or self.retries:
            rejected = sum(self.rejected_results.values())
            lines.append(f"  results rejected: {rejected}"
                         + (f" ({_grouped(self.rejected_results)})" if rejected else "")
                         + f", retries: {self.retries}")
        return "\n".join(lines + self._money_lines())

    def _provider_lines(self) -> list[str]:
        """A small table: provider, tasks, failures, time, cost (and service instances). The
        costs are rounded for reading; the total below them is exact."""
        count = self.accepted_by_provider
        names = sorted(self.providers, key=lambda n: (-count[n], n))
        if not names:
            return []
        listed, rest = names[:_MAX_LISTED], names[_MAX_LISTED:]
        costs = self.cost_by_provider()
        instances = Counter(e.provider_name for e in self.services.values() if e.provider_name)
        rows: list[tuple[str, ...]] = [("provider", "tasks", "failures", "time", "cost")]
        rows += [(n, str(count[n]), str(self.failures_by_provider[n]),
                  _duration(self.time_by_provider[n]),
                  readable(costs.get(n, Decimal(0)), self.currency))
                 for n in listed]
        if instances:
            rows = [row + ("instances" if i == 0 else str(instances[row[0]]),)
                    for i, row in enumerate(rows)]
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = ["  " + "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                                  for c, (cell, w) in enumerate(zip(row, widths, strict=True))
                                  ).rstrip()
                 for row in rows]
        if rest:
            tasks = sum(count[n] for n in rest)
            lines.append(f"  ... and {len(rest)} more providers ({_plural(tasks, 'task')})")
        return lines

    def _failure_lines(self) -> list[str]:
        # Task ids are per job: name the job only when there is more than one.
        several_jobs = len(self._job_ids) > 1
        lines = []
        for f in self.failed_tasks[:_MAX_LISTED]:
            name = f"{f.job_id}/{f.task_id}" if several_jobs else f.task_id
            lines.append(f"  failed: task {name} (data={_short_repr(f.data)}): "
                         f"{_one_line(f.reason)} ({_plural(f.attempts, 'attempt')})")
        if rest := self.failed_tasks[_MAX_LISTED:]:
            reasons = Counter(_one_line(f.reason) for f in rest)
            lines.append(f"  ... and {len(rest)} more failed: {_grouped(reasons)}")
        return lines

    def _money(self, amount: Decimal) -> str:
        """Exact: the summary's figures are accounts."""
        return exact(amount, self.currency)

    def cost_by_provider(self) -> dict[str, Decimal]:
        """What each provider's accepted invoices came to."""
        costs: dict[str, Decimal] = {}
        for invoice in self.invoices:
            costs[invoice.provider_name] = costs.get(invoice.provider_name, Decimal(0)) \
                + invoice.amount
        return costs

    def _money_lines(self) -> list[str]:
        line = (f"  cost: {self._money(self.total_cost)} "
                f"({_plural(len(self.invoices), 'invoice')}")
        if self.tasks_accepted:
            per_task = self.total_cost / self.tasks_accepted
            line += f"; {readable(per_task, self.currency)} per task"
        line += ")"
        line += f", agreements: {len(self.agreements)}"
        if self.agreements_rejected:
            reasons = Counter(_one_line(a.reason) for a in self.agreements_rejected)
            line += f" ({len(self.agreements_rejected)} rejected: {_grouped(reasons)})"
        if self.activities_failed:
            reasons = Counter(_one_line(a.reason) for a in self.activities_failed)
            line += f", activities failed: {len(self.activities_failed)} ({_grouped(reasons)})"
        if self.scripts_failed:
            line += f", scripts failed: {self.scripts_failed} of {self.scripts}"
        lines = [line]
        if unpaid := self.unpaid:
            missing = {m.agreement_id: m.provider_name for m in self.payments_missing}
            owed = [f"{self.agreements.get(a) or missing.get(a, a)} {self._money(amount)}"
                    + (" (no invoice)" if a in missing else "") for a, amount in unpaid.items()]
            more = f", ... and {len(owed) - _MAX_LISTED} more" if len(owed) > _MAX_LISTED else ""
            lines.append(f"  unpaid: {self._money(sum(unpaid.values(), Decimal(0)))} on "
                         f"{_plural(len(unpaid), 'agreement')}: "
                         + ", ".join(owed[:_MAX_LISTED]) + more)
        lines += [f"  invoice rejected: {self._money(i.amount)} from {i.provider_name}: "
                  f"{_one_line(i.reason)}" for i in self.invoices_rejected]
        if self.debit_notes_rejected:
            reasons = Counter(_one_line(d.reason) for d in self.debit_notes_rejected)
            lines.append(f"  debit notes rejected: {len(self.debit_notes_rejected)} "
                         f"({_grouped(reasons)})")
        return lines


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


def _service_failed(event: ServiceStateChanged) -> bool:
    return event.state == "unresponsive" or (event.reason or "").startswith(
        ("failed", "trying another provider"))


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
        if failed := len(s.failed_tasks):
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
