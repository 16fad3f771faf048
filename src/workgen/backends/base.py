"""The backend seam: what the requestor needs from a Golem network, and nothing more.

A backend offers coarse async verbs over four areas, mirroring yagna's REST API: payment
(allocations, debit notes, invoices), market (demands, proposals, agreements), activity
(create, exec, results, usage, destroy) and storage (moving files to and from providers). It
makes no decisions: negotiation, scheduling, retries and payment policy live in the requestor.
Only the types defined here (and the shared :mod:`workgen.protocol` ones) cross the seam, and a
backend raises only :mod:`workgen.errors`. ``LocalNetwork`` and ``Yagna`` implement it; so can a
third backend without any change to the requestor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from ..protocol.exescript import Command
from ..protocol.pricing import LinearPricing
from ..protocol.properties import NODE_ID_NAME
from ..protocol.results import CommandOutcome, RuntimeEvent, utc_now

# -- market --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demand:
    """What the requestor asks for: flat properties and a constraint expression."""

    properties: Mapping[str, object]
    constraints: str


@dataclass(frozen=True)
class Proposal:
    """A provider's offer, or its answer to our counter-proposal (``Draft``)."""

    id: str
    issuer_id: str
    properties: Mapping[str, object]
    constraints: str
    state: Literal["Initial", "Draft", "Rejected", "Accepted", "Expired"]
    prev_proposal_id: str | None = None
    timestamp: datetime = field(default_factory=utc_now)

    @property
    def provider_name(self) -> str:
        name = self.properties.get(NODE_ID_NAME)
        return name if isinstance(name, str) else self.issuer_id[:10]


@dataclass(frozen=True)
class ProposalRejectedEvent:
    """The provider rejected our counter-proposal ``proposal_id``."""

    proposal_id: str
    issuer_id: str
    reason: str
    timestamp: datetime = field(default_factory=utc_now)
    final: bool = True
    """False when the provider may take the demand later (say, it is busy for now): it offers
    again then (``golem.proposal.rejection.is-final`` on yagna)."""


MarketEvent = Proposal | ProposalRejectedEvent


@runtime_checkable
class DemandSubscription(Protocol):
    """A published demand; iterating it yields proposals and rejections as they arrive."""

    id: str
    demand: Demand

    def __aiter__(self) -> AsyncIterator[MarketEvent]: ...

    async def aclose(self) -> None:
        """Unsubscribe; iteration then ends. Idempotent."""


@dataclass(frozen=True)
class Agreement:
    id: str
    proposal: Proposal
    """The provider's proposal the agreement was made from (its terms)."""
    demand: Demand
    valid_to: datetime

    @property
    def provider_id(self) -> str:
        return self.proposal.issuer_id

    @property
    def provider_name(self) -> str:
        return self.proposal.provider_name

    @property
    def pricing(self) -> LinearPricing:
        return LinearPricing.from_properties(self.proposal.properties)


# -- activity ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    id: str
    agreement_id: str


@runtime_checkable
class BatchHandle(Protocol):
    """A batch sent to an activity."""

    id: str

    def events(self) -> AsyncIterator[RuntimeEvent]:
        """The batch's runtime events from its start; ends when the batch has finished."""
        ...

    async def results(self) -> list[CommandOutcome]:
        """All command results, once the batch has finished (by success, failure or timeout),
        each with its return code and failure kind filled by the backend (the requestor reads
        no meaning from messages).

        Raises :class:`~workgen.errors.ActivityLost` if the activity broke instead, and
        :class:`~workgen.errors.ActivityClosed` if we closed it.
        """
        ...

    async def cancel(self) -> bool:
        """Stop the batch's running command; False if the backend has no way to (the batch
        then runs on until its activity ends)."""
        ...


# -- payment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    id: str
    total_amount: Decimal
    payment_platform: str
    address: str


@dataclass(frozen=True)
class DebitNote:
    id: str
    agreement_id: str
    activity_id: str | None
    total_amount_due: Decimal
    usage_counter_vector: tuple[float, ...] | None
    issuer_id: str
    timestamp: datetime = field(default_factory=utc_now)


