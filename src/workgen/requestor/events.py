"""Events: what happened during a run, as typed records with real timestamps.

``Golem(event_consumer=...)`` receives every event (a plain callable); the default consumer is
:class:`~workgen.requestor.display.ProgressDisplay`. Names follow ``<Noun><PastParticiple>``.
Events carry ids and plain values, never live objects, so a consumer can keep them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..protocol.pricing import LinearPricing
from ..protocol.results import utc_now


@dataclass(frozen=True, kw_only=True)
class Event:
    timestamp: datetime = field(default_factory=utc_now)


EventConsumer = Callable[[Event], None]


# -- the run and its jobs ------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class GolemStarted(Event):
    backend: str
    budget: Decimal
    currency: str = "GLM"
    """What amounts are in: the payment platform's token (``tGLM`` on test networks)."""


@dataclass(frozen=True, kw_only=True)
class GolemStopped(Event):
    pass


@dataclass(frozen=True, kw_only=True)
class JobStarted(Event):
    job_id: str
    tasks_total: int | None = None
    """How many tasks the job has, when its data says (a list, a range); else ``None``."""


@dataclass(frozen=True, kw_only=True)
class JobFinished(Event):
    job_id: str
    error: str | None = None
    """Why the job ended early (timeout, no providers, budget), or ``None`` if it completed."""


# -- market --------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DemandSubscribed(Event):
    job_id: str
    constraints: str


@dataclass(frozen=True, kw_only=True)
class ProposalReceived(Event):
    job_id: str
    proposal_id: str
    provider_id: str
    provider_name: str
    draft: bool


@dataclass(frozen=True, kw_only=True)
class ProposalRejected(Event):
    """A proposal we turned down (``by_provider`` is False) or one the provider turned down."""

    job_id: str
    proposal_id: str
    provider_id: str
    provider_name: str
    reason: str
    by_provider: bool = False


@dataclass(frozen=True, kw_only=True)
class AgreementCreated(Event):
    job_id: str
    agreement_id: str
    provider_id: str
    provider_name: str
    pricing: LinearPricing | None = None
    """The agreed prices (``None`` if the offer's pricing could not be read)."""


@dataclass(frozen=True, kw_only=True)
class AgreementRejected(Event):
    job_id: str
    provider_id: str
    provider_name: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class AgreementTerminated(Event):
    agreement_id: str
    provider_name: str
    reason: str


# -- activities and work -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ActivityCreated(Event):
    job_id: str
    activity_id: str
    agreement_id: str
    provider_name: str


@dataclass(frozen=True, kw_only=True)
class ActivityFailed(Event):
    """A worker's activity failed: its worker raised, a script failed, or the activity broke."""

    job_id: str
    activity_id: str
    provider_name: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ActivityDestroyed(Event):
    activity_id: str
    provider_name: str


@dataclass(frozen=True, kw_only=True)
class ScriptSent(Event):
    job_id: str
    activity_id: str
    batch_id: str
    commands: tuple[dict[str, Any], ...]


@dataclass(frozen=True, kw_only=True)
class ScriptFinished(Event):
    job_id: str
    activity_id: str
    batch_id: str
    success: bool
    message: str | None = None


@dataclass(frozen=True, kw_only=True)
class CommandOutput(Event):
    """A chunk of a command's stdout or stderr, live (``Golem(stream_output=True)``)."""

    activity_id: str
    provider_name: str
    index: int
    stream: str
    output: str | bytes


@dataclass(frozen=True, kw_only=True)
class TaskStarted(Event):
    job_id: str
    task_id: str
    activity_id: str
    provider_name: str
    data: Any


@dataclass(frozen=True, kw_only=True)
class TaskAccepted(Event):
    job_id: str
    task_id: str
    provider_name: str
    result: Any
    running_time: float


@dataclass(frozen=True, kw_only=True)
class TaskRejected(Event):
    job_id: str
    task_id: str
    provider_name: str
    reason: str | None
    retry: bool


@dataclass(frozen=True, kw_only=True)
class TaskRetried(Event):
    """A task goes back to the queue after a failure, for another activity."""

    job_id: str
    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class TaskFailed(Event):
    """A task failed for good: retries used up, rejected without retry, or never run."""

    job_id: str
    task_id: str
    data: Any
    reason: str
    attempts: int


# -- services ------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ServiceStateChanged(Event):
    """A service instance moved to ``state`` (a :class:`~workgen.ServiceState` value)."""

    cluster_id: str
    instance_id: str
    service: str
    """The service's class name."""
    state: str
    provider_name: str | None = None
    reason: str | None = None
    """Why, when the move was not the normal course (a failure, a stop, the budget)."""


# -- payment -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DebitNoteAccepted(Event):
    agreement_id: str
    provider_name: str
    amount: Decimal


@dataclass(frozen=True, kw_only=True)
class DebitNoteRejected(Event):
    agreement_id: str
    provider_name: str
    amount: Decimal
    reason: str


@dataclass(frozen=True, kw_only=True)
class InvoiceAccepted(Event):
    agreement_id: str
    provider_name: str
    amount: Decimal


@dataclass(frozen=True, kw_only=True)
class InvoiceRejected(Event):
    agreement_id: str
    provider_name: str
    amount: Decimal
    reason: str


@dataclass(frozen=True, kw_only=True)
class PaymentMissing(Event):
    """An agreement ended but its invoice did not arrive before shutdown."""

    agreement_id: str
    provider_name: str
