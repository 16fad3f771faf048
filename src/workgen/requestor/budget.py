"""Keeping a run within its budget, before the bills arrive.

Under Golem's linear pricing an activity's cost can only grow, and never faster than its
prices allow: at most ``fixed + rate * elapsed``, where ``rate`` prices one second of wall time
and one second of CPU time per offered thread. Each agreement holds a *reservation* from the
budget; work starts on it only while that bound, up to the end of the next task plus a margin,
stays within the reservation, and the reservation grows from the budget as long as the budget
lasts. The agreement's deadline (when the bound would pass the reservation) is enforced by the
engine, so no provider can bill beyond what was reserved and the reservations together never
exceed the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from decimal import Decimal

from ..protocol.pricing import LinearPricing
from ..protocol.properties import INF_CPU_THREADS, USAGE_CPU_SEC, USAGE_DURATION_SEC

log = logging.getLogger(__name__)

# Time allowed for ending an agreement (terminating it and receiving its invoice).
END_MARGIN_SEC = 1.0
# Reservations grow in steps of this many seconds of work, to keep the bookkeeping light.
STEP_SEC = 10.0


class Budget:
    def __init__(self, total: Decimal):
        if total < 0:
            raise ValueError(f"the budget must not be negative, got {total}")
        self.total = total
        self.reserved = Decimal(0)
        self.paid = Decimal(0)

    @property
    def free(self) -> Decimal:
        return self.total - self.reserved

    def reserve_for(self, terms: Mapping[str, object]) -> AgreementBudget | None:
        """A reservation for an agreement on a proposal's ``terms`` (its properties), or
        ``None`` if the budget can't start it or its pricing can't be bounded (not signed)."""
        try:
            pricing = LinearPricing.from_properties(terms)
        except ValueError:
            return None
        return self.open(pricing, dict(terms))

    def open(self, pricing: LinearPricing, properties: dict[str, object] | None = None
             ) -> AgreementBudget | None:
        """A reservation for a new agreement, or ``None`` if the budget can't even start it."""
        threads = (properties or {}).get(INF_CPU_THREADS, 1)
        rate = Decimal(0)
        for counter, price in pricing.prices.items():
            if counter == USAGE_DURATION_SEC:
                rate += price
            elif counter == USAGE_CPU_SEC:
                rate += price * Decimal(str(threads if isinstance(threads, (int, float)) else 1))
            else:
                # A counter we can't bound by time: assume one unit per second, and say so.
                log.warning("usage counter %s has no known bound; assuming 1 per second", counter)
                rate += price
        ab = AgreementBudget(self, pricing.fixed_price, rate)
        if not ab.ensure(END_MARGIN_SEC):
            ab.close(Decimal(0))
            return None
        return ab


class AgreementBudget:
    """The share of the budget one agreement (with one activity) may use."""

    def __init__(self, budget: Budget, fixed: Decimal, rate: Decimal):
        self._budget = budget
        self.fixed = fixed
        self.rate = rate
        self.reserved = Decimal(0)
        self.started = time.monotonic()
        self._closed = False

    def bound(self, seconds: float) -> Decimal:
        """The most the agreement can cost ``seconds`` after it started."""
        return self.fixed + self.rate * Decimal(str(max(0.0, seconds)))

    def ensure(self, ahead: float) -> bool:
        """Reserve enough for ``ahead`` more seconds of work; False if the budget can't."""
        need = self.bound(time.monotonic() - self.started + ahead + END_MARGIN_SEC)
        if need <= self.reserved:
            return True
        want = max(need, self.bound(time.monotonic() - self.started + ahead + STEP_SEC))
        free = self._budget.free
        grant = min(want - self.reserved, free)
        if self.reserved + grant < need:
            return False
        self._budget.reserved += grant
        self.reserved += grant
        return True

    def deadline(self) -> float | None:
        """The monotonic time at which the cost bound reaches the reservation."""
        if self.rate == 0:
            return None
        seconds = (self.reserved - self.fixed) / self.rate
        return self.started + float(seconds) - END_MARGIN_SEC

    def close(self, paid: Decimal) -> None:
        """The agreement's invoice was paid (or nothing will be): release the rest."""
        if self._closed:
            return
        self._closed = True
        self._budget.reserved -= self.reserved
        self._budget.reserved += paid
        self._budget.paid += paid


# How long before an agreement's budget deadline its reservation is topped up.
EXTEND_AHEAD_SEC = 2.0


def loop_time(deadline: float | None) -> float | None:
    """A ``time.monotonic`` deadline in the event loop's clock."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def extend_while_affordable(reservation: AgreementBudget,
                                  deadline: asyncio.Timeout) -> None:
    """Keeps moving the agreement's ``deadline`` while the budget can pay for more time.

    A long task, a worker waiting on something of its own, or a service instance must not be
    cut off while the budget still has room; only when it has none does the deadline stand.
    """
    while True:
        when = reservation.deadline()
        if when is None:
            return
        # A real timer: wake up a moment before the deadline and try to push it back.
        await asyncio.sleep(max(0.0, when - time.monotonic() - EXTEND_AHEAD_SEC))
        if not reservation.ensure(EXTEND_AHEAD_SEC * 2):
            return
        deadline.reschedule(loop_time(reservation.deadline()))
