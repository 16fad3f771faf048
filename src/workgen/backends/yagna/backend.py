"""The yagna backend: the requestor's backend protocol on a real Golem daemon's REST API.

Configured like the other Golem SDKs: ``YAGNA_APPKEY``, ``YAGNA_API_URL``, ``YAGNA_SUBNET``,
``YAGNA_PAYMENT_NETWORK``, ``YAGNA_PAYMENT_DRIVER`` (and ``GSB_URL`` for file transfers), with
explicit arguments winning. All waiting is the daemon's: long polls with server-side timeouts and
the SSE stream of a batch's runtime events. A batch's exec and results travel over the daemon's
GSB straight to the provider's exe unit (``control.py``), the messages the daemon's own REST
handlers send, without their per-request lookups.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from ...errors import (
    ActivityClosed, ActivityLost, AgreementRejected, BackendError, BackendUnavailable,
    BudgetExhausted, ImageNotFound, PaymentError,
)
from ...gsb import GsbClient, GsbError, open_gsb
from ...protocol.exescript import Command, Run, batch_to_json
from ...protocol.properties import (
    COM_PAYMENT_CHOSEN_PLATFORM, SRV_COMP_TASK_PACKAGE, SRV_COMP_VM_IMAGE_TAG,
    SRV_COMP_VM_PACKAGE_FORMAT, flatten_properties,
)
from ...protocol.results import (
    CommandOutcome, CommandResult, FailureKind, Finished, RuntimeEvent, utc_now,
)
from ..base import (
    Capabilities,
    Activity, Agreement, Allocation, DebitNote, Demand, Invoice, MarketEvent, PaymentEvent,
    Proposal, ProposalRejectedEvent,
)
from .api import ApiError, YagnaApi
from .control import ControlError, ExeUnitRoute
from .results import outcome
from .storage import GftpStorage

log = logging.getLogger(__name__)

TERMINATE_TIMEOUT = 10.0
UNANSWERED_LIMIT = 2
"""State queries in a row that the provider's side fails before its activity counts as lost."""
POLL = 5.0