@dataclass(frozen=True)
class Invoice:
    id: str
    agreement_id: str
    activity_ids: tuple[str, ...]
    amount: Decimal
    issuer_id: str
    timestamp: datetime = field(default_factory=utc_now)


PaymentEvent = DebitNote | Invoice


# -- storage -------------------------------------------------------------------------------


@runtime_checkable
class Source(Protocol):
    """Content published for providers to fetch (``transfer`` from ``url``)."""

    url: str

    async def aclose(self) -> None: ...


@runtime_checkable
class Destination(Protocol):
    """A place providers upload to (``transfer`` to ``url``); read it once the batch is done."""

    url: str

    async def read_bytes(self, limit: int | None = None) -> bytes:
        """The uploaded content; :class:`~workgen.errors.DownloadLimitExceeded` past ``limit``."""
        ...

    async def save_to(self, path: Path) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Storage(Protocol):
    async def publish_file(self, path: Path) -> Source: ...

    async def publish_bytes(self, data: bytes) -> Source: ...

    async def new_destination(self, name: str) -> Destination: ...


# -- the backend ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, or does cheaply, stated once: the requestor decides from these,
    never from which backend it is talking to."""

    cheap_events: bool
    """Following a batch's runtime events costs little. When not (yagna: an SSE stream per
    batch), the requestor reads them only when it needs them (live output)."""
    batch_cancel: bool
    """A running batch can be stopped without ending its activity (``BatchHandle.cancel``).
    When not, a script that overruns its timeout retires its activity."""


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities
    startup_timeout: float
    """How long to wait for a first proposal before concluding no provider fits (seconds)."""

    @property
    def storage(self) -> Storage: ...

    async def start(self) -> None:
        """Bring the backend up (connect, or start the embedded network). Idempotent."""

    async def aclose(self) -> None:
        """Release everything; idempotent and bounded in time."""

    # payment
    async def create_allocation(self, amount: Decimal) -> Allocation: ...

    async def release_allocation(self, allocation: Allocation) -> None: ...

    async def demand_decoration(self, allocation: Allocation) -> Demand:
        """Payment properties and constraints to add to a demand paid from ``allocation``."""
        ...

    def payment_events(self) -> AsyncIterator[PaymentEvent]:
        """Debit notes and invoices addressed to us, for as long as the backend runs."""
        ...

    async def accept_debit_note(self, note: DebitNote, allocation: Allocation) -> None: ...

    async def reject_debit_note(self, note: DebitNote, reason: str) -> None: ...

    async def accept_invoice(self, invoice: Invoice, allocation: Allocation) -> None: ...

    async def reject_invoice(self, invoice: Invoice, reason: str) -> None: ...

    # market
    async def subscribe_demand(self, demand: Demand) -> DemandSubscription: ...

    async def counter_proposal(
        self, subscription: DemandSubscription, proposal: Proposal, demand: Demand
    ) -> None:
        """Answer ``proposal`` with our terms; the reply arrives on the subscription."""

    async def reject_proposal(
        self, subscription: DemandSubscription, proposal: Proposal, reason: str
    ) -> None: ...

    async def make_agreement(self, proposal: Proposal, valid_to: datetime) -> Agreement:
        """Create, confirm and wait for the provider's approval of an agreement.

        Raises :class:`~workgen.errors.AgreementRejected` if the provider does not approve.
        """
        ...

    async def terminate_agreement(self, agreement: Agreement, reason: str) -> None:
        """End the agreement. Raises :class:`~workgen.errors.BackendError` if its provider did
        not confirm (it may be gone: its invoice is then not to be counted on)."""

    # activity
    async def create_activity(self, agreement: Agreement) -> Activity: ...

    async def exec(
        self, activity: Activity, commands: Sequence[Command], timeout: float | None
    ) -> BatchHandle: ...

    async def activity_state(self, activity: Activity) -> str: ...

    async def activity_usage(self, activity: Activity) -> dict[str, float]: ...

    async def destroy_activity(self, activity: Activity) -> None: ...
