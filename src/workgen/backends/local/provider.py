"""The local network's provider agent: offers, negotiation, agreements, debit notes, invoices.

It behaves as Golem's provider agent does, in process: it publishes an offer with Golem's
properties, answers a counter-proposal with a ``Draft`` or a rejection, approves one agreement
at a time (its whole capacity goes to that agreement, so it withdraws its offer while busy and
re-offers when the agreement ends), runs activities in execution units, sends a debit note per
activity every agreed interval and one invoice per agreement when the agreement ends.

Its background work (activities, the debit-note loop) runs as tasks of the network's task group,
reached through :class:`ProviderContext`; the agent itself owns no task.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ..base import Activity, Agreement, DebitNote, Invoice, PaymentEvent
from ...errors import AgreementRejected, BackendError
from ...protocol.constraints import Constraints, Not, compare
from ...protocol.pricing import LinearPricing
from ...protocol.properties import (
    COM_PAYMENT_CHOSEN_PLATFORM, COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC, NODE_DEBUG_SUBNET,
    SRV_COMP_EXPIRATION, payment_platform_address,
)
from ...provider.exeunit.transfer import RemoteScheme
from ...provider.exeunit.unit import ExeUnit, ExeUnitConfig
from ...provider.runtime.sandbox import Resources
from .activity import ActivityRecord, ClosedBy
from ...provider.offer import INET, ProviderConfig, asks_for_inet, offer_properties
from .market import Offer, ParsedDemand, new_id

log = logging.getLogger(__name__)

MIN_DEBIT_NOTE_INTERVAL = 0.1
"""The most often (seconds) a provider agrees to send debit notes, unless configured lower."""

EXPIRATION = SRV_COMP_EXPIRATION
DEBIT_NOTE_INTERVAL = COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC
CHOSEN_PLATFORM = COM_PAYMENT_CHOSEN_PLATFORM


class NegotiationRejected(Exception):
    """The provider does not accept a counter-proposal; the message is the reason."""


@dataclass(frozen=True)
class ProviderContext:
    """What a provider gets from its network."""

    subnet: str
    platform: str
    debit_note_interval: float
    work_root: Path
    spawn: Callable[[Coroutine[Any, Any, None], str], None]
    """Run a coroutine as a task of the network's task group."""
    emit: Callable[[PaymentEvent], None]
    """Send a debit note or an invoice to the requestor."""
    availability_changed: Callable[[LocalProvider], None]
    """The provider became busy (withdraw its offer) or free (publish a new one)."""
    remote_schemes: Mapping[str, RemoteScheme] = field(default_factory=dict)
    """How the execution units reach the requestor's storage (its handles, never host paths)."""


@dataclass
class ProviderAgreement:
    """An agreement as its provider keeps it. Read-only outside this module."""

    agreement: Agreement
    debit_note_interval: float
    inet: bool
    state: Literal["Approved", "Terminated"] = "Approved"
    reason: str | None = None
    invoice: Invoice | None = None
    activities: dict[str, ActivityRecord] = field(default_factory=dict)
    debit_notes: list[DebitNote] = field(default_factory=list)
    ending: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when termination begins: stops the debit-note loop."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when termination is complete (activities closed, invoice sent)."""


