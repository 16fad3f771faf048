"""The market side of a job: publish the demand, negotiate with providers, sign agreements.

``open_market`` subscribes the job's demand and runs the negotiation loop in its own task: every
offer is scored by the strategy, acceptable ones are answered with our terms, and the providers'
drafts wait, best score first, until a worker slot asks :meth:`Market.sign` for an agreement.
Slots ask concurrently, so providers are acquired in parallel.

The counter-proposal takes up the deadline the offer names for accepting debit notes
(``golem.com.payment.debit-notes.accept-timeout?``, raised to :data:`MIN_ACCEPT_TIMEOUT`): a
provider holds a requestor to a deadline only when both sides name one, and only a deadline
lets it end the agreement of a requestor that went away instead of working unpaid until the
agreement expires. Debit notes are answered as they come (``requestor/payments.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import timedelta
from typing import TypeVar

from .._aio import task_scope
from ..backends.base import Agreement, Backend, Demand, DemandSubscription, Proposal
from ..errors import AgreementRejected, NoProvidersError
from ..protocol.pricing import LinearPricing
from ..protocol.properties import COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT
from ..protocol.results import utc_now
from . import events
from .strategy import SCORE_REJECTED, MarketStrategy

log = logging.getLogger(__name__)

AGREEMENT_VALIDITY = timedelta(hours=10)
MIN_ACCEPT_TIMEOUT = 30
"""The shortest deadline for accepting a debit note that a requestor agrees to (seconds): a
shorter one would risk agreements for a slow REST call."""
R = TypeVar("R")


class Market:
    def __init__(self, backend: Backend, subscription: DemandSubscription, demand: Demand,
                 strategy: MarketStrategy, job_id: str, emit: Callable[[events.Event], None],
                 startup_timeout: float):
        self._backend = backend
        self._sub = subscription
        self._demand = demand
        self._strategy = strategy
        self._job_id = job_id
        self._emit = emit
        self._startup_timeout = startup_timeout
        self._drafts: list[tuple[float, int, Proposal]] = []
        self._order = itertools.count()
        self._scores: dict[str, float] = {}
        self._changed = asyncio.Condition()
        self._started = time.monotonic()
        self.offers_seen = 0
        self.agreements_made = 0
        self._closed = False
        self._failure: Exception | None = None
        # Per provider: negotiating (an offer answered, no draft or refusal yet), or refused
        # (why, by us or by them). When every provider refused, waiting on is pointless.
        self._pending: set[str] = set()
        self._refused: dict[str, tuple[str, str]] = {}  # issuer: (name, why)
        self._names: dict[str, str] = {}
        self._signing = 0

    async def _negotiate(self) -> None:
        try:
            await self._follow()
        except Exception as exc:
            # Whoever waits for a draft hears of it (raised from sign()): the job ends with
            # this error instead of being cancelled from under its slots.
            self._failure = exc
        self._closed = True
        async with self._changed:
            self._changed.notify_all()

    async def _follow(self) -> None:
        async for event in self._sub:
            if isinstance(event, Proposal):
                await self._on_proposal(event)
            else:
                name = self._names.get(event.issuer_id, event.issuer_id[:10])
                self._emit(events.ProposalRejected(
                    job_id=self._job_id, proposal_id=event.proposal_id,
                    provider_id=event.issuer_id, provider_name=name,
                    reason=event.reason, by_provider=True))
                if not event.final:
                    # Taken by someone else for now: it offers again when free.
                    self._pending.discard(event.issuer_id)
                    continue
                self._strategy.report_failure(event.issuer_id, event.reason)
                await self._refuse(event.issuer_id, name, f"refused: {event.reason}")

    async def _on_proposal(self, proposal: Proposal) -> None:
        draft = proposal.state == "Draft"
        self._emit(events.ProposalReceived(
            job_id=self._job_id, proposal_id=proposal.id, provider_id=proposal.issuer_id,
            provider_name=proposal.provider_name, draft=draft))
        self._names[proposal.issuer_id] = proposal.provider_name
        if not draft:
            self.offers_seen += 1
            self._pending.add(proposal.issuer_id)
            self._refused.pop(proposal.issuer_id, None)
        else:
            self._pending.discard(proposal.issuer_id)
        score = await self._strategy.score_offer(proposal)
        if score <= SCORE_REJECTED:
            reason = "rejected by the market strategy (price or policy)"
            self._emit(events.ProposalRejected(
                job_id=self._job_id, proposal_id=proposal.id, provider_id=proposal.issuer_id,
                provider_name=proposal.provider_name, reason=reason))
            with contextlib.suppress(Exception):
                await self._backend.reject_proposal(self._sub, proposal, reason)
            await self._refuse(proposal.issuer_id, proposal.provider_name, reason)
            return
        if draft:
            self._scores[proposal.id] = score
            async with self._changed:
                # heapq is a min-heap: negate so the best score pops first.
                heapq.heappush(self._drafts, (-score, next(self._order), proposal))
                self._changed.notify_all()
        else:
            await self._backend.counter_proposal(self._sub, proposal,
                                                 counter_demand(self._demand, proposal.properties))

    async def _refuse(self, issuer_id: str, name: str, why: str) -> None:
        self._pending.discard(issuer_id)
        self._refused[issuer_id] = (name, why)
        async with self._changed:
            self._changed.notify_all()

    async def _next_draft(self) -> Proposal:
        async with self._changed:
            while not self._drafts:
                if self._failure is not None:
                    raise self._failure
                if self._closed:
                    raise NoProvidersError("the demand's subscription ended")
                remaining = self._startup_timeout - (time.monotonic() - self._started)
                starting = self.agreements_made == 0
                if starting and remaining <= 0:
                    if self.offers_seen == 0:
                        raise NoProvidersError(
                            f"no provider's offer matched the demand within "
                            f"{self._startup_timeout:g}s (constraints: "
                            f"{self._demand.constraints})")
                    if not self._pending and self._signing == 0 and self._refused \
                            and self._refused.keys() >= self._names.keys():
                        raise NoProvidersError(
                            f"no provider took the demand within {self._startup_timeout:g}s: "
                            + _refusals(self._refused.values()))
                try:
                    async with asyncio.timeout(remaining if starting and remaining > 0
                                               else None):
                        await self._changed.wait()
                except TimeoutError:
                    continue
            return heapq.heappop(self._drafts)[2]

    async def sign(self, reserve: Callable[[Proposal], R | None],
                   release: Callable[[R], None]) -> tuple[Agreement, R] | None:
        """The best provider's agreement; waits for drafts, tries the next one on refusal.

        ``reserve`` sets money aside for a proposal's terms before anything is signed; when it
        can't (``None``), the draft is kept for later and ``None`` returned. Raises
        :class:`NoProvidersError` when no offer at all arrived within the startup timeout.
        """
        while True:
            proposal = await self._next_draft()
            reservation = reserve(proposal)
            if reservation is None:
                async with self._changed:
                    heapq.heappush(self._drafts, (-self._scores.get(proposal.id, 0.0),
                                                  next(self._order), proposal))
                return None
            valid_to = utc_now() + AGREEMENT_VALIDITY
            self._signing += 1
            try:
                agreement = await self._backend.make_agreement(proposal, valid_to)
            except AgreementRejected as exc:
                self._signing -= 1
                release(reservation)
                self._strategy.report_failure(proposal.issuer_id, str(exc))
                self._emit(events.AgreementRejected(
                    job_id=self._job_id, provider_id=proposal.issuer_id,
                    provider_name=proposal.provider_name, reason=str(exc)))
                await self._refuse(proposal.issuer_id, proposal.provider_name,
                                   f"rejected the agreement: {exc}")
                continue
            except BaseException:
                self._signing -= 1
                release(reservation)
                raise
            self._signing -= 1
            self.agreements_made += 1
            try:
                pricing: LinearPricing | None = LinearPricing.from_properties(
                    agreement.proposal.properties)
            except ValueError:
                pricing = None
            self._emit(events.AgreementCreated(
                job_id=self._job_id, agreement_id=agreement.id,
                provider_id=agreement.provider_id, provider_name=agreement.provider_name,
                pricing=pricing))
            return agreement, reservation


def counter_demand(demand: Demand, offer: Mapping[str, object]) -> Demand:
    """``demand`` as the answer to an offer with properties ``offer``: with the offer's
    debit-note acceptance deadline, when it names one, at least :data:`MIN_ACCEPT_TIMEOUT`."""
    offered = offer.get(COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT)
    if (isinstance(offered, bool) or not isinstance(offered, (int, float))
            or not math.isfinite(offered) or offered <= 0):
        return demand
    deadline = max(offered, MIN_ACCEPT_TIMEOUT)
    properties = dict(demand.properties)
    properties[COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT] = (
        int(deadline) if float(deadline).is_integer() else deadline)
    return Demand(properties=properties, constraints=demand.constraints)


def _refusals(refused: Iterable[tuple[str, str]]) -> str:
    """``a, b: why; c: other reason``: providers grouped by what they (or we) said."""
    by_reason: dict[str, list[str]] = {}
    for name, why in refused:
        by_reason.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(sorted(names))}: {why}"
                     for why, names in sorted(by_reason.items()))


@contextlib.asynccontextmanager
async def open_market(backend: Backend, demand: Demand, strategy: MarketStrategy, job_id: str,
                      emit: Callable[[events.Event], None]) -> AsyncIterator[Market]:
    subscription = await backend.subscribe_demand(demand)
    emit(events.DemandSubscribed(job_id=job_id, constraints=demand.constraints))
    market = Market(backend, subscription, demand, strategy, job_id, emit,
                    backend.startup_timeout)
    try:
        async with task_scope() as tg:
            negotiation = tg.create_task(market._negotiate())
            try:
                yield market
            finally:
                negotiation.cancel()
    finally:
        await subscription.aclose()
