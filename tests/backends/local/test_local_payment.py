"""Money on the local network: allocations, debit notes, invoices and the budget."""

from __future__ import annotations

from decimal import Decimal

import pytest

from localnet_support import paid_demand, ready_activity, sh
from workgen.backends.base import DebitNote, Invoice, PaymentEvent
from workgen.backends.local import PLATFORM, LocalNetwork, ProviderConfig
from workgen.errors import BudgetExhausted, PaymentError
from workgen.protocol.pricing import LinearPricing

DURATION, CPU = "golem.usage.duration_sec", "golem.usage.cpu_sec"


def priced(fixed: float) -> ProviderConfig:
    pricing = LinearPricing.from_prices({DURATION: 0.001, CPU: 0.01}, fixed=fixed)
    return ProviderConfig("priced", 1, 1.0, 4.0, pricing)


async def next_invoice(events: object) -> Invoice:
    async for event in events:  # type: ignore[attr-defined]
        if isinstance(event, Invoice):
            return event
    raise AssertionError("the payment events ended")


async def test_an_allocation_decorates_demands_with_the_local_platform() -> None:
    async with LocalNetwork(1) as net:
        allocation = await net.create_allocation(Decimal("5"))
        decoration = await net.demand_decoration(allocation)
    assert allocation.payment_platform == PLATFORM and allocation.total_amount == Decimal(5)
    address_property = f"golem.com.payment.platform.{PLATFORM}.address"
    assert decoration.properties == {address_property: allocation.address,
                                     "golem.com.payment.chosen-platform": PLATFORM}
    assert decoration.constraints == f"({address_property}=*)"
    assert allocation.address == net.ledger.address


async def test_debit_notes_arrive_every_interval_with_growing_amounts() -> None:
    async with LocalNetwork(1, debit_note_interval=0.2) as net:
        events = net.payment_events()
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        burn = await net.exec(activity, [sh("while :; do :; done")], 30)
        notes: list[DebitNote] = []
        async for event in events:
            assert isinstance(event, DebitNote)
            notes.append(event)
            if len(notes) == 3:
                break
        await burn.cancel()
        await net.terminate_agreement(agreement, "done")
    pricing = agreement.pricing
    amounts = [n.total_amount_due for n in notes]
    assert amounts == sorted(amounts) and amounts[0] < amounts[-1]
    for note in notes:
        assert note.agreement_id == agreement.id and note.activity_id == activity.id
        assert note.issuer_id == agreement.provider_id
        assert note.usage_counter_vector is not None
        assert note.total_amount_due == pricing.price_for_vector(note.usage_counter_vector)
    durations = [n.usage_counter_vector[0] for n in notes]  # type: ignore[index]
    assert all(0.1 < b - a < 1.0 for a, b in zip(durations, durations[1:], strict=False))
    assert notes[-1].usage_counter_vector[1] > 0  # type: ignore[index]


async def test_a_demand_may_ask_for_its_own_debit_note_interval() -> None:
    async with LocalNetwork(1, debit_note_interval=60) as net:
        events = net.payment_events()
        _, demand = await paid_demand(
            net, props={"golem.com.scheme.payu.debit-note.interval-sec?": 1})
        agreement, _ = await ready_activity(net, demand)
        note = await anext(events)
        await net.terminate_agreement(agreement, "done")
    assert isinstance(note, DebitNote)


async def test_terminating_sends_one_invoice_priced_on_the_final_usage() -> None:
    async with LocalNetwork([priced(fixed=0.5)]) as net:
        events = net.payment_events()
        _, demand = await paid_demand(net)
        agreement, first = await ready_activity(net, demand)
        await (await net.exec(first, [sh("echo work")], 30)).results()
        await net.destroy_activity(first)
        second = await net.create_activity(agreement)
        await net.terminate_agreement(agreement, "done")
        usages = [await net.activity_usage(a) for a in (first, second)]
    received: list[PaymentEvent] = [e async for e in events]
    invoices = [e for e in received if isinstance(e, Invoice)]
    assert len(invoices) == 1
    (invoice,) = invoices
    pricing = agreement.pricing
    # The fixed price is charged once per activity, as Golem's linear model does.
    assert invoice.amount == sum((pricing.price_for(u) for u in usages), Decimal(0))
    assert invoice.amount > Decimal("1.0")
    assert invoice.activity_ids == (first.id, second.id)
    assert invoice.agreement_id == agreement.id and invoice.issuer_id == agreement.provider_id