class LocalProvider:
    """One provider of the local network (``name``, ``node_id``, ``config``, ``agreements``)."""

    def __init__(self, config: ProviderConfig, node_id: str, context: ProviderContext):
        self.config = config
        self.node_id = node_id
        self._ctx = context
        self._agreements: dict[str, ProviderAgreement] = {}
        self._current: ProviderAgreement | None = None

    def __repr__(self) -> str:
        return f"<LocalProvider {self.name} {self.node_id}>"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def agreements(self) -> Mapping[str, ProviderAgreement]:
        """Every agreement this provider made, by id (read-only)."""
        return MappingProxyType(self._agreements)

    @property
    def busy(self) -> bool:
        return self._current is not None

    # -- market -----------------------------------------------------------------------------

    def make_offer(self) -> Offer:
        """A fresh offer; its constraints admit demands that have not expired by now."""
        properties = offer_properties(self.config, node_id=self.node_id, subnet=self._ctx.subnet,
                                      platform_name=self._ctx.platform,
                                      debit_note_interval=self._ctx.debit_note_interval,
                                      transfer_protocols=(*self._ctx.remote_schemes, "http",
                                                          "https"))
        clauses = Constraints(
            compare(EXPIRATION, ">", int(time.time() * 1000)),
            compare(NODE_DEBUG_SUBNET, "=", self._ctx.subnet),
        )
        if not self.config.inet:
            # Two-way matching keeps a demand that needs the internet off this provider.
            clauses.add(Not(compare(INET, "=", True)))
        constraint = clauses.build()
        return Offer(new_id(), self.node_id, properties, str(constraint), constraint)

    def negotiate(self, demand: ParsedDemand, offer: Offer) -> dict[str, object]:
        """The properties of our ``Draft`` answering ``demand``, or :class:`NegotiationRejected`."""
        if self._current is not None:
            raise NegotiationRejected(f"{self.name} is busy with another agreement")
        if not demand.matches(offer):
            raise NegotiationRejected("the demand does not match the offer")
        props = demand.properties
        expiration = props.get(EXPIRATION)
        if (not isinstance(expiration, (int, float)) or isinstance(expiration, bool)
                or expiration <= time.time() * 1000):
            raise NegotiationRejected(
                f"the demand's {EXPIRATION} (ms since the epoch) is missing or in the past"
            )
        platform = self._ctx.platform
        if props.get(CHOSEN_PLATFORM) != platform:
            raise NegotiationRejected(
                f"payment platform {props.get(CHOSEN_PLATFORM)!r} is not accepted: this network "
                f"pays on {platform!r} (add the allocation's demand decoration)"
            )
        if not isinstance(props.get(payment_platform_address(platform)), str):
            raise NegotiationRejected(f"the demand has no payment address on {platform}")
        draft = copy.deepcopy(dict(offer.properties))
        asked = props.get(DEBIT_NOTE_INTERVAL)
        if asked is not None:
            lowest = min(MIN_DEBIT_NOTE_INTERVAL, self._ctx.debit_note_interval)
            if (not isinstance(asked, (int, float)) or isinstance(asked, bool)
                    or not math.isfinite(asked) or asked < lowest):
                raise NegotiationRejected(
                    f"debit notes every {asked!r} s are not accepted: at least {lowest:g} s"
                )
            draft[DEBIT_NOTE_INTERVAL] = asked
        return draft

    def approve(
        self, agreement: Agreement, demand: ParsedDemand, draft_offer: Offer, current: Offer | None
    ) -> None:
        """Approve ``agreement`` (made from a Draft of ``draft_offer`` answering ``demand``).

        Raises :class:`~workgen.errors.AgreementRejected` if busy or if the offer is gone.
        """
        if self._current is not None:
            raise AgreementRejected(
                f"{self.name} rejected the agreement: busy with agreement "
                f"{self._current.agreement.id}", provider_id=self.node_id,
            )
        if current is None or current.id != draft_offer.id:
            raise AgreementRejected(
                f"{self.name} rejected the agreement: its offer {draft_offer.id} was withdrawn",
                provider_id=self.node_id,
            )
        interval = agreement.proposal.properties.get(DEBIT_NOTE_INTERVAL)
        assert isinstance(interval, (int, float))
        inet = self.config.inet and asks_for_inet(demand.properties, demand.constraint)
        pa = ProviderAgreement(agreement, float(interval), inet)
        self._agreements[agreement.id] = pa
        self._current = pa
        self._ctx.availability_changed(self)
        self._ctx.spawn(self._run_agreement(pa), f"agreement {agreement.id[:12]}")
        log.info("%s approved agreement %s", self.name, agreement.id)

    # -- agreements -------------------------------------------------------------------------

    def agreement(self, agreement_id: str) -> ProviderAgreement:
        try:
            return self._agreements[agreement_id]
        except KeyError:
            raise ValueError(f"agreement {agreement_id} is not one of {self.name}'s") from None

    async def terminate(self, pa: ProviderAgreement, reason: str, by: ClosedBy) -> None:
        """End ``pa``: close its activities and send its one invoice. Idempotent."""
        if pa.state == "Terminated":
            await pa.ended.wait()
            return
        pa.state, pa.reason = "Terminated", reason
        pa.ending.set()
        log.info("%s: agreement %s terminated by the %s: %s", self.name, pa.agreement.id, by,
                 reason)
        try:
            async with asyncio.TaskGroup() as tg:
                for record in pa.activities.values():
                    tg.create_task(record.close(by, f"agreement terminated: {reason}"))
            pa.invoice = self._invoice(pa)
            self._ctx.emit(pa.invoice)
        finally:
            pa.ended.set()
            if self._current is pa:
                self._current = None
                self._ctx.availability_changed(self)

    def _invoice(self, pa: ProviderAgreement) -> Invoice:
        pricing = pa.agreement.pricing
        # Golem's linear model prices each activity, fixed price included, and the invoice
        # covers them all.
        amount = sum((_price(pricing, record.final_usage or {})
                      for record in pa.activities.values()), Decimal(0))
        return Invoice(id=new_id(), agreement_id=pa.agreement.id,
                       activity_ids=tuple(pa.activities), amount=amount, issuer_id=self.node_id)

    def debit_note_rejected(self, note: DebitNote, reason: str) -> None:
        """The requestor will not pay for the work so far: stop it, invoice what was done."""
        pa = self._agreements.get(note.agreement_id)
        if pa is not None and pa.state == "Approved":
            self._ctx.spawn(
                self.terminate(pa, f"debit note {note.id} rejected: {reason}", "provider"),
                f"terminate {pa.agreement.id[:12]}",
            )

    async def _run_agreement(self, pa: ProviderAgreement) -> None:
        """Debit notes every agreed interval, and the end of the agreement at its ``valid_to``."""
        loop = asyncio.get_running_loop()
        expires_at = loop.time() + (pa.agreement.valid_to.timestamp() - time.time())
        next_note = loop.time() + pa.debit_note_interval
        while True:
            try:
                # A real timer (the agreed interval), cut short by termination.
                async with asyncio.timeout_at(min(next_note, expires_at)):
                    await pa.ending.wait()
                return
            except TimeoutError:
                pass
            if loop.time() >= expires_at:
                await self.terminate(pa, "the agreement expired (valid_to)", "provider")
                return
            await self._send_debit_notes(pa)
            next_note = max(next_note + pa.debit_note_interval, loop.time())

    async def _send_debit_notes(self, pa: ProviderAgreement) -> None:
        pricing = pa.agreement.pricing
        for record in list(pa.activities.values()):
            if record.closed or pa.state != "Approved":
                continue
            usage = await record.unit.usage()
            if pa.state != "Approved":
                return  # terminated meanwhile: the invoice has the final word
            note = DebitNote(
                id=new_id(), agreement_id=pa.agreement.id, activity_id=record.id,
                total_amount_due=_price(pricing, usage),
                usage_counter_vector=tuple(float(usage.get(c, 0.0))
                                           for c in pricing.usage_vector),
                issuer_id=self.node_id,
            )
            pa.debit_notes.append(note)
            self._ctx.emit(note)

    # -- activities -------------------------------------------------------------------------

    async def create_activity(self, pa: ProviderAgreement, rootfs: Path | None) -> ActivityRecord:
        self._check_live(pa)
        activity = Activity(id=new_id(), agreement_id=pa.agreement.id)
        config = ExeUnitConfig(
            resources=Resources(mem_gib=self.config.mem_gib, storage_gib=self.config.storage_gib,
                                max_processes=self.config.max_processes,
                                cpu_threads=self.config.cpu_threads),
            inet=pa.inet, rootfs=rootfs, work_root=self._ctx.work_root,
            remote_schemes=self._ctx.remote_schemes,
            hostname=self.name if _HOSTNAME.fullmatch(self.name) else "golem-provider",
        )
        record = ActivityRecord(activity, ExeUnit(activity.id, config))
        pa.activities[activity.id] = record
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ctx.spawn(record.hold(ready), f"activity {activity.id[:12]}")
        try:
            await ready
        except asyncio.CancelledError:
            record.abandon()
            raise
        except Exception as exc:
            raise BackendError(f"{self.name} could not create an activity: {exc}") from exc
        # The agreement may have ended while the unit started; then it went down with it.
        self._check_live(pa)
        return record

    def _check_live(self, pa: ProviderAgreement) -> None:
        if pa.state != "Approved":
            raise AgreementRejected(
                f"agreement {pa.agreement.id} with {self.name} is terminated ({pa.reason})",
                provider_id=self.node_id,
            )


_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")


def _price(pricing: LinearPricing, usage: Mapping[str, float]) -> Decimal:
    return pricing.price_for({c: v for c, v in usage.items() if c in pricing.usage_vector})
