"""The terms a requestor's counter-proposal names: the offer's debit-note acceptance deadline,
never shorter than a requestor can keep, and nothing when the offer names no usable one."""

from __future__ import annotations

import math

import pytest

from workgen.backends.base import Demand
from workgen.requestor.market import MIN_ACCEPT_TIMEOUT, counter_demand

ACCEPT = "golem.com.payment.debit-notes.accept-timeout?"
DEMAND = Demand(properties={"golem.node.debug.subnet": "s"}, constraints="(x=1)")


@pytest.mark.parametrize(("offered", "agreed"), [(240, 240), (30, 30), (90.5, 90.5),
                                                 (10, MIN_ACCEPT_TIMEOUT), (1.5, 30)])
def test_the_offered_deadline_is_taken_up_but_never_below_the_minimum(
        offered: float, agreed: float) -> None:
    counter = counter_demand(DEMAND, {ACCEPT: offered, "other": 1})
    assert counter.properties == {**DEMAND.properties, ACCEPT: agreed}
    assert counter.constraints == DEMAND.constraints
    assert ACCEPT not in DEMAND.properties  # the job's own demand is left as it was


@pytest.mark.parametrize("offered", [None, "240", True, 0, -5, math.nan, math.inf, [240]])
def test_an_offer_without_a_usable_deadline_gets_the_demand_as_it_is(offered: object) -> None:
    offer = {} if offered is None else {ACCEPT: offered}
    assert counter_demand(DEMAND, offer) is DEMAND
