"""A requestor written directly against yagna's REST API, in the call order of the real SDKs.

It is test support: the point is to drive the Python provider the way yapapi and golem-js do
(allocation, demand decorations, demand, negotiation, agreement, activity, exec, results by
long poll and by SSE, debit notes, invoice, teardown), with nothing of workgen's requestor.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

PLATFORM = "erc20-holesky-tglm"


def iso(delta_s: float = 0) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=delta_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RestRequestor:
    def __init__(self, api_url: str, appkey: str):
        self.http = httpx.AsyncClient(base_url=api_url,
                                      headers={"Authorization": f"Bearer {appkey}"}, timeout=60)
        self.node_id = ""
        self.allocation_id = ""
        self._pending: list[dict[str, Any]] = []

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, body: Any = None, *, expect: int | None = None,
                   **params: Any) -> Any:
        response = await self.http.request(method, path, json=body, params=params or None)
        if expect is not None:
            assert response.status_code == expect, (method, path, response.status_code,
                                                    response.text)
        elif response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    # -- payment and market ----------------------------------------------------------------

    async def allocate(self, amount: str = "1") -> str:
        self.node_id = (await self.call("GET", "/me"))["identity"]
        allocation = await self.call("POST", "/payment-api/v1/allocations", {
            "address": self.node_id, "paymentPlatform": PLATFORM, "totalAmount": amount,
            "timeout": iso(3600), "makeDeposit": False}, expect=201)
        self.allocation_id = allocation["allocationId"]
        return self.allocation_id

    async def demand(self, subnet: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        """Subscribe a demand; ``extra`` properties (by their names) join or replace ours."""
        decoration = await self.call("GET", "/payment-api/v1/demandDecorations",
                                     allocationIds=self.allocation_id)
        properties: dict[str, Any] = {
            "golem.node.debug.subnet": subnet,
            "golem.srv.comp.expiration": int(time.time() * 1000) + 1_800_000,
            "golem.com.scheme.payu.debit-note.interval-sec?": 1,
            "golem.com.payment.debit-notes.accept-timeout?": 240,
            "golem.com.payment.chosen-platform": PLATFORM,
        }
        properties.update({k.replace("__", "."): v for k, v in extra.items()})
        properties = {k: v for k, v in properties.items() if v is not None}
        for prop in decoration.get("properties", []):
            properties[prop["key"]] = prop["value"]
        clauses = [f"(golem.node.debug.subnet={subnet})", "(golem.runtime.name=vm)",
                   *decoration.get("constraints", [])]
        demand = {"properties": properties, "constraints": "(&" + "".join(clauses) + ")"}
        subscription = await self.call("POST", "/market-api/v1/demands", demand, expect=201)
        return subscription, demand

    async def next_proposal(self, subscription: str, state: str) -> dict[str, Any]:
        """The next proposal in ``state``; others that arrive meanwhile are kept for later."""
        while True:
            for i, event in enumerate(self._pending):
                if event.get("eventType") == "ProposalEvent" and \
                        event["proposal"]["state"] == state:
                    del self._pending[i]
                    return dict(event["proposal"])
            self._pending += await self.call(
                "GET", f"/market-api/v1/demands/{subscription}/events", timeout=5,
                maxEvents=10) or []

    async def agree(self, subscription: str, demand: dict[str, Any]) -> str:
        offer = await self.next_proposal(subscription, "Initial")
        await self.call("POST", f"/market-api/v1/demands/{subscription}/proposals/"
                                f"{offer['proposalId']}", demand)
        draft = await self.next_proposal(subscription, "Draft")
        agreement: str = await self.call("POST", "/market-api/v1/agreements",
                                         {"proposalId": draft["proposalId"],
                                          "validTo": iso(3600)})
        await self.call("POST", f"/market-api/v1/agreements/{agreement}/confirm", expect=204)
        await self.call("POST", f"/market-api/v1/agreements/{agreement}/wait", expect=204,
                        timeout=30)
        return agreement

    # -- activity --------------------------------------------------------------------------

    async def create_activity(self, agreement: str) -> str:
        answer = await self.call("POST", "/activity-api/v1/activity", {"agreementId": agreement},
                                 timeout=30)
        return answer if isinstance(answer, str) else str(answer["activityId"])

    async def exec(self, activity: str, script: list[dict[str, Any]]) -> str:
        batch: str = await self.call("POST", f"/activity-api/v1/activity/{activity}/exec",
                                     {"text": json.dumps(script)})
        return batch

    async def results(self, activity: str, batch: str, last: int) -> list[dict[str, Any]]:
        """Long poll until command ``last`` has finished (or the batch failed earlier)."""
        while True:
            results = await self.call("GET", f"/activity-api/v1/activity/{activity}/exec/{batch}",
                                      pollTimeout=5, commandIndex=last, timeout=5)
            if results and (results[-1]["isBatchFinished"] or results[-1]["index"] >= last):
                return list(results)

    async def events(self, activity: str, batch: str) -> AsyncIterator[dict[str, Any]]:
        """The batch's runtime events over SSE, until the batch finishes."""
        path = f"/activity-api/v1/activity/{activity}/exec/{batch}"
        async with self.http.stream("GET", path, headers={"Accept": "text/event-stream"},
                                    timeout=None) as response:
            assert response.status_code == 200, response.status_code
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    async def destroy(self, activity: str) -> None:
        await self.call("DELETE", f"/activity-api/v1/activity/{activity}", timeout=10)

    async def terminated(self, agreement: str, after: str) -> dict[str, Any]:
        """The agreement's termination event, waited for."""
        while True:
            events = await self.call("GET", "/market-api/v1/agreementEvents",
                                     afterTimestamp=after, timeout=5) or []
            for event in events:
                after = event.get("eventDate", after)
                if event.get("agreementId") == agreement and \
                        event.get("eventType") == "AgreementTerminatedEvent":
                    return dict(event)

    async def next_debit_note(self, after: str) -> dict[str, Any]:
        """The next debit note received (not accepted)."""
        while True:
            events = await self.call("GET", "/payment-api/v1/debitNoteEvents",
                                     afterTimestamp=after, timeout=5) or []
            for event in events:
                if event.get("eventType") == "DebitNoteReceivedEvent":
                    return dict(await self.call(
                        "GET", f"/payment-api/v1/debitNotes/{event['debitNoteId']}"))

    # -- payment events --------------------------------------------------------------------

    async def accept_debit_note(self, after: str) -> dict[str, Any]:
        while True:
            events = await self.call("GET", "/payment-api/v1/debitNoteEvents",
                                     afterTimestamp=after, timeout=5) or []
            for event in events:
                if event.get("eventType") == "DebitNoteReceivedEvent":
                    note = await self.call("GET",
                                           f"/payment-api/v1/debitNotes/{event['debitNoteId']}")
                    await self.call("POST", f"/payment-api/v1/debitNotes/{note['debitNoteId']}"
                                            "/accept",
                                    {"totalAmountAccepted": note["totalAmountDue"],
                                     "allocationId": self.allocation_id})
                    return dict(note)

    async def accept_invoice(self, after: str, agreement: str) -> dict[str, Any]:
        while True:
            events = await self.call("GET", "/payment-api/v1/invoiceEvents",
                                     afterTimestamp=after, timeout=5) or []
            for event in events:
                if event.get("eventType") == "InvoiceReceivedEvent":
                    invoice = await self.call("GET",
                                              f"/payment-api/v1/invoices/{event['invoiceId']}")
                    if invoice["agreementId"] != agreement:
                        continue
                    await self.call("POST", f"/payment-api/v1/invoices/{invoice['invoiceId']}"
                                            "/accept",
                                    {"totalAmountAccepted": invoice["amount"],
                                     "allocationId": self.allocation_id})
                    return dict(invoice)
