"""How the local network's providers reach it: the in-process :class:`~workgen.provider.agent.AgentLink`.

Each provider is a :class:`~workgen.provider.agent.ProviderAgent`, the same agent that serves a
yagna node; its link publishes offers on the network's market, sends debit notes and invoices
down the network's payment channel and runs the agent's background work (agreements, activities)
as tasks of the network's task group, so the network's shutdown reaches them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from ..base import DebitNote, Invoice
from ...provider.agent import (
    AgentActivity, AgentAgreement, DebitNoteDraft, InvoiceDraft, OfferSpec,
)
from .activity import ActivityRecord
from .market import Market, Offer, new_id
from .payments import PaymentChannel


@dataclass
class LocalLink:
    """One provider's link to its local network."""

    node_id: str
    market: Market
    payments: PaymentChannel
    spawn_task: Callable[[Coroutine[Any, Any, None], str], None]
    running: Callable[[], bool]
    records: Mapping[str, ActivityRecord]
    """The network's activities, whose batch streams end when their activity closes."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.spawn_task(coro, name)

    async def publish(self, offer: OfferSpec | None) -> None:
        self.market.withdraw(self.node_id)
        if offer is not None and self.running():
            self.market.publish(Offer(new_id(), self.node_id, offer.properties,
                                      offer.constraints, offer.constraint))

    async def approve(self, agreement: AgentAgreement) -> None:
        """Nothing to confirm: the network checked the offer before it asked the agent."""

    async def send_debit_note(self, note: DebitNoteDraft) -> str | None:
        document = DebitNote(
            id=new_id(), agreement_id=note.agreement_id, activity_id=note.activity_id,
            total_amount_due=note.amount, usage_counter_vector=note.usage_vector,
            issuer_id=self.node_id)
        self.payments.emit(document)
        return document.id

    async def debit_note_status(self, note_id: str) -> str | None:
        return self.payments.debit_note_status(note_id)

    async def send_invoice(self, invoice: InvoiceDraft) -> None:
        self.payments.emit(Invoice(
            id=new_id(), agreement_id=invoice.agreement_id, activity_ids=invoice.activity_ids,
            amount=invoice.amount, issuer_id=self.node_id))

    async def break_agreement(self, agreement: AgentAgreement, reason: dict[str, str]) -> None:
        """The requestor learns it from its activities (ended by the provider) and the
        invoice; nothing else to send."""

    async def activity_started(self, activity: AgentActivity) -> None:
        pass

    async def activity_closing(self, activity: AgentActivity) -> None:
        # A consumer that stopped reading a batch's events would hold its batch (and so the
        # unit's shutdown) back; the activity is going, so its event streams end here.
        record = self.records.get(activity.id)
        if record is not None:
            await record.detach_batches()

    async def activity_ended(self, activity: AgentActivity) -> None:
        pass