def _iso(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_IMAGE_KEYS = (SRV_COMP_VM_IMAGE_TAG, SRV_COMP_TASK_PACKAGE, SRV_COMP_VM_PACKAGE_FORMAT)


class _Subscription:
    """A demand on the daemon's market; iterating it long-polls its events."""

    def __init__(self, api: YagnaApi, demand: Demand, sub_id: str):
        self._api = api
        self.demand = demand
        self.id = sub_id
        self._closed = False
        # Our counter-proposals' ids and the providers they went to: a provider's rejection
        # names only the proposal.
        self.countered: dict[str, str] = {}
        # Rejections we learnt of ourselves (a counter-proposal the daemon refused to send).
        self.local: collections.deque[ProposalRejectedEvent] = collections.deque()

    async def __aiter__(self) -> AsyncIterator[MarketEvent]:
        while not self._closed:
            while self.local:
                yield self.local.popleft()
            try:
                events = await self._api.get(f"/market-api/v1/demands/{self.id}/events",
                                             params={"maxEvents": 50}, poll=POLL)
            except ApiError as exc:
                if exc.status in (404, 410) and not self._closed:
                    # The demand expired on the daemon: publish it again and go on.
                    self.id = await self._api.post("/market-api/v1/demands",
                                                   json=_demand_doc(self.demand))
                    continue
                raise
            for event in events or []:
                kind = event.get("eventType")
                if kind == "ProposalEvent":
                    yield _proposal(event["proposal"])
                elif kind == "ProposalRejectedEvent":
                    why = event.get("reason") or {}
                    proposal_id = event.get("proposalId", "")
                    issuer = self.countered.pop(proposal_id, None) or event.get("issuerId", "")
                    yield ProposalRejectedEvent(
                        proposal_id=proposal_id, issuer_id=issuer or "",
                        reason=str(why.get("message", "rejected")),
                        final=why.get("golem.proposal.rejection.is-final") is not False)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(BackendError):
                await self._api.delete(f"/market-api/v1/demands/{self.id}", ok=(404, 410))


def _demand_doc(demand: Demand) -> dict[str, Any]:
    return {"properties": dict(demand.properties), "constraints": demand.constraints}


def _proposal(doc: dict[str, Any]) -> Proposal:
    return Proposal(id=doc["proposalId"], issuer_id=doc.get("issuerId", ""),
                    properties=flatten_properties(doc.get("properties") or {}),
                    constraints=doc.get("constraints") or "", state=doc.get("state", "Initial"),
                    prev_proposal_id=doc.get("prevProposalId"))


class _ActivityErrors:
    """The one place that tells an activity's error apart: closed by us (we destroyed it) or
    broken (its provider, its daemon or the network failed it)."""

    KEEP = 10_000

    def __init__(self) -> None:
        self._destroyed: dict[str, None] = {}

    def destroyed(self, activity: Activity) -> None:
        self._destroyed[activity.id] = None
        if len(self._destroyed) > self.KEEP:  # a long run destroys many: keep the newest
            del self._destroyed[next(iter(self._destroyed))]

    def of(self, activity: Activity, status: int | None = None,
           what: str | None = None) -> ActivityClosed | ActivityLost:
        detail = what or ("its provider did not answer in time (HTTP 408)" if status == 408
                          else f"HTTP {status} from the daemon" if status else "no answer")
        if activity.id in self._destroyed:
            return ActivityClosed(f"activity {activity.id} was destroyed ({detail})",
                                  activity_id=activity.id)
        if status in (404, 410):
            return ActivityLost(f"activity {activity.id} is gone on its provider ({detail})",
                                activity_id=activity.id)
        return ActivityLost(f"activity {activity.id} broke ({detail})", activity_id=activity.id)


class _Batch:
    def __init__(self, api: YagnaApi, errors: _ActivityErrors, activity: Activity,
                 batch_id: str, size: int, timeout: float | None,
                 route: ExeUnitRoute | None = None):
        self._errors = errors
        self._api = api
        self._route = route
        self._activity = activity
        self.id = batch_id
        self._size = size
        self._unanswered = 0
        # yagna's exec request carries no timeout, so it is kept here: at the deadline the
        # batch is reported timed out (its command runs on until the activity ends).
        self._timeout = timeout
        self._deadline = (None if timeout is None
                          else asyncio.get_running_loop().time() + timeout)

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        try:
            async with asyncio.timeout_at(self._deadline):
                async for event in self._events():
                    yield event
        except TimeoutError:
            return  # results() says the batch timed out

    async def _events(self) -> AsyncIterator[RuntimeEvent]:
        path = f"/activity-api/v1/activity/{self._activity.id}/exec/{self.id}"
        try:
            async with self._api.http.stream("GET", path, timeout=None,
                                             headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    raise self._errors.of(self._activity, response.status_code)
                finished = 0
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = RuntimeEvent.from_json(json.loads(line[5:]))
                    yield event
                    if isinstance(event.kind, Finished):
                        # The stream outlives the batch: stop at its last command, or at the
                        # first failure, which ends a batch.
                        finished += 1
                        if event.kind.return_code != 0 or finished >= self._size:
                            return
        except (ActivityLost, ActivityClosed):
            raise
        except Exception as exc:  # httpx errors, bad events: the stream broke
            raise self._errors.of(self._activity, what=f"the event stream of batch {self.id} "
                                  f"broke: {exc!r}") from exc

    async def results(self) -> list[CommandOutcome]:
        path = f"/activity-api/v1/activity/{self._activity.id}/exec/{self.id}"
        loop = asyncio.get_running_loop()
        while True:
            poll = POLL
            if self._deadline is not None:
                poll = min(POLL, max(0.0, self._deadline - loop.time()))
            try:
                if self._route is not None:
                    docs = await self._route.results(self.id, self._size - 1, poll)
                else:
                    docs = await self._api.get(path, params={"commandIndex": self._size - 1,
                                                             "pollTimeout": poll}, poll=poll)
            except ApiError as exc:
                raise self._errors.of(self._activity, exc.status) from exc
            except ControlError as exc:
                raise self._errors.of(self._activity, exc.status, exc.detail) from exc
            results = [outcome(CommandResult.from_json(d)) for d in docs or []]
            if (self._deadline is not None and loop.time() >= self._deadline
                    and not (results and (results[-1].is_batch_finished or not results[-1].ok
                                          or results[-1].index >= self._size - 1))):
                return results + [self._timed_out(len(results))]
            if results and (results[-1].is_batch_finished or not results[-1].ok
                            or results[-1].index >= self._size - 1):
                if not results[-1].ok:
                    await self._check_alive()
                return results
            # A poll without the end: the provider may be gone (its daemon or agent died),
            # which the results alone never say. Its activity's state does, within a poll.
            await self._check_alive(polling=True)

    async def _check_alive(self, polling: bool = False) -> None:
        """Raises :class:`ActivityLost` if the activity has ended on its provider: a command that
        failed because its provider's side broke is the activity's loss, not the command's.
        ``polling``: while waiting for results, a provider that no longer answers for its
        activity (twice in a row) has lost it too."""
        try:
            doc = await self._api.get(f"/activity-api/v1/activity/{self._activity.id}/state")
            self._unanswered = 0
        except ApiError as exc:
            if exc.status in (404, 410):
                raise self._errors.of(self._activity, exc.status) from exc
            self._unanswered += 1
            if polling and self._unanswered >= UNANSWERED_LIMIT:
                raise self._errors.of(self._activity, what="its provider no longer answers for "
                                      f"it: {exc}") from exc
            # Unknown: the command's own failure stands.
            log.warning("reading the state of activity %s failed: %s", self._activity.id, exc)
            return
        except BackendError as exc:
            log.warning("reading the state of activity %s failed: %s", self._activity.id, exc)
            return
        state = (doc.get("state") or [None])[0] if isinstance(doc, dict) else None
        if state in ("Terminated", "Unresponsive"):
            reason = doc.get("reason") or doc.get("errorMessage") or "no reason given"
            raise ActivityLost(f"activity {self._activity.id} is {state} on its provider: "
                               f"{reason}", activity_id=self._activity.id)

    def _timed_out(self, index: int) -> CommandOutcome:
        result = CommandResult(
            index=index, result="Error", event_date=utc_now(), is_batch_finished=True,
            message=f"batch timed out after {self._timeout:g}s; yagna cannot stop a batch, so "
                    "its command runs on until the activity ends")
        return CommandOutcome.of(result, None, FailureKind.TIMED_OUT)

    async def cancel(self) -> bool:
        # yagna's REST API cannot stop a batch: only ending its activity does.
        return False


def _with_env(command: Command) -> Command:
    """yagna drops ``run``'s ``env`` (its model has none): pass it through ``/usr/bin/env``."""
    if isinstance(command, Run) and command.env:
        assignments = tuple(f"{k}={v}" for k, v in command.env.items())
        return Run("/usr/bin/env", (*assignments, command.entry_point, *command.args),
                   capture=command.capture)
    return command


class Yagna:
    """A backend on a yagna daemon (see the module docstring for its settings)."""

    name = "yagna"
    startup_timeout = 30.0
    capabilities = Capabilities(cheap_events=False, batch_cancel=False)

    def __init__(self, *, api_url: str | None = None, appkey: str | None = None,
                 gsb_url: str | None = None, subnet: str | None = None,
                 payment_network: str | None = None, payment_driver: str | None = None,
                 allocation_term: timedelta = timedelta(hours=1),
                 registry_url: str | None = None):
        env = os.environ
        self.api_url = api_url or env.get("YAGNA_API_URL") or "http://127.0.0.1:7465"
        appkey = appkey or env.get("YAGNA_APPKEY")
        if not appkey:
            raise ValueError("the yagna backend needs an app key: set YAGNA_APPKEY (or pass "
                             "appkey=...); 'workgen devnet up' writes one to its devnet.env")
        self._appkey = appkey
        self.gsb_url = gsb_url or env.get("GSB_URL") or "tcp://127.0.0.1:7464"
        self.subnet = subnet or env.get("YAGNA_SUBNET") or "public"
        network = payment_network or env.get("YAGNA_PAYMENT_NETWORK") or "holesky"
        driver = payment_driver or env.get("YAGNA_PAYMENT_DRIVER") or "erc20"
        self.platform = f"{driver}-{network}-tglm"
        self._api: YagnaApi | None = None
        self._stack = contextlib.AsyncExitStack()
        self._bus: GsbClient | None = None
        self._storage: GftpStorage | None = None
        self.node_id = ""
        self._started = False
        self.allocation_term = allocation_term
        self.registry_url = (registry_url or env.get("GOLEM_REGISTRY_URL")
                             or "https://registry.golem.network").rstrip("/")
        self._expires: dict[str, datetime] = {}
        self._errors = _ActivityErrors()
        self._routes: dict[str, ExeUnitRoute] = {}  # by activity id, while it lives

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._api = YagnaApi(self.api_url, self._appkey)
        self._stack.push_async_callback(self._api.aclose)
        try:
            me = await self._api.get("/me")
            self.node_id = me["identity"]
            try:
                self._bus = await self._stack.enter_async_context(
                    open_gsb(self.gsb_url, name="workgen-requestor"))
            except (OSError, GsbError) as exc:
                raise BackendUnavailable(f"cannot reach the daemon's GSB at {self.gsb_url} "
                                         f"(set GSB_URL): {exc}") from exc
            directory = Path(tempfile.mkdtemp(prefix="workgen-yagna-"))
            self._stack.callback(shutil.rmtree, directory, True)
            self._storage = GftpStorage(self._bus, self.node_id, directory)
        except BaseException:
            await self._stack.aclose()
            raise
        self._started = True

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._started = False

    @property
    def api(self) -> YagnaApi:
        if self._api is None:
            raise RuntimeError("the yagna backend is not started")
        return self._api

    @property
    def storage(self) -> GftpStorage:
        if self._storage is None:
            raise RuntimeError("the yagna backend is not started")
        return self._storage

    # -- payment ----------------------------------------------------------------------------

    async def create_allocation(self, amount: Decimal) -> Allocation:
        expires = datetime.now(timezone.utc) + self.allocation_term
        doc = await self.api.post("/payment-api/v1/allocations", json={
            "address": self.node_id, "paymentPlatform": self.platform,
            "totalAmount": str(amount), "makeDeposit": False, "timeout": _iso(expires)})
        self._expires[doc["allocationId"]] = expires
        return Allocation(id=doc["allocationId"], total_amount=amount,
                          payment_platform=self.platform, address=self.node_id)

    async def _keep_allocation(self, allocation: Allocation) -> None:
        """Pushes the allocation's timeout back once half of its term has passed.

        Payments keep flowing during a job (a debit note every few seconds or minutes), so
        renewing as they are accepted keeps the allocation alive for as long as the job runs,
        without a timer of its own.
        """
        expires = self._expires.get(allocation.id)
        now = datetime.now(timezone.utc)
        if expires is None or expires - now > self.allocation_term / 2:
            return
        expires = now + self.allocation_term
        try:
            await self.api.request("PUT", f"/payment-api/v1/allocations/{allocation.id}",
                                   json={"timeout": _iso(expires)})
        except ApiError as exc:
            if exc.status == 404:
                raise PaymentError(f"allocation {allocation.id} expired before it could be "
                                   "renewed; no more payments can be made from it") from exc
            raise
        self._expires[allocation.id] = expires
        log.info("allocation %s renewed until %s", allocation.id, _iso(expires))

    async def release_allocation(self, allocation: Allocation) -> None:
        await self.api.delete(f"/payment-api/v1/allocations/{allocation.id}", ok=(404, 410))

    async def demand_decoration(self, allocation: Allocation) -> Demand:
        doc = await self.api.get("/payment-api/v1/demandDecorations",
                                 params={"allocationIds": allocation.id})
        properties: dict[str, object] = {p["key"]: p["value"] for p in doc.get("properties", [])}
        properties[COM_PAYMENT_CHOSEN_PLATFORM] = allocation.payment_platform
        constraints = doc.get("constraints", [])
        return Demand(properties=properties,
                      constraints="(&" + "".join(constraints) + ")" if constraints else "")

    async def payment_events(self) -> AsyncIterator[PaymentEvent]:
        """Debit notes and invoices as the daemon receives them. The two kinds are polled
        apart, so one kind's long poll never holds the other's events back (an invoice must
        not wait for the debit notes' poll to time out)."""
        queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        start = _iso()

        async def pump(path: str) -> None:
            after = start
            try:
                while True:
                    events = await self.api.get(path, params={"afterTimestamp": after},
                                                poll=POLL) or []
                    for event in sorted(events, key=lambda e: e.get("eventDate", "")):
                        after = max(after, event.get("eventDate", after))
                        queue.put_nowait(event)
            except Exception as exc:
                queue.put_nowait(exc)

        pumps = [asyncio.create_task(pump(f"/payment-api/v1/{kind}Events"))
                 for kind in ("debitNote", "invoice")]
        try:
            while True:
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                if event.get("eventType") == "DebitNoteReceivedEvent":
                    doc = await self.api.get(f"/payment-api/v1/debitNotes/{event['debitNoteId']}")
                    yield DebitNote(
                        id=doc["debitNoteId"], agreement_id=doc["agreementId"],
                        activity_id=doc.get("activityId"),
                        total_amount_due=Decimal(doc["totalAmountDue"]),
                        usage_counter_vector=tuple(doc["usageCounterVector"])
                        if doc.get("usageCounterVector") is not None else None,
                        issuer_id=doc.get("issuerId", ""))
                elif event.get("eventType") == "InvoiceReceivedEvent":
                    doc = await self.api.get(f"/payment-api/v1/invoices/{event['invoiceId']}")
                    yield Invoice(id=doc["invoiceId"], agreement_id=doc["agreementId"],
                                  activity_ids=tuple(doc.get("activityIds") or ()),
                                  amount=Decimal(doc["amount"]), issuer_id=doc.get("issuerId", ""))
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def accept_debit_note(self, note: DebitNote, allocation: Allocation) -> None:
        await self._keep_allocation(allocation)
        await self.api.post(f"/payment-api/v1/debitNotes/{note.id}/accept", json={
            "totalAmountAccepted": str(note.total_amount_due), "allocationId": allocation.id})

    async def reject_debit_note(self, note: DebitNote, reason: str) -> None:
        await self.api.post(f"/payment-api/v1/debitNotes/{note.id}/reject", json={
            "rejectionReason": "UnsolicitedService", "totalAmountAccepted": "0",
            "message": reason}, ok=(400, 404, 501))

    async def accept_invoice(self, invoice: Invoice, allocation: Allocation) -> None:
        await self._keep_allocation(allocation)
        try:
            await self.api.post(f"/payment-api/v1/invoices/{invoice.id}/accept", json={
                "totalAmountAccepted": str(invoice.amount), "allocationId": allocation.id})
        except ApiError as exc:
            # Whether the allocation is short is a number the daemon keeps, not its wording.
            if await self._remaining(allocation) < invoice.amount:
                raise BudgetExhausted(f"allocation {allocation.id} cannot pay invoice "
                                      f"{invoice.id} for {invoice.amount}") from exc
            raise

    async def _remaining(self, allocation: Allocation) -> Decimal:
        doc = await self.api.get(f"/payment-api/v1/allocations/{allocation.id}", ok=(404,))
        if not isinstance(doc, dict):
            return Decimal(0)  # gone: it can pay nothing
        return Decimal(str(doc.get("remainingAmount", "0")))

    async def reject_invoice(self, invoice: Invoice, reason: str) -> None:
        await self.api.post(f"/payment-api/v1/invoices/{invoice.id}/reject", json={
            "rejectionReason": "UnsolicitedService", "totalAmountAccepted": "0",
            "message": reason}, ok=(400, 404, 501))

    # -- market -----------------------------------------------------------------------------

    async def subscribe_demand(self, demand: Demand) -> _Subscription:
        demand = await self._resolve_image(demand)
        sub_id = await self.api.post("/market-api/v1/demands", json=_demand_doc(demand))
        return _Subscription(self.api, demand, sub_id)

    async def _resolve_image(self, demand: Demand) -> Demand:
        """Turns the payload's image into what providers download, as the other SDKs do.

        A tag is looked up in the Golem image registry (``GET /v1/image/info?tag=``): its
        ``sha3`` and ``http`` link make ``golem.srv.comp.task_package``. A hash without a link
        gets its link the same way (``?hash=``); if the registry can't be reached, the hash goes
        through alone (providers that hold images locally, as the devnet's, still run it).
        """
        props = dict(demand.properties)
        tag = props.pop(SRV_COMP_VM_IMAGE_TAG, None)
        package = props.get(SRV_COMP_TASK_PACKAGE)
        if tag is None and not (isinstance(package, str) and package.endswith(":")):
            return demand
        if tag is not None:
            info = await self._registry({"tag": str(tag)}, f"tag {tag}", required=True)
            assert info is not None
            props[SRV_COMP_TASK_PACKAGE] = f"hash:sha3:{info['sha3']}:{info['http']}"
            props.setdefault(SRV_COMP_VM_PACKAGE_FORMAT, "gvmkit-squash")
        else:
            image_hash = str(package).split(":")[2]
            info = await self._registry({"hash": image_hash}, f"hash {image_hash}",
                                        required=False)
            if info is not None:
                props[SRV_COMP_TASK_PACKAGE] = f"hash:sha3:{image_hash}:{info['http']}"
        return Demand(properties=props, constraints=demand.constraints)

    async def _registry(self, params: dict[str, str], what: str,
                        required: bool) -> dict[str, Any] | None:
        url = f"{self.registry_url}/v1/image/info"
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                response = await client.get(url, params=params)
        except httpx.HTTPError as exc:
            if not required:
                log.warning("the image registry at %s is unreachable (%s); passing the image "
                            "hash on without a download link", self.registry_url, exc)
                return None
            raise ImageNotFound(f"cannot resolve image {what}: the image registry at "
                                f"{self.registry_url} is unreachable ({exc!r}); give "
                                "image_hash and image_url instead, or set "
                                "GOLEM_REGISTRY_URL") from exc
        if response.status_code == 404:
            raise ImageNotFound(f"the image registry at {self.registry_url} has no image "
                                f"{what}")
        if response.status_code >= 400:
            raise ImageNotFound(f"the image registry at {self.registry_url} failed to resolve "
                                f"{what}: HTTP {response.status_code}")
        info: dict[str, Any] = response.json()
        return info

    async def counter_proposal(self, subscription: Any, proposal: Proposal,
                               demand: Demand) -> None:
        # The image as the subscription resolved it: a tag means nothing to providers.
        resolved = subscription.demand.properties
        props = {k: v for k, v in demand.properties.items() if k not in _IMAGE_KEYS}
        props |= {k: v for k, v in resolved.items() if k in _IMAGE_KEYS}
        demand = Demand(properties=props, constraints=demand.constraints)
        try:
            counter_id = await self.api.post(f"/market-api/v1/demands/{subscription.id}/"
                                             f"proposals/{proposal.id}", json=_demand_doc(demand))
        except ApiError as exc:
            # The offer went away meanwhile (its provider took another demand, or re-offered):
            # not a refusal for good, and the market must hear of it, or it would wait on
            # that provider's answer.
            log.info("countering %s failed: %s", proposal.provider_name, exc)
            if isinstance(subscription, _Subscription):
                subscription.local.append(ProposalRejectedEvent(
                    proposal_id=proposal.id, issuer_id=proposal.issuer_id,
                    reason=f"the counter-proposal could not be sent: HTTP {exc.status}",
                    final=False))
            return
        if isinstance(counter_id, str) and isinstance(subscription, _Subscription):
            countered = subscription.countered
            countered[counter_id] = proposal.issuer_id
            if len(countered) > 10_000:  # a long job answers many offers: keep the newest
                del countered[next(iter(countered))]

    async def reject_proposal(self, subscription: Any, proposal: Proposal, reason: str) -> None:
        await self.api.post(f"/market-api/v1/demands/{subscription.id}/proposals/{proposal.id}"
                            "/reject", json={"message": reason}, ok=(400, 404, 410))

    async def make_agreement(self, proposal: Proposal, valid_to: datetime) -> Agreement:
        demand = Demand(properties={}, constraints="")
        try:
            agreement_id = await self.api.post("/market-api/v1/agreements", json={
                "proposalId": proposal.id, "validTo": _iso(valid_to)})
            await self.api.post(f"/market-api/v1/agreements/{agreement_id}/confirm")
            await self.api.post(f"/market-api/v1/agreements/{agreement_id}/wait",
                                params={"timeout": 30}, poll=30)
            doc = await self.api.get(f"/market-api/v1/agreements/{agreement_id}")
        except ApiError as exc:
            raise AgreementRejected(f"{proposal.provider_name} did not approve: {exc}",
                                    provider_id=proposal.issuer_id) from exc
        if doc.get("state") != "Approved":
            raise AgreementRejected(f"{proposal.provider_name} did not approve "
                                    f"(agreement {doc.get('state')})",
                                    provider_id=proposal.issuer_id)
        requested = doc.get("demand") or {}
        demand = Demand(properties=flatten_properties(requested.get("properties") or {}),
                        constraints=requested.get("constraints") or "")
        return Agreement(id=agreement_id, proposal=proposal, demand=demand, valid_to=valid_to)

    async def terminate_agreement(self, agreement: Agreement, reason: str) -> None:
        try:
            # The daemon waits for the provider's answer, which a provider that went away
            # never gives: it ends the agreement itself then (no activity, no acceptances).
            async with asyncio.timeout(TERMINATE_TIMEOUT):
                await self.api.post(f"/market-api/v1/agreements/{agreement.id}/terminate",
                                    json={"message": reason}, ok=(409, 410))
        except TimeoutError:
            raise BackendError(f"{agreement.provider_name} did not confirm the end of agreement "
                               f"{agreement.id} within {TERMINATE_TIMEOUT:g}s") from None

    # -- activity ---------------------------------------------------------------------------

    async def create_activity(self, agreement: Agreement) -> Activity:
        try:
            answer = await self.api.post("/activity-api/v1/activity",
                                         json={"agreementId": agreement.id},
                                         params={"timeout": 30})
        except ApiError as exc:
            raise ActivityLost(f"{agreement.provider_name} could not create an activity: "
                               f"{exc}") from exc
        activity_id = answer if isinstance(answer, str) else answer["activityId"]
        if self._bus is not None:
            self._routes[activity_id] = ExeUnitRoute(self._bus, self.node_id,
                                                     agreement.provider_id, activity_id)
            if len(self._routes) > _ActivityErrors.KEEP:  # never destroyed: forget the oldest
                del self._routes[next(iter(self._routes))]
        return Activity(id=activity_id, agreement_id=agreement.id)

    async def exec(self, activity: Activity, commands: Sequence[Command],
                   timeout: float | None) -> _Batch:
        script = batch_to_json([_with_env(c) for c in commands])
        route = self._routes.get(activity.id)
        try:
            if route is not None:
                batch_id = await route.exec(script)
            else:
                batch_id = await self.api.post(f"/activity-api/v1/activity/{activity.id}/exec",
                                               json={"text": json.dumps(script)})
        except ApiError as exc:
            raise self._errors.of(activity, exc.status) from exc
        except ControlError as exc:
            raise self._errors.of(activity, exc.status, exc.detail) from exc
        return _Batch(self.api, self._errors, activity, batch_id, len(commands), timeout, route)

    async def activity_state(self, activity: Activity) -> str:
        try:
            doc = await self.api.get(f"/activity-api/v1/activity/{activity.id}/state")
        except ApiError as exc:
            raise self._errors.of(activity, exc.status) from exc
        return str(doc["state"][0])

    async def activity_usage(self, activity: Activity) -> dict[str, float]:
        try:
            doc = await self.api.get(f"/activity-api/v1/activity/{activity.id}/usage")
            agreement = await self.api.get(f"/activity-api/v1/activity/{activity.id}/agreement")
            offer = flatten_properties(((await self.api.get(
                f"/market-api/v1/agreements/{agreement}")).get("offer") or {}).get(
                    "properties") or {})
        except ApiError as exc:
            raise self._errors.of(activity, exc.status) from exc
        names = offer.get("golem.com.usage.vector")
        values = doc.get("currentUsage") or []
        if not isinstance(names, list):
            return {}
        return {str(n): float(v) for n, v in zip(names, values, strict=False)}

    async def destroy_activity(self, activity: Activity) -> None:
        self._errors.destroyed(activity)
        self._routes.pop(activity.id, None)
        await self.api.delete(f"/activity-api/v1/activity/{activity.id}", ok=(404, 410),
                              params={"timeout": 10})
