"""The local network's records stay bounded over a long run (a service's days): the market's
proposals, the debit notes of an agreement, the ledger's records of documents. What was let go
is refused by name, not as something that never existed."""

from __future__ import annotations

import gc
import tracemalloc
from decimal import Decimal

import pytest

from localnet_support import agreement_on, paid_demand, sh
from workgen.backends.base import Activity, Demand, DebitNote, Proposal
from workgen.backends.local import LocalNetwork, network
from workgen.backends.local.ledger import KEEP_RECORDS, Ledger
from workgen.backends.local.market import KEEP_PROPOSALS, Market, Offer, ParsedDemand
from workgen.backends.local.payments import KEEP_AGREEMENTS, KEEP_DEBIT_NOTES, PaymentChannel
from workgen.errors import ActivityClosed
from workgen.protocol.constraints import parse_constraints
from workgen.protocol.exescript import Deploy, Start


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _offer(n: int) -> Offer:
    properties = {"golem.runtime.name": "vm", "golem.inf.cpu.threads": 1, "n": n}
    return Offer(id=f"offer-{n}", provider_id="0xprovider", properties=properties,
                 constraints="(&)", constraint=parse_constraints("(&)"))


def test_a_provider_proposing_all_day_leaves_the_market_bounded() -> None:
    # A provider publishes its offer again each time it is free; each time, every open
    # subscription gets a proposal. The requestor answers the new ones, never the old.
    market = Market()
    sub = market.subscribe(ParsedDemand.parse(Demand(properties={},
                                                     constraints="(golem.runtime.name=vm)")))
    pushed = 0

    def answer_the_new_one(event: object) -> None:
        nonlocal pushed
        pushed += 1

    original = sub.push
    sub.push = answer_the_new_one  # type: ignore[method-assign,assignment]
    tracemalloc.start()
    try:
        for n in range(2 * KEEP_PROPOSALS + 100):  # past the proposals and the forgotten ids
            market.publish(_offer(n))
        proposals_kept = _heap()
        for n in range(2 * KEEP_PROPOSALS + 100, 6 * KEEP_PROPOSALS + 100):
            market.publish(_offer(n))
        growth = _heap() - proposals_kept
    finally:
        tracemalloc.stop()
        sub.push = original  # type: ignore[method-assign]
    assert pushed == 6 * KEEP_PROPOSALS + 100
    # A kept proposal costs over a kilobyte (its offer's properties, copied); what may seem to
    # remain is a hash table's fluctuation, spread over the window.
    assert growth < 64 * 4 * KEEP_PROPOSALS, \
        f"the market grew {growth} bytes over {4 * KEEP_PROPOSALS} proposals"


def test_a_proposal_older_than_the_kept_ones_is_refused_as_such() -> None:
    market = Market()
    sub = market.subscribe(ParsedDemand.parse(Demand(properties={}, constraints="(&)")))
    handed_out: list[Proposal] = []
    sub.push = handed_out.append  # type: ignore[method-assign,assignment]
    for n in range(KEEP_PROPOSALS + 1):
        market.publish(_offer(n))
    first, newest = handed_out[0], handed_out[-1]
    assert market.lookup(newest).offer.id == f"offer-{KEEP_PROPOSALS}"
    assert market.lookup(handed_out[1]).offer.id == "offer-1"
    with pytest.raises(ValueError, match=f"older than the last {KEEP_PROPOSALS}"):
        market.lookup(first)
    stranger = Proposal(id="elsewhere", issuer_id="0xprovider", properties={}, constraints="",
                        state="Initial")
    with pytest.raises(ValueError, match="did not come from this local network"):
        market.lookup(stranger)


def _note(agreement: str, n: int) -> DebitNote:
    return DebitNote(id=f"{agreement}-note-{n}", agreement_id=agreement, activity_id="act",
                     total_amount_due=Decimal(n) / 1000, usage_counter_vector=(float(n),),
                     issuer_id="0xprovider")


