"""The provider agent on a real yagna node: offers, agreements, activities, debit notes, invoices.

It speaks the provider side of the daemon's REST API (market, activity events, payment) and
serves each activity's execution unit on the node's GSB (see :mod:`.service`), reporting the
activity's state on every change and its usage every second, as the daemon requires (it marks an
activity unresponsive after 5 s without usage). As the local network's providers do, it gives its
whole capacity to one agreement at a time, rejecting other proposals while busy.

All waiting is the daemon's long polls; the agent owns one task group for its loops and one task
per activity, so nothing outlives :meth:`ProviderAgent.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..._aio import task_scope
from ...gftp import GftpScheme
from ...errors import ImageNotFound
from ...gsb import GsbClient, GsbError
from ...protocol.constraints import ConstraintSyntaxError, match, parse_constraints
from ...protocol.pricing import LinearPricing
from ...protocol.properties import (
    COM_PAYMENT_CHOSEN_PLATFORM, NODE_DEBUG_SUBNET,
    NODE_ID_NAME, SRV_COMP_EXPIRATION,
    flatten_properties,
)
from ..exeunit.unit import ActivityState, ExeUnit, ExeUnitConfig
from ..images import ImageResolver, ImageStore
from ..offer import ProviderConfig, asks_for_inet, offer_properties
from ..runtime.sandbox import Resources
from ..terms import (
    DEBIT_NOTES_DEADLINE, DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, EXPIRED, NO_ACTIVITY,
    SUCCESS, PaymentTerms, TermsRefused, break_reason, negotiate, offered_terms,
)
from .rest import RestClient, YagnaApiError
from .service import ExeUnitService, activity_state, service_address, usage_report

log = logging.getLogger(__name__)

PLATFORM = "erc20-holesky-tglm"
POLL = 5.0
USAGE_EVERY = 1.0
ERROR_BACKOFF = 1.0
# A debit note the requestor has accepted (or paid) keeps the agreement alive.
_ACCEPTED = ("ACCEPTED", "SETTLED")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")


def _iso(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Activity:
    id: str
    unit: ExeUnit
    close: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    final_usage: dict[str, float] | None = None


class _States:
    """An activity's state changes, reported to the daemon in order; :meth:`settled` waits
    until the daemon has the latest state and usage."""

    SETTLE_TIMEOUT = 5.0

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ActivityState | None] = asyncio.Queue()
        self.changes = 0
        self.reported = 0
        self._done = asyncio.Condition()

    def changed(self, state: ActivityState) -> None:
        self.changes += 1
        self.queue.put_nowait(state)

    async def mark_reported(self, changes: int) -> None:
        async with self._done:
            self.reported = max(self.reported, changes)
            self._done.notify_all()

    async def settled(self) -> None:
        """Report state and usage now, and wait until the daemon has them: a requestor that
        sees a batch end and asks for the activity's state or usage must find what explains
        it (the daemon answers those from its last report)."""
        self.changes += 1
        self.queue.put_nowait(None)
        # Bounded: a daemon that does not take the report must not hold results back.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.SETTLE_TIMEOUT), self._done:
                await self._done.wait_for(lambda: self.reported >= self.changes)


@dataclass
class _Agreement:
    id: str
    pricing: LinearPricing
    terms: PaymentTerms
    inet: bool
    rootfs: Path | None
    expires_at: float | None = None
    """The demand's expiration (epoch seconds): the agreement ends then."""
    activities: dict[str, _Activity] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    idle_since: float | None = field(default_factory=time.monotonic)
    """Since when no activity is live (``None`` while one is)."""
    unaccepted: dict[str, float] = field(default_factory=dict)
    """Debit notes sent and not known accepted, with their acceptance deadlines (monotonic)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def debit_note_interval(self) -> float:
        return self.terms.debit_note_interval

    def touch(self) -> None:
        """Something the agreement's watch looks at changed."""
        live = any(not a.closed.is_set() for a in self.activities.values())
        if live:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()
        self.changed.set()


