"""Agreements on the local network: approval, one at a time per provider, re-offers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from localnet_support import (
    agreement_on, drain, first_draft, make_demand, next_answer, paid_demand,
)
from workgen.backends.base import Invoice, Proposal, ProposalRejectedEvent
from workgen.backends.local import LocalNetwork
from workgen.errors import AgreementRejected
from workgen.protocol.results import utc_now


async def test_an_agreement_is_approved_and_its_provider_stops_offering() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement = await agreement_on(net, demand)
        (provider,) = net.providers
        assert agreement.provider_id == provider.node_id
        assert provider.agreements[agreement.id].state == "Approved"
        assert agreement.pricing == provider.config.pricing
        assert await drain(await net.subscribe_demand(demand)) == []
        await net.terminate_agreement(agreement, "done")


async def test_a_second_agreement_with_a_busy_provider_is_rejected() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        sub_a, draft_a = await first_draft(net, demand)
        sub_b, draft_b = await first_draft(net, demand)
        valid_to = utc_now() + timedelta(hours=1)
        agreement = await net.make_agreement(draft_a, valid_to)
        with pytest.raises(AgreementRejected, match="busy") as caught:
            await net.make_agreement(draft_b, valid_to)
        assert caught.value.provider_id == draft_b.issuer_id
        await net.terminate_agreement(agreement, "done")
        # The provider is free again, but that Draft answered an offer it has since replaced.
        with pytest.raises(AgreementRejected, match="withdrawn"):
            await net.make_agreement(draft_b, valid_to)
        await sub_a.aclose()
        await sub_b.aclose()


async def test_an_agreement_needs_a_draft() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        sub = await net.subscribe_demand(demand)
        initial = await anext(aiter(sub))
        assert isinstance(initial, Proposal)
        with pytest.raises(ValueError, match="Draft"):
            await net.make_agreement(initial, utc_now() + timedelta(hours=1))
        await sub.aclose()


async def test_a_free_provider_reoffers_to_open_subscriptions() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        watcher = await net.subscribe_demand(demand)
        first = await anext(aiter(watcher))
        agreement = await agreement_on(net, demand)
        await net.terminate_agreement(agreement, "done")
        again = await anext(aiter(watcher))
        assert isinstance(first, Proposal) and isinstance(again, Proposal)
        assert again.state == "Initial" and again.issuer_id == first.issuer_id
        assert again.id != first.id
        # The re-offer can be negotiated and agreed on: a long job gets its provider back.
        await net.counter_proposal(watcher, again, demand)
        draft = await next_answer(watcher)
        assert isinstance(draft, Proposal) and draft.state == "Draft"
        second = await net.make_agreement(draft, utc_now() + timedelta(hours=1))
        await net.terminate_agreement(second, "done")
        await watcher.aclose()


async def test_terminating_twice_is_harmless_and_gives_one_invoice() -> None:
    async with LocalNetwork(1) as net:
        events = net.payment_events()
        _, demand = await paid_demand(net)
        agreement = await agreement_on(net, demand)
        await net.terminate_agreement(agreement, "done")
        await net.terminate_agreement(agreement, "done again")
    invoices = [e async for e in events if isinstance(e, Invoice)]
    assert len(invoices) == 1 and invoices[0].amount == 0 and invoices[0].activity_ids == ()


async def test_the_provider_ends_an_agreement_at_its_valid_to() -> None:
    async with LocalNetwork(1) as net:
        events = net.payment_events()
        _, demand = await paid_demand(net)
        sub, draft = await first_draft(net, demand)
        await sub.aclose()
        agreement = await net.make_agreement(draft, utc_now() + timedelta(seconds=0.3))
        invoice = await anext(events)
        (provider,) = net.providers
        state = provider.agreements[agreement.id]
    assert isinstance(invoice, Invoice) and invoice.agreement_id == agreement.id
    assert state.state == "Terminated" and "expired" in (state.reason or "")


async def test_an_agreement_without_a_live_activity_is_broken_by_its_provider() -> None:
    """The same agent as on yagna: no activity for the idle timeout ends the agreement, with
    ya-provider's reason, and the provider invoices (nothing) and offers again."""
    async with LocalNetwork(1, idle_agreement_timeout=0.3) as net:
        events = net.payment_events()
        _, demand = await paid_demand(net)
        agreement = await agreement_on(net, demand)
        invoice = await anext(events)
        (provider,) = net.providers
        state = provider.agreements[agreement.id]
        assert isinstance(invoice, Invoice) and invoice.amount == 0
        assert state.state == "Terminated" and state.reason == "No activity created within 0.3s"
        assert not provider.busy
        assert len(await drain(await net.subscribe_demand(demand))) == 1


async def test_a_busy_provider_s_refusal_is_not_final_and_a_bad_demand_s_is() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        sub, draft = await first_draft(net, demand)
        other = await net.subscribe_demand(demand)
        stale = await anext(aiter(other))
        agreement = await net.make_agreement(draft, utc_now() + timedelta(hours=1))
        # The provider is busy now: it refuses, for now only.
        await net.counter_proposal(other, stale, demand)
        busy = await next_answer(other)
        assert isinstance(busy, ProposalRejectedEvent) and not busy.final, busy
        await net.terminate_agreement(agreement, "done")
        # A demand it can never take (no payment platform) is refused for good.
        fresh = await net.subscribe_demand(demand)
        offer = await anext(aiter(fresh))
        await net.counter_proposal(fresh, offer, make_demand())
        refused = await next_answer(fresh)
        assert isinstance(refused, ProposalRejectedEvent) and refused.final, refused
        for s in (sub, other, fresh):
            await s.aclose()
