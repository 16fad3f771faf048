"""The provider agent's link to a real yagna node: market, activity and payment by REST, each
activity's execution unit on the GSB.

:class:`YagnaLink` is the :class:`~workgen.provider.agent.AgentLink` of a
:class:`~workgen.provider.agent.ProviderAgent` (the same agent the local network runs) and drives
it from the daemon's events: proposals, agreements, their termination, activities created and
destroyed, debit notes accepted or rejected. It serves each activity's execution unit on the
node's GSB (see :mod:`.service`), reporting the activity's state on every change and its usage
every second, as the daemon requires (it marks an activity unresponsive after 5 s without usage).

All waiting is the daemon's long polls; the link owns one task group for its loops, the agent's
agreements and activities, so nothing outlives :meth:`YagnaLink.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any

from ..._aio import logging_failures, task_scope
from ...errors import AgreementRejected
from ...gsb import GsbClient, GsbError
from ...protocol.constraints import ConstraintSyntaxError, parse_constraints
from ...protocol.properties import NODE_ID_NAME, SRV_COMP_EXPIRATION, flatten_properties
from ..agent import (
    IS_FINAL, AgentActivity, AgentAgreement, DebitNoteDraft, InvoiceDraft, NegotiationRejected,
    OfferSpec, ProviderAgent,
)
from ..exeunit.unit import ActivityState, ExeUnit
from ..terms import SUCCESS
from .rest import RestClient, YagnaApiError
from .service import ExeUnitService, activity_state, service_address, usage_report

log = logging.getLogger(__name__)

PLATFORM = "erc20-holesky-tglm"
POLL = 5.0
USAGE_EVERY = 1.0
ERROR_BACKOFF = 1.0
PUBLISH_ATTEMPTS = 3


def _iso(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _States:
    """An activity's state changes, reported to the daemon in order; :meth:`settled` waits
    until the daemon has the latest one."""

    SETTLE_TIMEOUT = 5.0

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ActivityState] = asyncio.Queue()
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
        """Wait until the daemon has the latest state, as yagna's exe unit does before it
        records a command's result: a requestor that sees the result and asks the daemon for
        the activity's state finds the state the command left.

        Usage is not waited for: yagna's exe unit reports it once a second, whatever its
        batches do, so a requestor reading it right after a batch can find it up to a second
        old there as here. A usage report per batch put a supervisor round trip and a daemon
        write on every script's way, and sent alongside, it competed with the script's results
        in the daemons.
        """
        if self.reported >= self.changes:
            return
        # Bounded: a daemon that does not take the report must not hold results back.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.SETTLE_TIMEOUT), self._done:
                await self._done.wait_for(lambda: self.reported >= self.changes)


class YagnaLink:
    """One provider agent on one yagna node (its REST API and its GSB)."""

    def __init__(self, rest: RestClient, bus: GsbClient, name: str):
        self._rest = rest
        self._bus = bus
        self._name = name
        self._agent: ProviderAgent | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._offer: OfferSpec | None = None
        self._offer_id: str | None = None
        self._offer_ready = asyncio.Event()
        self._reporters: dict[str, asyncio.Task[None]] = {}
        self.ready = asyncio.Event()
        """Set once the offer is published."""

    @property
    def agent(self) -> ProviderAgent:
        assert self._agent is not None, "run() first"
        return self._agent

    # -- the whole agent --------------------------------------------------------------------

    async def run(self, agent: ProviderAgent) -> None:
        """Serve ``agent`` (whose link this is) until cancelled."""
        self._agent = agent
        async with task_scope() as tg:
            self._tg = tg
            try:
                await self._withdraw_stale_offers()
                await agent.publish()
                tg.create_task(self._market_loop())
                tg.create_task(self._agreement_events())
                tg.create_task(self._activity_events())
                tg.create_task(self._debit_note_events())
                self.ready.set()
                await asyncio.Future()  # until cancelled
            finally:
                with contextlib.suppress(Exception):
                    await agent.shutdown("provider shut down", code=SUCCESS)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        # One agreement or activity failing must not take the provider down.
        self._tg.create_task(logging_failures(coro, f"provider task {name!r}", log), name=name)

    # -- market -----------------------------------------------------------------------------

    async def publish(self, offer: OfferSpec | None) -> None:
        # While busy the provider has nothing to offer; a fresh offer when it is free again
        # reaches every demand anew (the market sends each offer to a demand only once).
        self._offer_ready.clear()
        old, self._offer_id = self._offer_id, None
        if old is not None:
            with contextlib.suppress(YagnaApiError):
                await self._rest.delete(f"/market-api/v1/offers/{old}")
        if offer is None:
            return
        document = {"properties": offer.properties, "constraints": offer.constraints}
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                self._offer_id = await self._rest.post("/market-api/v1/offers", json=document)
                break
            except YagnaApiError as exc:
                if exc.status == 0 or attempt + 1 == PUBLISH_ATTEMPTS:
                    raise
                log.warning("%s: publishing the offer: %s", self._name, exc)
                await asyncio.sleep(ERROR_BACKOFF)
        self._offer = offer
        self._offer_ready.set()
        log.info("%s: offer %s published", self._name, self._offer_id)

    async def _withdraw_stale_offers(self) -> None:
        """Offers of this provider's name left on the node by an agent that died: nobody would
        answer for them."""
        try:
            stale = await self._rest.get("/market-api/v1/offers")
        except YagnaApiError as exc:
            log.warning("%s: listing the node's offers failed: %s", self._name, exc)
            return
        for offer in stale or []:
            if not isinstance(offer, dict):
                continue
            offer_id = offer.get("offerId")
            name = flatten_properties(offer.get("properties") or {}).get(NODE_ID_NAME)
            if offer_id and name == self._name:
                log.info("%s: withdrawing stale offer %s", self._name, offer_id)
                with contextlib.suppress(YagnaApiError):
                    await self._rest.delete(f"/market-api/v1/offers/{offer_id}")

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
                    log.warning("%s: polling offer events: %s", self._name, exc)
                    await asyncio.sleep(ERROR_BACKOFF)
                continue  # else the offer was withdrawn meanwhile
            for event in events:
                kind = event.get("eventType")
                if kind == "ProposalEvent":
                    await self._on_proposal(event["proposal"])
                elif kind == "AgreementEvent":
                    self.spawn(self._on_agreement(event["agreement"]), "agreement proposed")

    async def _on_proposal(self, proposal: dict[str, Any]) -> None:
        proposal_id = proposal["proposalId"]
        answer: dict[str, Any] | None = None
        reason, final = "", True
        try:
            constraint = parse_constraints(proposal.get("constraints") or "(&)")
            properties = self.agent.negotiate(
                flatten_properties(proposal.get("properties") or {}), constraint)
        except ConstraintSyntaxError as exc:
            reason = f"bad constraints: {exc}"
        except NegotiationRejected as exc:
            reason, final = str(exc), exc.final
        else:
            assert self._offer is not None
            answer = {"properties": properties, "constraints": self._offer.constraints}
        if self._offer_id is None:
            return  # busy: the offer was withdrawn
        path = f"/market-api/v1/offers/{self._offer_id}/proposals/{proposal_id}"
        try:
            if answer is not None:
                await self._rest.post(path, json=answer)
            else:
                await self._rest.post(f"{path}/reject",
                                      json={"message": reason, IS_FINAL: final})
        except YagnaApiError as exc:
            log.info("%s: answering proposal %s failed: %s", self._name, proposal_id, exc)

    async def _on_agreement(self, doc: dict[str, Any]) -> None:
        agreement_id = doc["agreementId"]
        demand = doc.get("demand") or {}
        properties = flatten_properties(demand.get("properties") or {})
        try:
            constraint = parse_constraints(demand.get("constraints") or "(&)")
        except ConstraintSyntaxError:
            constraint = parse_constraints("(&)")
        # An agreement's validTo is its deadline for approval; it lasts until the demand's
        # expiration.
        expiration = properties.get(SRV_COMP_EXPIRATION)
        expires_at = (expiration / 1000 if isinstance(expiration, (int, float))
                      and not isinstance(expiration, bool) else None)
        try:
            await self.agent.approve(
                agreement_id, offer=flatten_properties((doc.get("offer") or {}).get(
                    "properties") or {}), demand=properties, constraint=constraint,
                expires_at=expires_at)
        except AgreementRejected as exc:
            with contextlib.suppress(YagnaApiError):
                await self._rest.post(f"/market-api/v1/agreements/{agreement_id}/reject",
                                      json={"message": str(exc)})
        except YagnaApiError as exc:
            log.warning("%s: approving agreement %s failed: %s", self._name, agreement_id, exc)

    async def approve(self, agreement: AgentAgreement) -> None:
        await self._rest.post(f"/market-api/v1/agreements/{agreement.id}/approve",
                              poll=30, params={})

    async def break_agreement(self, agreement: AgentAgreement, reason: dict[str, str]) -> None:
        try:
            await self._rest.post(f"/market-api/v1/agreements/{agreement.id}/terminate",
                                  json=reason)
        except YagnaApiError as exc:
            log.info("%s: terminating agreement %s: %s", self._name, agreement.id, exc)

    async def _agreement_events(self) -> None:
        after = _iso()
        while True:
            events = await self._poll("/market-api/v1/agreementEvents",
                                      {"afterTimestamp": after})
            for event in events:
                after = event.get("eventDate", after)
                agreement = self.agent.current
                if (event.get("eventType") == "AgreementTerminatedEvent" and agreement
                        and event.get("agreementId") == agreement.id):
                    reason = (event.get("reason") or {}).get("message", "terminated")
                    self.spawn(self.agent.terminate(agreement, f"terminated: {reason}",
                                                    "requestor"), "agreement terminated")

    # -- payment ----------------------------------------------------------------------------

    async def send_debit_note(self, note: DebitNoteDraft) -> str | None:
        document: dict[str, Any] = {
            "agreementId": note.agreement_id, "activityId": note.activity_id,
            "totalAmountDue": str(note.amount), "usageCounterVector": list(note.usage_vector),
        }
        if note.payment_due is not None:
            document["paymentDueDate"] = _iso(note.payment_due)
        return await self._send("debitNotes", document)

    async def send_invoice(self, invoice: InvoiceDraft) -> None:
        document = {
            "agreementId": invoice.agreement_id, "activityIds": list(invoice.activity_ids),
            "amount": str(invoice.amount), "paymentDueDate": _iso(invoice.payment_due),
        }
        if await self._send("invoices", document) is None and invoice.activity_ids:
            # The requestor's daemon refuses an invoice naming an activity it does not know,
            # which happens when the requestor gave up creating it after we had: the work is
            # still invoiced, without the list.
            await self._send("invoices", document | {"activityIds": []})

    async def debit_note_status(self, note_id: str) -> str | None:
        try:
            note = await self._rest.get(f"/payment-api/v1/debitNotes/{note_id}")
        except YagnaApiError as exc:
            log.warning("%s: checking debit note %s: %s", self._name, note_id, exc)
            return None
        status = note.get("status") if isinstance(note, dict) else None
        return status if isinstance(status, str) else None

    async def _send(self, kind: str, document: dict[str, Any]) -> str | None:
        """Create and send a debit note or an invoice; its id, or ``None`` if that failed."""
        try:
            created = await self._rest.post(f"/payment-api/v1/{kind}", json=document)
            key = "debitNoteId" if kind == "debitNotes" else "invoiceId"
            await self._rest.post(f"/payment-api/v1/{kind}/{created[key]}/send")
        except YagnaApiError as exc:
            log.warning("%s: sending %s failed: %s", self._name, kind, exc)
            return None
        return str(created[key])

    async def _debit_note_events(self) -> None:
        after = _iso()
        while True:
            events = await self._poll("/payment-api/v1/debitNoteEvents",
                                      {"afterTimestamp": after})
            for event in events:
                after = event.get("eventDate", after)
                kind, note_id = event.get("eventType"), event.get("debitNoteId")
                if not isinstance(note_id, str):
                    continue
                if kind in ("DebitNoteAcceptedEvent", "DebitNoteSettledEvent"):
                    self.agent.debit_note_accepted(note_id)
                elif kind == "DebitNoteRejectedEvent":
                    agreement = self.agent.current
                    if agreement is not None and note_id in agreement.debit_notes:
                        rejection = event.get("rejection") or {}
                        reason = rejection.get("message") or rejection.get(
                            "rejectionReason") or "rejected"
                        self.agent.debit_note_rejected(agreement.id, note_id, str(reason))

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
                agreement = self.agent.current
                if name == "CreateActivity":
                    if agreement is None or agreement.id != event.get("agreementId"):
                        log.warning("%s: activity %s for unknown agreement %s", self._name,
                                    activity_id, event.get("agreementId"))
                        continue
                    with contextlib.suppress(AgreementRejected):  # ending meanwhile
                        self.agent.create_activity(agreement, activity_id)
                elif name == "DestroyActivity":
                    if agreement and activity_id in agreement.activities:
                        agreement.activities[activity_id].request_close(
                            "requestor", "destroyed by the requestor")

    async def activity_started(self, activity: AgentActivity) -> None:
        unit = activity.unit
        states = _States()
        unit.on_state = states.changed
        states.changed(unit.state)
        vector = activity.agreement.pricing.usage_vector
        service = ExeUnitService(unit, vector, settled=states.settled)
        await self._bus.register(service_address(activity.id), service.handle)
        assert self._tg is not None
        self._reporters[activity.id] = self._tg.create_task(self._report(unit, states, vector))

    async def activity_closing(self, activity: AgentActivity) -> None:
        reporter = self._reporters.pop(activity.id, None)
        if reporter is not None:
            reporter.cancel()

    async def activity_ended(self, activity: AgentActivity) -> None:
        with contextlib.suppress(GsbError):
            await self._bus.unregister(service_address(activity.id))
        with contextlib.suppress(GsbError):
            await self._set_state(activity.id, activity_state(activity.unit))

    async def _report(self, unit: ExeUnit, states: _States, vector: tuple[str, ...]) -> None:
        """State changes as they happen; usage at least every second (the daemon's rule)."""
        last: dict[str, Any] | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(USAGE_EVERY):
                        await states.queue.get()
                    while not states.queue.empty():  # one report covers changes made meanwhile
                        states.queue.get_nowait()
                    changes = states.changes
                    state = activity_state(unit)
                    if state != last:
                        await self._set_state(unit.activity_id, state)
                        last = state
                    await states.mark_reported(changes)  # results wait for this, not usage
                except TimeoutError:
                    pass
                usage = await usage_report(unit, vector)
                await self._bus.call("/local/activity/SetActivityUsage", {
                    "activityId": unit.activity_id, "usage": usage, "timeout": None})
        except GsbError as exc:
            log.error("%s: reporting activity %s: %s", self._name, unit.activity_id, exc)

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
            log.warning("%s: polling %s: %s", self._name, path, exc)
            # An error answer comes at once; don't turn the poll into a busy loop.
            await asyncio.sleep(ERROR_BACKOFF)
            events = None
        return events if isinstance(events, list) else []
