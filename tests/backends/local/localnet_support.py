"""Helpers for the local network's tests: demands, negotiation and a ready activity."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal

from workgen.backends.base import (
    Activity, Agreement, Allocation, Demand, DemandSubscription, MarketEvent, Proposal,
)
from workgen.backends.local import LocalNetwork
from workgen.protocol.exescript import AtEnd, Capture, Deploy, Run, Start
from workgen.protocol.results import utc_now

STR = Capture(stdout=AtEnd(format="str"), stderr=AtEnd(format="str"))


def sh(script: str, capture: Capture = STR) -> Run:
    return Run("/bin/sh", ("-c", script), capture=capture)


def make_demand(decoration: Demand | None = None, constraints: str = "",
                props: Mapping[str, object] | None = None) -> Demand:
    """A proper demand: not expired, on the public subnet, paid as ``decoration`` says."""
    properties: dict[str, object] = {
        "golem.srv.comp.expiration": int(time.time() * 1000) + 3_600_000,
        "golem.node.debug.subnet": "public",
    }
    clauses = "(golem.runtime.name=vm)" + constraints
    if decoration is not None:
        properties.update(decoration.properties)
        clauses += decoration.constraints
    properties.update(props or {})
    return Demand(properties=properties, constraints=f"(&{clauses})")


def with_props(demand: Demand, props: Mapping[str, object]) -> Demand:
    return Demand({**demand.properties, **props}, demand.constraints)


async def drain(sub: DemandSubscription) -> list[MarketEvent]:
    """Everything delivered to ``sub`` so far (closes it)."""
    await sub.aclose()
    return [event async for event in sub]


async def next_answer(sub: DemandSubscription) -> MarketEvent:
    """The next Draft or rejection on ``sub``, skipping Initial proposals."""
    async for event in sub:
        if not (isinstance(event, Proposal) and event.state == "Initial"):
            return event
    raise AssertionError("the subscription ended")


async def first_draft(net: LocalNetwork, demand: Demand) -> tuple[DemandSubscription, Proposal]:
    sub = await net.subscribe_demand(demand)
    initial = await anext(aiter(sub))
    assert isinstance(initial, Proposal) and initial.state == "Initial"
    await net.counter_proposal(sub, initial, demand)
    draft = await next_answer(sub)
    assert isinstance(draft, Proposal) and draft.state == "Draft", draft
    return sub, draft


async def agreement_on(net: LocalNetwork, demand: Demand) -> Agreement:
    sub, draft = await first_draft(net, demand)
    await sub.aclose()
    return await net.make_agreement(draft, utc_now() + timedelta(hours=1))


async def paid_demand(net: LocalNetwork, amount: str = "10", constraints: str = "",
                      props: Mapping[str, object] | None = None) -> tuple[Allocation, Demand]:
    allocation = await net.create_allocation(Decimal(amount))
    decoration = await net.demand_decoration(allocation)
    return allocation, make_demand(decoration, constraints, props)


async def ready_activity(net: LocalNetwork, demand: Demand) -> tuple[Agreement, Activity]:
    agreement = await agreement_on(net, demand)
    activity = await net.create_activity(agreement)
    batch = await net.exec(activity, [Deploy(), Start()], timeout=30)
    results = await batch.results()
    assert [r.result for r in results] == ["Ok", "Ok"], results
    return agreement, activity
