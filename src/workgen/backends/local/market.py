"""The local network's market: offers, demand subscriptions, and the proposals between them.

It does what yagna's matcher does, in process: an offer and a demand match when each side's
constraints hold on the other side's properties (:func:`workgen.protocol.constraints.match`).
Each subscription receives an ``Initial`` proposal for every matching offer: those present when
it subscribes and those published later (a provider that became free again re-offers with a new
offer). The market only matches and delivers; providers decide in negotiation
(:mod:`.provider`), and the network glues the two (:mod:`.network`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from ..._bounded import RecentIds
from ..base import Demand, MarketEvent, Proposal
from ...protocol.constraints import Constraint, match, parse_constraints
from ...protocol.properties import flatten_properties

log = logging.getLogger(__name__)

KEEP_PROPOSALS = 4096
"""Proposals the market keeps, the newest."""


def new_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Offer:
    """A provider's published offer; a new one (new id) each time the provider is free."""

    id: str
    provider_id: str
    properties: Mapping[str, object]
    constraints: str
    constraint: Constraint


@dataclass(frozen=True)
class ProposalRecord:
    """Where a proposal we handed out came from: its subscription, provider and offer."""

    proposal: Proposal
    subscription_id: str
    offer: Offer
    counter_demand: ParsedDemand | None = None
    """For a ``Draft``: the requestor's demand it answers (the agreement's terms)."""


@dataclass(frozen=True)
class ParsedDemand:
    """A demand with its properties flattened and its constraints parsed (checked once)."""

    demand: Demand
    properties: Mapping[str, object]
    constraint: Constraint

    @classmethod
    def parse(cls, demand: Demand) -> ParsedDemand:
        """Raises ``ConstraintSyntaxError`` (a ``ValueError``) for malformed constraints."""
        return cls(demand, flatten_properties(demand.properties),
                   parse_constraints(demand.constraints))

    def matches(self, offer: Offer) -> bool:
        return match(self.properties, self.constraint, offer.properties, offer.constraint)


class LocalSubscription:
    """A demand published on the local market; iterate it for proposals and rejections.

    Iteration ends after :meth:`aclose`. Several iterators share one stream (each event is
    delivered once), which suits the one consumer a requestor has per demand.
    """

    _END = None

    def __init__(self, parsed: ParsedDemand):
        self.id = new_id()
        self.demand = parsed.demand
        self.parsed = parsed
        self.closed = False
        self._queue: asyncio.Queue[MarketEvent | None] = asyncio.Queue()

    def push(self, event: MarketEvent) -> None:
        if not self.closed:
            self._queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[MarketEvent]:
        return self

    async def __anext__(self) -> MarketEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is self._END:
            self._queue.put_nowait(self._END)  # so that every other iterator ends too
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(self._END)


class Market:
    """Offers by provider, open subscriptions, and the proposals handed out.

    A provider proposes its offer to every open subscription each time it is free again, for
    as long as the network runs: the last :data:`KEEP_PROPOSALS` proposals are kept (one is
    answered within seconds), and an older one is refused by name.
    """

    def __init__(self) -> None:
        self._offers: dict[str, Offer] = {}
        self._subscriptions: dict[str, LocalSubscription] = {}
        self._proposals: dict[str, ProposalRecord] = {}  # insertion-ordered: oldest first
        self._forgotten = RecentIds(KEEP_PROPOSALS)

    @property
    def offers(self) -> list[Offer]:
        return list(self._offers.values())

    def subscribe(self, parsed: ParsedDemand) -> LocalSubscription:
        sub = LocalSubscription(parsed)
        self._subscriptions[sub.id] = sub
        for offer in self._offers.values():
            self._offer_to(sub, offer)
        return sub

    def publish(self, offer: Offer) -> None:
        """Publish (or replace) a provider's offer, and propose it to matching subscriptions."""
        self._offers[offer.provider_id] = offer
        for sub in list(self._subscriptions.values()):
            if sub.closed:  # closed by the requestor since: forget it
                del self._subscriptions[sub.id]
            else:
                self._offer_to(sub, offer)

    def withdraw(self, provider_id: str) -> None:
        self._offers.pop(provider_id, None)

    def current_offer(self, provider_id: str) -> Offer | None:
        return self._offers.get(provider_id)

    def _offer_to(self, sub: LocalSubscription, offer: Offer) -> None:
        if sub.closed or not sub.parsed.matches(offer):
            return
        # A copy: what a requestor does with a proposal cannot change the offer.
        properties = copy.deepcopy(dict(offer.properties))
        proposal = Proposal(
            id=new_id(), issuer_id=offer.provider_id, properties=properties,
            constraints=offer.constraints, state="Initial",
        )
        self.record(proposal, sub, offer)
        sub.push(proposal)

    def record(
        self, proposal: Proposal, sub: LocalSubscription, offer: Offer,
        counter_demand: ParsedDemand | None = None,
    ) -> None:
        self._proposals[proposal.id] = ProposalRecord(proposal, sub.id, offer, counter_demand)
        if len(self._proposals) > KEEP_PROPOSALS:
            oldest = next(iter(self._proposals))
            del self._proposals[oldest]
            self._forgotten.add(oldest)

    def lookup(self, proposal: Proposal) -> ProposalRecord:
        """The record of a proposal this market handed out; ``ValueError`` for any other."""
        record = self._proposals.get(proposal.id)
        if record is None and proposal.id in self._forgotten:
            raise ValueError(f"proposal {proposal.id} is older than the last {KEEP_PROPOSALS} "
                             "this local network keeps: answer a newer one")
        if record is None:
            raise ValueError(f"proposal {proposal.id} did not come from this local network")
        return record

    def subscription(self, sub: object) -> LocalSubscription:
        sub_id = getattr(sub, "id", None)
        found = self._subscriptions.get(sub_id) if isinstance(sub_id, str) else None
        if found is None or found is not sub:
            raise ValueError("the subscription is not one of this local network")
        if found.closed:
            raise ValueError(f"subscription {found.id} is closed")
        return found

    async def aclose(self) -> None:
        for sub in list(self._subscriptions.values()):
            await sub.aclose()
        self._subscriptions.clear()
        self._offers.clear()
