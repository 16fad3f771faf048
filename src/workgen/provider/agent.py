"""The provider agent: what a Golem provider decides, once, whatever network it is on.

Negotiation, one agreement at a time, the payment terms, agreement hygiene, debit notes and
invoices, the activities' lifecycle and their execution units' configuration live here. How the
agent reaches its market and its requestors is an :class:`AgentLink`: the local network's in
process (:mod:`workgen.backends.local`), a yagna node's by REST and GSB
(:mod:`workgen.provider.yagna`).

The agent gives its whole capacity to one agreement: it withdraws its offer when it approves
one and publishes a fresh offer when that agreement ends. It breaks an agreement as ya-provider
does (see :mod:`.terms`): no live activity for ``idle_timeout``, the agreement expired, a debit
note unaccepted past its deadline; and it ends one whose debit note the requestor rejected,
invoicing the work done.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

from ..errors import AgreementRejected, ImageNotFound
from ..protocol.constraints import Constraint, Constraints, Not, Present, compare, match
from ..protocol.pricing import LinearPricing
from ..protocol.properties import (
    COM_PAYMENT_CHOSEN_PLATFORM, NODE_DEBUG_SUBNET, SRV_COMP_EXPIRATION,
    payment_platform_address,
)
from .exeunit.transfer import RemoteScheme
from .exeunit.unit import ExeUnit, ExeUnitConfig
from .images import Image, ImageResolver
from .offer import INET, ProviderConfig, asks_for_inet, offer_properties
from .runtime.sandbox import Resources
from .terms import (
    DEBIT_NOTES_DEADLINE, DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, EXPIRED,
    MIN_DEBIT_NOTE_INTERVAL, NO_ACTIVITY, PaymentTerms, TermsRefused, negotiate, offered_terms,
)

log = logging.getLogger(__name__)

ClosedBy = Literal["requestor", "provider"]
INVOICE_PAYMENT_DUE = timedelta(minutes=5)
KEEP_ENDED_AGREEMENTS = 64
"""Ended agreements kept for inspection; older ones are forgotten (a provider runs for days)."""
KEEP_DEBIT_NOTES = 64
"""Debit note ids kept per agreement (one per interval over an agreement of days): a requestor
rejects a note soon after it arrives, or not at all."""
_ACCEPTED = ("ACCEPTED", "SETTLED")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")


IS_FINAL = "golem.proposal.rejection.is-final"
"""In a rejection's reason: whether the provider will never take the demand (else: not now)."""


class NegotiationRejected(Exception):
    """The provider does not take a demand; the message is the reason the requestor sees.
    ``final`` is false when it may take it later (it is busy for now)."""

    def __init__(self, message: str, *, final: bool = True):
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class OfferSpec:
    """An offer as the agent means it: flat properties and constraints."""

    properties: dict[str, object]
    constraint: Constraint

    @property
    def constraints(self) -> str:
        return str(self.constraint)


@dataclass(frozen=True)
class DebitNoteDraft:
    agreement_id: str
    activity_id: str
    amount: Decimal
    usage_vector: tuple[float, ...]
    payment_due: datetime | None
    """Set only when mid-agreement payments were negotiated: then the note is payable."""


@dataclass(frozen=True)
class InvoiceDraft:
    agreement_id: str
    activity_ids: tuple[str, ...]
    amount: Decimal
    payment_due: datetime


class AgentLink(Protocol):
    """How an agent reaches its market, its requestors and its task host."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task that the link's owner cancels and awaits on shutdown."""

    async def publish(self, offer: OfferSpec | None) -> None:
        """Replace the agent's offer on the market by ``offer`` (``None``: withdraw it)."""

    async def approve(self, agreement: AgentAgreement) -> None:
        """Confirm the agreement to the market; raise :class:`AgreementRejected` if it is gone."""

    async def send_debit_note(self, note: DebitNoteDraft) -> str | None:
        """Issue and send the note; its id, or ``None`` if it could not be sent."""

    async def debit_note_status(self, note_id: str) -> str | None:
        """The note's status as yagna spells it (``ACCEPTED``, ``REJECTED``, ...), if known."""

    async def send_invoice(self, invoice: InvoiceDraft) -> None: ...

    async def break_agreement(self, agreement: AgentAgreement, reason: dict[str, str]) -> None:
        """Tell the requestor the provider ends the agreement, and why."""

    async def activity_started(self, activity: AgentActivity) -> None:
        """The activity's unit is up: make it reachable (its unit is entered)."""

    async def activity_closing(self, activity: AgentActivity) -> None:
        """The activity is about to close: stop serving it (its unit is still entered)."""

    async def activity_ended(self, activity: AgentActivity) -> None:
        """The activity's unit is closed (its final state and usage are known)."""