async def test_an_agreement_of_days_keeps_its_last_debit_notes_and_refuses_older_ones() -> None:
    ledger = Ledger()
    channel = PaymentChannel(ledger)
    events = channel.events()
    allocation = ledger.create_allocation(Decimal(1000))

    async def a_minute(n: int) -> None:
        # Each agreement's provider sends a note; the requestor reads it and accepts it.
        for agreement in ("agr-a", "agr-b"):
            channel.emit(_note(agreement, n))
            note = await anext(events)
            assert isinstance(note, DebitNote)
            channel.accept_debit_note(note, allocation)

    tracemalloc.start()
    try:
        for n in range(700):  # past every bounded record
            await a_minute(n)
        warm = _heap()
        for n in range(700, 1440):  # the rest of a day of one note a minute
            await a_minute(n)
        growth = _heap() - warm
    finally:
        tracemalloc.stop()
    assert growth < 100_000, f"the payment records grew {growth} bytes over 1480 debit notes"
    assert len(ledger.accepted_debit_notes) == KEEP_RECORDS
    last_note, paid_from = ledger.accepted_debit_notes[-1]
    assert (last_note.id, paid_from) == (_note("agr-b", 1439).id, allocation.id)
    # The latest notes of each agreement are known, with their status for the provider.
    assert channel.debit_note_status(_note("agr-a", 1439).id) == "ACCEPTED"
    assert channel.debit_note_status(_note("agr-a", 1440 - KEEP_DEBIT_NOTES).id) == "ACCEPTED"
    # An older one is refused as such: a later note covers it.
    old = _note("agr-a", 1440 - KEEP_DEBIT_NOTES - 1)
    assert channel.debit_note_status(old.id) is None
    with pytest.raises(ValueError, match=f"the last {KEEP_DEBIT_NOTES} notes of each"):
        channel.accept_debit_note(old, allocation)
    with pytest.raises(ValueError, match="not issued on this local network"):
        channel.accept_debit_note(_note("agr-c", 0), allocation)


async def test_thousands_of_short_agreements_leave_bounded_payment_records() -> None:
    ledger = Ledger()
    channel = PaymentChannel(ledger)
    events = channel.events()
    allocation = ledger.create_allocation(Decimal(1000))

    async def one_agreement(n: int) -> None:
        for k in range(3):
            channel.emit(_note(f"agr-{n}", k))
            note = await anext(events)
            assert isinstance(note, DebitNote)
            channel.accept_debit_note(note, allocation)

    tracemalloc.start()
    try:
        for n in range(KEEP_AGREEMENTS + 400):  # past every bounded record
            await one_agreement(n)
        warm = _heap()
        for n in range(KEEP_AGREEMENTS + 400, KEEP_AGREEMENTS + 3400):
            await one_agreement(n)
        growth = _heap() - warm
    finally:
        tracemalloc.stop()
    assert growth < 100_000, f"the payment records grew {growth} bytes over 3000 agreements"
    assert channel.debit_note_status(_note(f"agr-{KEEP_AGREEMENTS + 3399}", 2).id) == "ACCEPTED"
    # The agreement just before the last KEEP_AGREEMENTS ones: its notes were let go.
    with pytest.raises(ValueError, match="is no longer kept"):
        channel.accept_debit_note(_note("agr-3399", 2), allocation)


async def test_activity_after_activity_keeps_the_records_of_the_last_destroyed_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # One agreement, activity after activity (a service restarting its instance): the network
    # keeps the records of the last KEEP_DESTROYED destroyed activities, and the provider lets
    # go of a destroyed activity's batches; an older one is still answered as destroyed.
    monkeypatch.setattr(network, "KEEP_DESTROYED", 2)
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement = await agreement_on(net, demand)
        activities = []
        for n in range(5):
            activity = await net.create_activity(agreement)
            batch = await net.exec(activity, [Deploy(), Start(), sh(f"echo {n}")], timeout=30)
            assert (await batch.results())[-1].stdout == f"{n}\n"
            await net.destroy_activity(activity)
            activities.append(activity)
        (provider,) = net.providers
        held = provider.agreements[agreement.id].activities
        assert [held[a.id].unit.kept_batches for a in activities] == [0] * 5
        assert len(net._activities) == 2  # the last two destroyed; the others by id only
        first = activities[0]
        assert await net.activity_state(first) == "Terminated"
        with pytest.raises(ActivityClosed, match="was destroyed"):
            await net.exec(first, [sh("echo again")], timeout=30)
        await net.destroy_activity(first)  # again: nothing to do
        stranger = Activity(id="elsewhere", agreement_id=agreement.id)
        with pytest.raises(ValueError, match="not created on this local network"):
            await net.exec(stranger, [sh("echo")], timeout=30)
        await net.terminate_agreement(agreement, "done")