async def test_accepting_an_invoice_pays_it_from_the_allocation() -> None:
    async with LocalNetwork([priced(fixed=0.5)]) as net:
        events = net.payment_events()
        allocation, demand = await paid_demand(net, amount="2")
        agreement, _ = await ready_activity(net, demand)
        await net.terminate_agreement(agreement, "done")
        invoice = await next_invoice(events)
        await net.accept_invoice(invoice, allocation)
        await net.accept_invoice(invoice, allocation)  # accepting again pays nothing more
        ledger = net.ledger
        assert ledger.spent_from(allocation) == invoice.amount == ledger.spent
        assert ledger.remaining_in(allocation) == Decimal(2) - invoice.amount == ledger.remaining
        (payment,) = ledger.payments
        assert (payment.invoice_id, payment.payee, payment.amount) == (
            invoice.id, agreement.provider_id, invoice.amount)
        await net.release_allocation(allocation)
        assert ledger.remaining_in(allocation) == 0 == ledger.remaining


async def test_an_invoice_over_the_remaining_allocation_raises_and_pays_nothing() -> None:
    async with LocalNetwork([priced(fixed=1.0)]) as net:
        events = net.payment_events()
        allocation, demand = await paid_demand(net, amount="0.5")
        agreement, _ = await ready_activity(net, demand)
        await net.terminate_agreement(agreement, "done")
        invoice = await next_invoice(events)
        with pytest.raises(BudgetExhausted, match="nothing was paid"):
            await net.accept_invoice(invoice, allocation)
        assert net.ledger.payments == [] and net.ledger.spent_from(allocation) == 0
        assert net.ledger.remaining_in(allocation) == Decimal("0.5")
        await net.release_allocation(allocation)
        with pytest.raises(PaymentError):
            await net.accept_invoice(invoice, allocation)


async def test_rejecting_a_debit_note_makes_the_provider_end_the_agreement() -> None:
    async with LocalNetwork(1, debit_note_interval=0.2) as net:
        events = net.payment_events()
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        note = await anext(events)
        assert isinstance(note, DebitNote)
        await net.reject_debit_note(note, "too expensive")
        invoice = await next_invoice(events)
        (provider,) = net.providers
        state = provider.agreements[agreement.id]
        assert invoice.agreement_id == agreement.id and invoice.activity_ids == (activity.id,)
        assert state.state == "Terminated" and "too expensive" in (state.reason or "")
        assert await net.activity_state(activity) == "Terminated"
        assert list(net.ledger.rejected_debit_notes) == [(note, "too expensive")]


async def test_accepted_debit_notes_and_rejected_invoices_are_recorded() -> None:
    async with LocalNetwork(1, debit_note_interval=0.2) as net:
        events = net.payment_events()
        allocation, demand = await paid_demand(net)
        agreement, _ = await ready_activity(net, demand)
        note = await anext(events)
        assert isinstance(note, DebitNote)
        await net.accept_debit_note(note, allocation)
        await net.terminate_agreement(agreement, "done")
        invoice = await next_invoice(events)
        await net.reject_invoice(invoice, "disputed")
        with pytest.raises(ValueError, match="rejected"):
            await net.accept_invoice(invoice, allocation)
    assert list(net.ledger.accepted_debit_notes) == [(note, allocation.id)]
    assert list(net.ledger.rejected_invoices) == [(invoice, "disputed")]
    assert net.ledger.payments == []


async def test_a_negative_allocation_is_refused() -> None:
    net = LocalNetwork(1)
    with pytest.raises(ValueError):
        await net.create_allocation(Decimal(-1))
    await net.aclose()