class AgentActivity:
    """One activity: its execution unit, held open by a task of the link's, until closed."""

    def __init__(self, activity_id: str, agreement: AgentAgreement, unit: ExeUnit):
        self.id = activity_id
        self.agreement = agreement
        self.unit = unit
        self.closed_by: ClosedBy | None = None
        self.close_reason: str | None = None
        self.final_usage: dict[str, float] | None = None
        self.failure: BaseException | None = None
        """Why the unit could not start, if it could not."""
        self._ready = asyncio.Event()
        self._close = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def wait_ready(self) -> None:
        """Until the unit is up; raises what kept it from starting."""
        await self._ready.wait()
        if self.failure is not None:
            raise self.failure

    def request_close(self, by: ClosedBy, reason: str) -> None:
        if self.closed_by is None:
            self.closed_by, self.close_reason = by, reason
        self._close.set()

    async def close(self, by: ClosedBy, reason: str) -> dict[str, float]:
        """Close the unit (kill its sandbox, remove its files); returns the final usage."""
        self.request_close(by, reason)
        await self._done.wait()
        assert self.final_usage is not None
        return self.final_usage


@dataclass
class AgentAgreement:
    """An agreement as its provider keeps it; read-only outside this module."""

    id: str
    pricing: LinearPricing
    terms: PaymentTerms
    inet: bool
    rootfs: Image
    expires_at: float | None
    """When the agreement ends (epoch seconds), if it says."""
    state: Literal["Approved", "Terminated"] = "Approved"
    reason: str | None = None
    activities: dict[str, AgentActivity] = field(default_factory=dict)
    debit_notes: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_DEBIT_NOTES))
    """The ids of the last debit notes sent, oldest first: a rejection names one of these."""
    unaccepted: dict[str, float] = field(default_factory=dict)
    """Debit notes sent and not known accepted, with their acceptance deadlines (monotonic)."""
    idle_since: float | None = field(default_factory=time.monotonic)
    """Since when no activity is live (``None`` while one is)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once termination is complete (activities closed, invoice sent)."""

    @property
    def debit_note_interval(self) -> float:
        return self.terms.debit_note_interval

    def touch(self) -> None:
        """Something the agreement's timer looks at changed."""
        if any(not a.closed for a in self.activities.values()):
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()
        self.changed.set()


