"""The end-of-run summary: a run's events folded into what it is judged by.

:class:`RunSummary` keeps tasks, providers, failures and money as aggregates. A long run's summary
stays small: a finished task leaves counts behind, and failures of every kind keep their first
few occurrences, their number and their most common reasons (:class:`Tally`), not every event.
"""

from __future__ import annotations

import collections
import logging
import reprlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from ..protocol.money import exact, readable
from .events import (
    ActivityCreated, ActivityFailed, AgreementCreated, AgreementRejected, DebitNoteAccepted,
    DebitNoteRejected, Event, GolemStarted, GolemStopped, InvoiceAccepted, InvoiceRejected,
    JobFinished, JobStarted, PaymentMissing, ScriptFinished, ScriptSent, ServiceStateChanged,
    TaskAccepted, TaskFailed, TaskRejected, TaskRetried, TaskStarted,
)

__all__ = ["RunSummary", "Tally"]

logger = logging.getLogger("workgen")

_MAX_LISTED = 20  # failures/providers listed one per line; the rest are counted, by reason
_MAX_REASONS = 10  # distinct reasons counted per kind of failure; later ones count as "other"
_REASON_WIDTH = 160


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


_OTHER = "other reasons"


def _grouped(reasons: Counter[str]) -> str:
    """Reasons by count, most common first; the ones past a tally's cap last."""
    ranked = sorted(reasons.most_common(), key=lambda item: item[0] == _OTHER)
    return ", ".join(r if n == 1 else f"{r} x{n}" for r, n in ranked)


E = TypeVar("E")


class Tally(Generic[E]):
    """The occurrences of one kind of failure: how many there were (:attr:`count`), the first
    few as they happened (:attr:`first`), and how many there were of each reason
    (:attr:`reasons`, by the reason's first line).

    It stays small however long the run: it keeps ``keep`` events, and up to ``max_reasons``
    distinct reasons; occurrences of reasons beyond those are counted under :attr:`OTHER`.
    """

    OTHER = _OTHER

    def __init__(self, keep: int = _MAX_LISTED, max_reasons: int = _MAX_REASONS) -> None:
        self.count = 0
        self.first: list[E] = []
        self.reasons: Counter[str] = Counter()
        self._keep = keep
        self._max_reasons = max_reasons

    def add(self, event: E, reason: str | None) -> None:
        self.count += 1
        if len(self.first) < self._keep:
            self.first.append(event)
        key = _one_line(reason)
        if key not in self.reasons and len(self.reasons) >= self._max_reasons:
            key = self.OTHER
        self.reasons[key] += 1

    def __bool__(self) -> bool:
        return self.count > 0

    def __repr__(self) -> str:
        return f"<Tally of {self.count}: {_grouped(self.reasons) or 'none'}>"


@dataclass(slots=True)
class _Task:
    attempts: int = 0


_FINISHED_KEYS = 256
"""Finished tasks remembered, so that a repeated outcome is not counted twice."""


class RunSummary:
    """An event consumer that aggregates a run; :meth:`render` gives the end-of-run report.

    Its attributes are the aggregates, to read, not to change. Failures of each kind are a
    :class:`Tally` (their number, the first few events, counts by reason); money is kept per
    agreement. Amounts are exact Decimals. Debit notes are cumulative
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
        self.rejected_results: Tally[TaskRejected] = Tally()  # the task may be retried
        self.retries = 0
        self.failed_tasks: Tally[TaskFailed] = Tally()  # failed for good
        self.agreements: dict[str, str] = {}  # agreement id -> provider name
        self.agreements_rejected: Tally[AgreementRejected] = Tally()
        self.activities = 0
        self.activities_failed: Tally[ActivityFailed] = Tally()
        self.scripts = 0
        self.scripts_failed = 0
        self.debit_notes: dict[str, Decimal] = {}  # agreement id -> last accepted amount
        self.debit_notes_rejected: Tally[DebitNoteRejected] = Tally()
        self.invoices: list[InvoiceAccepted] = []
        self.invoices_rejected: Tally[InvoiceRejected] = Tally()
        self.payments_missing: list[PaymentMissing] = []
        self.services: dict[tuple[str, str], ServiceStateChanged] = {}
        """(cluster, instance) -> the instance's latest state change."""
        self.service_failures: Tally[ServiceStateChanged] = Tally()
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
                self.agreements_rejected.add(event, event.reason)
            case ActivityCreated():
                self.activities += 1
            case ActivityFailed():
                self.activities_failed.add(event, event.reason)
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
                self.rejected_results.add(event, event.reason)
                self.failures_by_provider[event.provider_name] += 1
            case TaskRetried():
                self.retries += 1
            case TaskFailed():
                if self._finish_task(event.job_id, event.task_id, "failed"):
                    self.failed_tasks.add(event, event.reason)
            case DebitNoteAccepted():
                self.debit_notes[event.agreement_id] = event.amount
            case DebitNoteRejected():
                self.debit_notes_rejected.add(event, event.reason)
            case InvoiceAccepted():
                self.invoices.append(event)
            case InvoiceRejected():
                self.invoices_rejected.add(event, event.reason)
            case PaymentMissing():
                self.payments_missing.append(event)
            case ServiceStateChanged():
                self.services[(event.cluster_id, event.instance_id)] = event
                if _service_failed(event):
                    self.service_failures.add(event, event.reason)

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
        total, accepted, failed = self.tasks_total, self.tasks_accepted, self.failed_tasks.count
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
                  for e in self.service_failures.first]
        lines += _more(self.service_failures, "service failures")
        lines += [f"  job {job} ended early: {_one_line(error)}"
                  for job, error in self.jobs.items() if error]
        if self.rejected_results or self.retries:
            rejected = self.rejected_results.count
            lines.append(f"  results rejected: {rejected}"
                         + (f" ({_grouped(self.rejected_results.reasons)})" if rejected else "")
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
        for f in self.failed_tasks.first:
            name = f"{f.job_id}/{f.task_id}" if several_jobs else f.task_id
            lines.append(f"  failed: task {name} (data={_short_repr(f.data)}): "
                         f"{_one_line(f.reason)} ({_plural(f.attempts, 'attempt')})")
        return lines + _more(self.failed_tasks, "failed")

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
        if rejected := self.agreements_rejected:
            line += f" ({rejected.count} rejected: {_grouped(rejected.reasons)})"
        if failed := self.activities_failed:
            line += f", activities failed: {failed.count} ({_grouped(failed.reasons)})"
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
                  f"{_one_line(i.reason)}" for i in self.invoices_rejected.first]
        lines += _more(self.invoices_rejected, "invoices rejected")
        if notes := self.debit_notes_rejected:
            lines.append(f"  debit notes rejected: {notes.count} ({_grouped(notes.reasons)})")
        return lines



def _more(tally: Tally[Any], what: str) -> list[str]:
    """The line under a tally's listed events that counts the rest, by reason."""
    rest = tally.count - len(tally.first)
    if rest <= 0:
        return []
    listed: Counter[str] = Counter()
    for event in tally.first:  # counted under their own reason, unless it came past the cap
        key = _one_line(getattr(event, "reason", None))
        listed[key if key in tally.reasons else Tally.OTHER] += 1
    return [f"  ... and {rest} more {what}: {_grouped(tally.reasons - listed)}"]


def _service_failed(event: ServiceStateChanged) -> bool:
    return event.state == "unresponsive" or (event.reason or "").startswith(
        ("failed", "trying another provider"))