class ProviderAgent:
    def __init__(self, config: ProviderConfig, rest: RestClient, bus: GsbClient, node_id: str,
                 *, subnet: str = "public", platform: str = PLATFORM,
                 debit_note_interval: float = 60.0, work_root: Path | None = None,
                 overcharge: float = 1.0, images: ImageResolver | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT):
        self.config = config
        self._idle_timeout = idle_timeout
        self._accept_timeout = accept_timeout
        self._images = images or ImageResolver(ImageStore(), dev_images=False)
        self.node_id = node_id
        self._rest = rest
        self._bus = bus
        self._subnet = subnet
        self._platform = platform
        self._interval = debit_note_interval
        self._work_root = work_root
        self._overcharge = Decimal(str(overcharge))
        """Bills are this many times the agreed price: 1 for an honest provider."""
        self._tg: asyncio.TaskGroup | None = None
        self._agreement: _Agreement | None = None
        self._offer_id: str | None = None
        self._offer_ready = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once the offer is published."""

    # -- the whole agent --------------------------------------------------------------------

    async def run(self) -> None:
        async with task_scope() as tg:
            self._tg = tg
            try:
                await self._withdraw_stale_offers()
                await self._publish_offer()
                tg.create_task(self._market_loop())
                tg.create_task(self._agreement_events())
                tg.create_task(self._activity_events())
                self.ready.set()
                await asyncio.Future()  # until cancelled
            finally:
                await self._shutdown()

    async def _shutdown(self) -> None:
        agreement = self._agreement
        if agreement is not None:
            with contextlib.suppress(Exception):
                await self._end_agreement(agreement, "provider shut down", shutting_down=True)
        with contextlib.suppress(Exception):
            await self._withdraw_offer()

    def _offer(self, terms: PaymentTerms | None = None) -> dict[str, Any]:
        """The offer: the provider's own terms, or (countering a proposal) the agreed ones."""
        properties = offer_properties(
            self.config, node_id=self.node_id, subnet=self._subnet,
            platform_name=self._platform, debit_note_interval=self._interval,
            transfer_protocols=("gftp", "http", "https"))
        if terms is None:
            properties |= offered_terms(self._interval, self._accept_timeout)
        else:
            properties |= terms.properties()
        constraints = (f"(&({SRV_COMP_EXPIRATION}>{int(time.time() * 1000)})"
                       f"({NODE_DEBUG_SUBNET}={self._subnet}))")
        return {"properties": properties, "constraints": constraints}

    async def _publish_offer(self) -> None:
        self._offer_id = await self._rest.post("/market-api/v1/offers", json=self._offer())
        self._offer_ready.set()
        log.info("%s: offer %s published", self.config.name, self._offer_id)

    async def _withdraw_stale_offers(self) -> None:
        """Offers of this provider's name left on the node by an agent that died: nobody would
        answer for them."""
        try:
            stale = await self._rest.get("/market-api/v1/offers")
        except YagnaApiError as exc:
            log.warning("%s: listing the node's offers failed: %s", self.config.name, exc)
            return
        for offer in stale or []:
            if not isinstance(offer, dict):
                continue
            offer_id = offer.get("offerId")
            name = flatten_properties(offer.get("properties") or {}).get(NODE_ID_NAME)
            if offer_id and name == self.config.name:
                log.info("%s: withdrawing stale offer %s", self.config.name, offer_id)
                with contextlib.suppress(YagnaApiError):
                    await self._rest.delete(f"/market-api/v1/offers/{offer_id}")

    async def _withdraw_offer(self) -> None:
        # While busy the provider has nothing to offer; a fresh offer when it is free again
        # reaches every demand anew (the market sends each offer to a demand only once).
        self._offer_ready.clear()
        offer_id, self._offer_id = self._offer_id, None
        if offer_id is not None:
            with contextlib.suppress(YagnaApiError):
                await self._rest.delete(f"/market-api/v1/offers/{offer_id}")

    # -- market -----------------------------------------------------------------------------

    async def _market_loop(self) -> None:
        while True:
            await self._offer_ready.wait()
            offer_id = self._offer_id
            try:
                events = await self._rest.get(f"/market-api/v1/offers/{offer_id}/events",
                                              params={"maxEvents": 20}, poll=POLL) or []
            except YagnaApiError as exc:
                if exc.status == 0:
                    raise
                if offer_id == self._offer_id:
                    log.warning("%s: polling offer events: %s", self.config.name, exc)
                    await asyncio.sleep(ERROR_BACKOFF)
                continue  # else the offer was withdrawn meanwhile
            for event in events:
                kind = event.get("eventType")
                if kind == "ProposalEvent":
                    await self._on_proposal(event["proposal"])
                elif kind == "AgreementEvent":
                    self._spawn(self._on_agreement(event["agreement"]))

    async def _on_proposal(self, proposal: dict[str, Any]) -> None:
        proposal_id = proposal["proposalId"]
        reason, terms = self._negotiate(proposal)
        if self._offer_id is None:
            return  # busy: the offer was withdrawn
        path = f"/market-api/v1/offers/{self._offer_id}/proposals/{proposal_id}"
        try:
            if reason is None:
                await self._rest.post(path, json=self._offer(terms))
            else:
                await self._rest.post(f"{path}/reject", json={"message": reason})
        except YagnaApiError as exc:
            log.info("%s: answering proposal %s failed: %s", self.config.name, proposal_id, exc)

    def _negotiate(self, proposal: dict[str, Any]) -> tuple[str | None, PaymentTerms | None]:
        """Why the demand is refused (or None), and the payment terms agreed."""
        if self._agreement is not None:
            return "busy with another agreement", None
        demand = flatten_properties(proposal.get("properties") or {})
        try:
            constraints = parse_constraints(proposal.get("constraints") or "(&)")
        except ConstraintSyntaxError as exc:
            return f"bad constraints: {exc}", None
        offer = self._offer()
        if not match(demand, constraints, offer["properties"], offer["constraints"]):
            return "the demand and this offer do not match", None
        chosen = demand.get(COM_PAYMENT_CHOSEN_PLATFORM)
        if chosen != self._platform:
            # The daemon refuses debit notes and invoices without an agreed platform.
            return (f"payment platform {chosen!r} is not taken here (this provider takes "
                    f"{self._platform!r})"), None
        try:
            self._images.resolve(demand)
            return None, negotiate(demand, interval=self._interval)
        except (ImageNotFound, TermsRefused) as exc:
            return str(exc), None

    async def _on_agreement(self, doc: dict[str, Any]) -> None:
        agreement_id = doc["agreementId"]
        if self._agreement is not None:
            with contextlib.suppress(YagnaApiError):
                await self._rest.post(f"/market-api/v1/agreements/{agreement_id}/reject",
                                      json={"message": "busy with another agreement"})
            return
        offer = flatten_properties(doc.get("offer", {}).get("properties") or {})
        demand = doc.get("demand", {})
        demand_props = flatten_properties(demand.get("properties") or {})
        terms = PaymentTerms.from_agreement(offer, demand_props, self._interval)
        expiration = demand_props.get(SRV_COMP_EXPIRATION)
        try:
            inet = asks_for_inet(flatten_properties(demand.get("properties") or {}),
                                 parse_constraints(demand.get("constraints") or "(&)"))
        except ConstraintSyntaxError:
            inet = False
        try:
            rootfs = self._images.resolve(flatten_properties(demand.get("properties") or {}))
        except ImageNotFound as exc:
            with contextlib.suppress(YagnaApiError):
                await self._rest.post(f"/market-api/v1/agreements/{agreement_id}/reject",
                                      json={"message": str(exc)})
            return
        agreement = _Agreement(
            agreement_id, LinearPricing.from_properties(offer), terms,
            inet and self.config.inet, rootfs,
            expires_at=expiration / 1000 if isinstance(expiration, (int, float))
            and not isinstance(expiration, bool) else None)
        self._agreement = agreement
        try:
            await self._rest.post(f"/market-api/v1/agreements/{agreement_id}/approve",
                                  poll=30, params={})
        except YagnaApiError as exc:
            log.warning("%s: approving agreement %s failed: %s", self.config.name,
                        agreement_id, exc)
            self._agreement = None
            return
        log.info("%s: agreement %s approved", self.config.name, agreement_id)
        await self._withdraw_offer()
        self._spawn(self._debit_notes(agreement))
        self._spawn(self._watch(agreement))

    async def _agreement_events(self) -> None:
        after = _iso()
        while True:
            events = await self._poll("/market-api/v1/agreementEvents",
                                      {"afterTimestamp": after})
            for event in events:
                after = event.get("eventDate", after)
                agreement = self._agreement
                if (event.get("eventType") == "AgreementTerminatedEvent" and agreement
                        and event.get("agreementId") == agreement.id):
                    reason = (event.get("reason") or {}).get("message", "terminated")
                    self._spawn(self._end_agreement(agreement, f"terminated: {reason}"))

    async def _end_agreement(self, agreement: _Agreement, reason: str, *,
                             broken: str | None = None, shutting_down: bool = False) -> None:
        """End the agreement: close its activities, invoice, and offer again. ``broken`` (a
        ya-provider reason code) or ``shutting_down``: the provider terminates it itself."""
        if agreement.ended.is_set():
            return
        agreement.ended.set()
        agreement.changed.set()
        for activity in list(agreement.activities.values()):
            activity.close.set()
            await activity.closed.wait()
        if broken or shutting_down:
            with contextlib.suppress(YagnaApiError):
                await self._rest.post(f"/market-api/v1/agreements/{agreement.id}/terminate",
                                      json=break_reason(broken or SUCCESS, reason))
        await self._invoice(agreement)
        if self._agreement is agreement:
            self._agreement = None
        log.info("%s: agreement %s ended (%s)", self.config.name, agreement.id, reason)
        if not shutting_down:
            with contextlib.suppress(YagnaApiError):
                await self._publish_offer()

    async def _watch(self, agreement: _Agreement) -> None:
        """Breaks the agreement as ya-provider does: no live activity for the idle timeout,
        its expiration reached, or a debit note unaccepted past its deadline."""
        loop = asyncio.get_running_loop()
        while not agreement.ended.is_set():
            agreement.changed.clear()
            now = loop.time()
            deadlines: list[tuple[float, str]] = []
            if agreement.idle_since is not None:
                deadlines.append((agreement.idle_since + self._idle_timeout, NO_ACTIVITY))
            if agreement.expires_at is not None:
                deadlines.append((now + agreement.expires_at - time.time(), EXPIRED))
            if agreement.unaccepted:
                deadlines.append((min(agreement.unaccepted.values()), DEBIT_NOTES_DEADLINE))
            when, code = min(deadlines, default=(now + 3600.0, ""))
            try:
                async with asyncio.timeout_at(when):
                    await agreement.changed.wait()
                continue
            except TimeoutError:
                pass
            message = await self._breach(agreement, code)
            if message is not None:
                await self._end_agreement(agreement, message, broken=code)
                return

    async def _breach(self, agreement: _Agreement, code: str) -> str | None:
        """Whether the deadline that just passed breaks the agreement (and why)."""
        if code == NO_ACTIVITY and agreement.idle_since is not None:
            return f"No activity created within {self._idle_timeout:g}s"
        if code == EXPIRED:
            return "Agreement expired"
        if code == DEBIT_NOTES_DEADLINE:
            now = asyncio.get_running_loop().time()
            for note_id, deadline in sorted(agreement.unaccepted.items(), key=lambda i: i[1]):
                if deadline > now:
                    break
                try:
                    note = await self._rest.get(f"/payment-api/v1/debitNotes/{note_id}")
                except YagnaApiError as exc:
                    log.warning("%s: checking debit note %s: %s", self.config.name, note_id, exc)
                    note = None
                if isinstance(note, dict) and note.get("status") in _ACCEPTED:
                    agreement.unaccepted.pop(note_id, None)
                    continue
                timeout = agreement.terms.accept_timeout
                return f"Requestor isn't accepting DebitNotes in time ({timeout:g}s)"
        return None

    # -- payment ----------------------------------------------------------------------------

    async def _debit_notes(self, agreement: _Agreement) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(agreement.debit_note_interval):
                    await agreement.ended.wait()
                    return
            for activity in list(agreement.activities.values()):
                if activity.closed.is_set():
                    continue
                usage = await activity.unit.usage()
                vector = [float(usage.get(c, 0.0)) for c in agreement.pricing.usage_vector]
                note: dict[str, Any] = {
                    "agreementId": agreement.id, "activityId": activity.id,
                    "totalAmountDue": str(_price(agreement.pricing, usage) * self._overcharge),
                    "usageCounterVector": vector,
                }
                terms = agreement.terms
                if terms.payment_timeout is not None:
                    # Payable only when mid-agreement payments were negotiated.
                    note["paymentDueDate"] = _iso(datetime.now(timezone.utc)
                                                  + timedelta(seconds=terms.payment_timeout))
                note_id = await self._send("debitNotes", note)
                if note_id is not None and terms.accept_timeout is not None:
                    agreement.unaccepted[note_id] = (asyncio.get_running_loop().time()
                                                     + terms.accept_timeout)
                    agreement.changed.set()

    async def _invoice(self, agreement: _Agreement) -> None:
        total = Decimal(0)
        for activity in agreement.activities.values():
            total += _price(agreement.pricing, activity.final_usage or {})
        await self._send("invoices", {
            "agreementId": agreement.id, "activityIds": list(agreement.activities),
            "amount": str(total * self._overcharge),
            "paymentDueDate": _iso(datetime.now(timezone.utc) + timedelta(minutes=5)),
        })

    async def _send(self, kind: str, document: dict[str, Any]) -> str | None:
        """Create and send a debit note or an invoice; its id, or ``None`` if that failed."""
        try:
            created = await self._rest.post(f"/payment-api/v1/{kind}", json=document)
            key = "debitNoteId" if kind == "debitNotes" else "invoiceId"
            await self._rest.post(f"/payment-api/v1/{kind}/{created[key]}/send")
        except YagnaApiError as exc:
            log.warning("%s: sending %s failed: %s", self.config.name, kind, exc)
            return None
        return str(created[key])

    # -- activities -------------------------------------------------------------------------

    async def _activity_events(self) -> None:
        after = _iso()
        while True:
            events = await self._poll("/activity-api/v1/events", {"afterTimestamp": after})
            for event in events:
                after = event.get("eventDate", after)
                kind = event.get("eventType")
                name = kind if isinstance(kind, str) else next(iter(kind or {}), "")
                activity_id = event.get("activityId", "")
                if name == "CreateActivity":
                    self._create_activity(activity_id, event.get("agreementId", ""))
                elif name == "DestroyActivity":
                    agreement = self._agreement
                    if agreement and activity_id in agreement.activities:
                        agreement.activities[activity_id].close.set()

    def _create_activity(self, activity_id: str, agreement_id: str) -> None:
        agreement = self._agreement
        if agreement is None or agreement.id != agreement_id or agreement.ended.is_set():
            log.warning("%s: activity %s for unknown agreement %s", self.config.name,
                        activity_id, agreement_id)
            return
        name = self.config.name
        config = ExeUnitConfig(
            resources=Resources(mem_gib=self.config.mem_gib, storage_gib=self.config.storage_gib,
                                max_processes=self.config.max_processes,
                                cpu_threads=self.config.cpu_threads),
            inet=agreement.inet, rootfs=agreement.rootfs, work_root=self._work_root,
            hostname=name if _HOSTNAME.fullmatch(name) else "golem-provider",
            remote_schemes={"gftp": GftpScheme(self._bus)})
        activity = _Activity(activity_id, ExeUnit(activity_id, config))
        agreement.activities[activity_id] = activity
        agreement.touch()
        self._spawn(self._hold(activity, agreement))

    async def _hold(self, activity: _Activity, agreement: _Agreement) -> None:
        """The activity's life: serve it on the GSB, report state and usage, until closed."""
        unit = activity.unit
        states = _States()
        unit.on_state = states.changed
        address = service_address(activity.id)
        service = ExeUnitService(unit, agreement.pricing.usage_vector, settled=states.settled)
        try:
            async with unit, task_scope() as tg:
                await self._bus.register(address, service.handle)
                reporter = tg.create_task(self._report(unit, states, agreement))
                await activity.close.wait()
                reporter.cancel()
        except GsbError as exc:
            log.error("%s: activity %s: %s", self.config.name, activity.id, exc)
        finally:
            activity.final_usage = await unit.usage()
            with contextlib.suppress(GsbError):
                await self._bus.unregister(address)
            with contextlib.suppress(GsbError):
                await self._set_state(activity.id, activity_state(unit))
            activity.closed.set()
            agreement.touch()

    async def _report(self, unit: ExeUnit, states: _States, agreement: _Agreement) -> None:
        """State changes as they happen; usage at least every second (the daemon's rule)."""
        while True:
            try:
                async with asyncio.timeout(USAGE_EVERY):
                    await states.queue.get()
                while not states.queue.empty():  # one report covers changes made meanwhile
                    states.queue.get_nowait()
                changes = states.changes
                await self._set_state(unit.activity_id, activity_state(unit))
            except TimeoutError:
                changes = None
            usage = await usage_report(unit, agreement.pricing.usage_vector)
            await self._bus.call("/local/activity/SetActivityUsage", {
                "activityId": unit.activity_id, "usage": usage, "timeout": None})
            if changes is not None:
                await states.mark_reported(changes)

    async def _set_state(self, activity_id: str, state: dict[str, Any]) -> None:
        await self._bus.call("/local/activity/SetActivityState", {
            "activityId": activity_id, "state": state, "timeout": None, "credentials": None})

    # -- helpers ----------------------------------------------------------------------------

    async def _poll(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            events = await self._rest.get(path, params=params, poll=POLL)
        except YagnaApiError as exc:
            if exc.status == 0:
                raise  # the daemon is gone: the agent cannot go on
            log.warning("%s: polling %s: %s", self.config.name, path, exc)
            # An error answer comes at once; don't turn the poll into a busy loop.
            await asyncio.sleep(ERROR_BACKOFF)
            events = None
        return events if isinstance(events, list) else []

    def _spawn(self, coro: Any) -> None:
        assert self._tg is not None
        self._tg.create_task(coro)


def _price(pricing: LinearPricing, usage: dict[str, float]) -> Decimal:
    return pricing.price_for({c: v for c, v in usage.items() if c in pricing.usage_vector})