class ProviderAgent:
    """One provider: its offer, its agreements (``agreements``), its activities."""

    def __init__(self, config: ProviderConfig, node_id: str, link: AgentLink, *,
                 subnet: str, platform: str, debit_note_interval: float,
                 images: ImageResolver, work_root: Path | None = None,
                 remote_schemes: Mapping[str, RemoteScheme] | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT, overcharge: float = 1.0):
        self.config = config
        self.node_id = node_id
        self.link = link
        self.subnet = subnet
        self.platform = platform
        self.debit_note_interval = debit_note_interval
        self.images = images
        self.work_root = work_root
        self.remote_schemes = dict(remote_schemes or {})
        self.idle_timeout = idle_timeout
        self.accept_timeout = accept_timeout
        self._overcharge = Decimal(str(overcharge))
        """Bills are this many times the agreed price: 1 for an honest provider."""
        self._agreements: dict[str, AgentAgreement] = {}
        self._current: AgentAgreement | None = None

    def __repr__(self) -> str:
        return f"<ProviderAgent {self.name} {self.node_id}>"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> AgentAgreement | None:
        return self._current

    @property
    def agreements(self) -> Mapping[str, AgentAgreement]:
        """The current agreement and the latest ended ones, by id (read-only)."""
        return MappingProxyType(self._agreements)

    def agreement(self, agreement_id: str) -> AgentAgreement:
        try:
            return self._agreements[agreement_id]
        except KeyError:
            raise ValueError(f"agreement {agreement_id} is not one of {self.name}'s") from None

    # -- market -----------------------------------------------------------------------------

    def offer(self) -> OfferSpec:
        """A fresh offer; its constraints admit demands that have not expired by now."""
        properties = offer_properties(
            self.config, node_id=self.node_id, subnet=self.subnet, platform_name=self.platform,
            debit_note_interval=self.debit_note_interval,
            transfer_protocols=(*self.remote_schemes, "http", "https"))
        properties |= offered_terms(self.debit_note_interval, self.accept_timeout)
        clauses = Constraints(compare(SRV_COMP_EXPIRATION, ">", int(time.time() * 1000)),
                              compare(NODE_DEBUG_SUBNET, "=", self.subnet))
        if not self.config.inet:
            # Two-way matching keeps a demand that needs the internet off this provider. Written
            # with a presence test: yagna's matcher holds a comparison with a property the
            # demand lacks undefined, and its negation too, so "not inet" would match nothing.
            clauses.add(Not(Present(INET)) | compare(INET, "=", False))
        return OfferSpec(properties, clauses.build())

    async def publish(self) -> None:
        await self.link.publish(None if self.busy else self.offer())

    def negotiate(self, demand: Mapping[str, object], constraint: Constraint) -> dict[str, object]:
        """The properties of our counter-proposal to ``demand`` (flat properties), or
        :class:`NegotiationRejected` with the reason."""
        if self._current is not None:
            raise NegotiationRejected(f"{self.name} is busy with another agreement",
                                      final=False)
        offer = self.offer()
        if not match(demand, constraint, offer.properties, offer.constraint):
            raise NegotiationRejected("the demand does not match the offer")
        if not self.config.inet and asks_for_inet(demand, constraint):
            raise NegotiationRejected(f"{self.name} gives activities no network access (inet)")
        expiration = demand.get(SRV_COMP_EXPIRATION)
        if (not isinstance(expiration, (int, float)) or isinstance(expiration, bool)
                or expiration <= time.time() * 1000):
            raise NegotiationRejected(
                f"the demand's {SRV_COMP_EXPIRATION} (ms since the epoch) is missing or past")
        chosen = demand.get(COM_PAYMENT_CHOSEN_PLATFORM)
        if chosen != self.platform:
            # Debit notes and invoices need a platform both sides agreed on.
            raise NegotiationRejected(
                f"payment platform {chosen!r} is not taken here: this provider is paid on "
                f"{self.platform!r} (add the allocation's demand decoration)")
        if not isinstance(demand.get(payment_platform_address(self.platform)), str):
            raise NegotiationRejected(f"the demand has no payment address on {self.platform}")
        try:
            self.images.resolve(demand)
            terms = negotiate(demand, interval=self.debit_note_interval,
                              minimum=min(MIN_DEBIT_NOTE_INTERVAL, self.debit_note_interval))
        except (ImageNotFound, TermsRefused) as exc:
            raise NegotiationRejected(str(exc)) from None
        return offer.properties | terms.properties()

    async def approve(self, agreement_id: str, *, offer: Mapping[str, object],
                      demand: Mapping[str, object], constraint: Constraint,
                      expires_at: float | None) -> AgentAgreement:
        """Take the agreement made of our counter-proposal ``offer`` and the requestor's
        ``demand`` (flat properties); :class:`AgreementRejected` if busy or it cannot be run."""
        if self._current is not None:
            raise AgreementRejected(
                f"{self.name} rejected the agreement: busy with agreement {self._current.id}",
                provider_id=self.node_id)
        try:
            rootfs = self.images.resolve(demand)
        except ImageNotFound as exc:
            raise AgreementRejected(f"{self.name} rejected the agreement: {exc}",
                                    provider_id=self.node_id) from None
        agreement = AgentAgreement(
            agreement_id, LinearPricing.from_properties(offer),
            PaymentTerms.from_agreement(offer, demand, self.debit_note_interval),
            inet=self.config.inet and asks_for_inet(demand, constraint), rootfs=rootfs,
            expires_at=expires_at)
        self._current = agreement  # before the first await: one agreement at a time
        try:
            await self.link.approve(agreement)
        except BaseException:
            self._current = None
            raise
        self._remember(agreement)
        log.info("%s approved agreement %s", self.name, agreement_id)
        await self.link.publish(None)
        self.link.spawn(self._run(agreement), f"agreement {agreement_id[:12]}")
        return agreement

    def _remember(self, agreement: AgentAgreement) -> None:
        self._agreements[agreement.id] = agreement
        ended = [a for a in self._agreements.values() if a.ended.is_set()]
        for old in ended[:max(0, len(ended) - KEEP_ENDED_AGREEMENTS)]:
            del self._agreements[old.id]

    # -- agreements -------------------------------------------------------------------------

    async def terminate(self, agreement: AgentAgreement, reason: str, by: ClosedBy, *,
                        code: str | None = None, republish: bool = True) -> None:
        """End ``agreement``: close its activities and send its one invoice; then offer again
        (unless ``republish`` is false). ``code``: the provider breaks it, for that ya-provider
        reason. Idempotent: a second call waits for the first."""
        if agreement.state == "Terminated":
            await agreement.ended.wait()
            return
        agreement.state, agreement.reason = "Terminated", reason
        agreement.changed.set()
        log.info("%s: agreement %s ended by the %s: %s", self.name, agreement.id, by, reason)
        try:
            async with asyncio.TaskGroup() as tg:
                for activity in agreement.activities.values():
                    tg.create_task(activity.close(by, f"agreement terminated: {reason}"))
            if by == "provider":
                message = {"message": reason}
                if code is not None:
                    message["golem.provider.code"] = code
                await self.link.break_agreement(agreement, message)
            await self._invoice(agreement)
        finally:
            agreement.ended.set()
            if self._current is agreement:
                self._current = None
                if republish:
                    with contextlib.suppress(Exception):
                        await self.publish()

    async def shutdown(self, reason: str, by: ClosedBy = "provider", *,
                       code: str | None = None) -> None:
        """End the current agreement (if any) and withdraw the offer."""
        if self._current is not None:
            await self.terminate(self._current, reason, by, code=code, republish=False)
        await self.link.publish(None)

    def debit_note_accepted(self, note_id: str) -> None:
        for agreement in self._live():
            if agreement.unaccepted.pop(note_id, None) is not None:
                agreement.changed.set()

    def debit_note_rejected(self, agreement_id: str, note_id: str, reason: str) -> None:
        """The requestor will not pay for the work so far: stop it and invoice what was done."""
        agreement = self._agreements.get(agreement_id)
        if agreement is not None and agreement.state == "Approved":
            self.link.spawn(self.terminate(agreement, f"debit note {note_id} rejected: {reason}",
                                           "provider"), f"terminate {agreement_id[:12]}")

    def _live(self) -> list[AgentAgreement]:
        return [a for a in self._agreements.values() if a.state == "Approved"]

    async def _run(self, agreement: AgentAgreement) -> None:
        """The agreement's clock: its debit notes, and the deadlines that break it."""
        loop = asyncio.get_running_loop()
        next_note = loop.time() + agreement.debit_note_interval
        while agreement.state == "Approved":
            agreement.changed.clear()
            now = loop.time()
            deadlines = [(next_note, "")]
            if agreement.idle_since is not None:
                deadlines.append((agreement.idle_since + self.idle_timeout, NO_ACTIVITY))
            if agreement.expires_at is not None:
                deadlines.append((now + agreement.expires_at - time.time(), EXPIRED))
            if agreement.unaccepted:
                deadlines.append((min(agreement.unaccepted.values()), DEBIT_NOTES_DEADLINE))
            when, code = min(deadlines)
            try:
                async with asyncio.timeout_at(when):
                    await agreement.changed.wait()
                continue
            except TimeoutError:
                pass
            if agreement.state != "Approved":
                return
            if not code:
                await self._send_debit_notes(agreement)
                next_note = max(next_note + agreement.debit_note_interval, loop.time())
                continue
            message = await self._breach(agreement, code)
            if message is not None:
                await self.terminate(agreement, message, "provider", code=code)

    async def _breach(self, agreement: AgentAgreement, code: str) -> str | None:
        """Whether the deadline that just passed breaks the agreement, and the reason."""
        if code == NO_ACTIVITY and agreement.idle_since is not None:
            return f"No activity created within {self.idle_timeout:g}s"
        if code == EXPIRED:
            return "Agreement expired"
        if code == DEBIT_NOTES_DEADLINE:
            now = time.monotonic()
            for note_id, deadline in sorted(agreement.unaccepted.items(), key=lambda i: i[1]):
                if deadline > now:
                    break
                # The acceptance may have gone unnoticed: ask before breaking.
                if await self.link.debit_note_status(note_id) in _ACCEPTED:
                    agreement.unaccepted.pop(note_id, None)
                    continue
                return ("Requestor isn't accepting DebitNotes in time "
                        f"({agreement.terms.accept_timeout:g}s)")
        return None

    # -- payment ----------------------------------------------------------------------------

    async def _send_debit_notes(self, agreement: AgentAgreement) -> None:
        pricing, terms = agreement.pricing, agreement.terms
        for activity in list(agreement.activities.values()):
            if activity.closed or agreement.state != "Approved":
                continue
            usage = await activity.unit.usage()
            if agreement.state != "Approved":
                return  # terminated meanwhile: the invoice has the final word
            due = None
            if terms.payment_timeout is not None:
                due = datetime.now(timezone.utc) + timedelta(seconds=terms.payment_timeout)
            note_id = await self.link.send_debit_note(DebitNoteDraft(
                agreement.id, activity.id, _price(pricing, usage) * self._overcharge,
                tuple(float(usage.get(c, 0.0)) for c in pricing.usage_vector), due))
            if note_id is None:
                continue
            agreement.debit_notes.append(note_id)
            if terms.accept_timeout is not None:
                agreement.unaccepted[note_id] = time.monotonic() + terms.accept_timeout
                agreement.changed.set()

    async def _invoice(self, agreement: AgentAgreement) -> None:
        # Golem's linear model prices each activity, fixed price included, and the invoice
        # covers them all.
        amount = sum((_price(agreement.pricing, a.final_usage or {})
                      for a in agreement.activities.values()), Decimal(0))
        await self.link.send_invoice(InvoiceDraft(
            agreement.id, tuple(agreement.activities), amount * self._overcharge,
            datetime.now(timezone.utc) + INVOICE_PAYMENT_DUE))

    # -- activities -------------------------------------------------------------------------

    def create_activity(self, agreement: AgentAgreement, activity_id: str) -> AgentActivity:
        """Start the activity's unit (:meth:`AgentActivity.wait_ready` waits for it)."""
        if agreement.state != "Approved":
            raise AgreementRejected(
                f"agreement {agreement.id} with {self.name} is terminated ({agreement.reason})",
                provider_id=self.node_id)
        name = self.name
        config = ExeUnitConfig(
            resources=Resources(mem_gib=self.config.mem_gib, storage_gib=self.config.storage_gib,
                                max_processes=self.config.max_processes,
                                cpu_threads=self.config.cpu_threads),
            inet=agreement.inet, rootfs=agreement.rootfs, work_root=self.work_root,
            remote_schemes=self.remote_schemes,
            hostname=name if _HOSTNAME.fullmatch(name) else "golem-provider")
        activity = AgentActivity(activity_id, agreement, ExeUnit(activity_id, config))
        agreement.activities[activity_id] = activity
        agreement.touch()
        self.link.spawn(self._hold(activity), f"activity {activity_id[:12]}")
        return activity

    async def _hold(self, activity: AgentActivity) -> None:
        """The activity's life: its unit is up from start to close."""
        try:
            async with activity.unit:
                try:
                    await self.link.activity_started(activity)
                    activity._ready.set()
                    await activity._close.wait()
                finally:
                    await self.link.activity_closing(activity)
        except Exception as exc:
            # One activity failing must not take the provider down.
            if not activity._ready.is_set():
                activity.failure = exc
            log.error("%s: activity %s failed: %r", self.name, activity.id, exc)
        finally:
            # The unit is closed here, so this reads the final counters without suspending.
            activity.final_usage = await activity.unit.usage()
            if activity.closed_by == "requestor":
                activity.unit.release_results()
            activity._ready.set()
            activity._done.set()
            activity.agreement.touch()
            try:
                await self.link.activity_ended(activity)
            except Exception as exc:
                log.warning("%s: activity %s ended: %r", self.name, activity.id, exc)


def _price(pricing: LinearPricing, usage: Mapping[str, float]) -> Decimal:
    return pricing.price_for({c: v for c, v in usage.items() if c in pricing.usage_vector})
