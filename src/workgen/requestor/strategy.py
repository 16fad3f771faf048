"""Market strategies: how the requestor scores providers' offers and bounds what it pays.

The engine asks its strategy to decorate the demand before publishing it, to score each offer
that arrives (higher is better; :data:`SCORE_REJECTED` or below means "don't use"), to take note
of providers that failed work or refused an agreement, and, for each debit note or invoice, for
the most that the reported usage may cost. Strategies see only :class:`~workgen.backends.base.
Proposal` and :class:`~workgen.protocol.pricing.LinearPricing`, so one strategy behaves the same
on the local network and on Golem.

Scores on a scale shared by all strategies:

* ``SCORE_TRUSTED`` (100) for providers a strategy vouches for;
* ``SCORE_NEUTRAL`` (0) for "no opinion";
* cost-based scores of :class:`LeastExpensiveLinearPayuMS` fall in ``(-1, 0]``: the cheaper the
  offer, the closer to 0. They order offers exactly as minus their expected cost does, but stay
  above ``SCORE_REJECTED`` however expensive an offer is, so cost alone never turns an offer
  into a rejection (caps do that, explicitly);
* ``SCORE_REJECTED`` (-1) or less: the offer is not used.

Each strategy object keeps its own state (failure counts): two engines never share it.
"""

from __future__ import annotations

import abc
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal, localcontext

from ..backends.base import Proposal
from ..protocol.constraints import compare
from ..protocol.pricing import LinearPricing
from ..protocol.properties import (
    COM_PRICING_MODEL,
    COM_SCHEME,
    NODE_ID_NAME,
    PRICING_MODEL_LINEAR,
    SCHEME_PAYU,
    USAGE_CPU_SEC,
    USAGE_DURATION_SEC,
    flatten_properties,
)

__all__ = [
    "SCORE_NEUTRAL", "SCORE_REJECTED", "SCORE_TRUSTED", "DecreaseScoreForUnconfirmedAgreement",
    "LeastExpensiveLinearPayuMS", "MarketStrategy", "ProviderFilter", "WrappingStrategy",
    "default_strategy",
]

log = logging.getLogger(__name__)

SCORE_REJECTED = -1.0
SCORE_NEUTRAL = 0.0
SCORE_TRUSTED = 100.0

# The lowest score that still means "usable": penalties and cost mapping floor here, so that only
# an explicit rejection ever reaches SCORE_REJECTED.
_LOWEST_USABLE = math.nextafter(SCORE_REJECTED, math.inf)


class MarketStrategy(abc.ABC):
    """Scores offers; subclass it and implement :meth:`score_offer` for a custom strategy."""

    def decorate_demand(  # noqa: B027 (optional to override: the default adds nothing)
            self, properties: dict[str, object], constraints: list[str]) -> None:
        """Add demand properties or constraint clauses (each a ``(...)`` clause); default: none."""

    @abc.abstractmethod
    async def score_offer(self, offer: Proposal) -> float:
        """The offer's score: higher is better, ``SCORE_REJECTED`` or below means don't use it."""

    def report_failure(  # noqa: B027 (optional to override: the default ignores it)
            self, provider_id: str, reason: str) -> None:
        """Note that ``provider_id`` failed work or refused an agreement; default: ignored."""

    def acceptable_amount(
        self, agreement_pricing: LinearPricing, usage: Mapping[str, float]
    ) -> Decimal:
        """The most the requestor should pay for ``usage`` under an agreement's pricing.

        The engine rejects debit notes and invoices above it (within a tolerance it owns). The
        default is the agreed price of the usage; a :class:`ValueError` from the pricing (a
        counter it does not know) propagates.
        """
        return agreement_pricing.price_for(usage)


class WrappingStrategy(MarketStrategy):
    """A strategy that adjusts another's scores and forwards everything else to it."""

    def __init__(self, base_strategy: MarketStrategy) -> None:
        if not isinstance(base_strategy, MarketStrategy):
            raise TypeError(f"base_strategy must be a MarketStrategy, got {base_strategy!r}")
        self.base_strategy = base_strategy

    def decorate_demand(self, properties: dict[str, object], constraints: list[str]) -> None:
        self.base_strategy.decorate_demand(properties, constraints)

    def report_failure(self, provider_id: str, reason: str) -> None:
        self.base_strategy.report_failure(provider_id, reason)

    def acceptable_amount(
        self, agreement_pricing: LinearPricing, usage: Mapping[str, float]
    ) -> Decimal:
        return self.base_strategy.acceptable_amount(agreement_pricing, usage)


def _money(value: object, what: str) -> Decimal:
    """A price cap as a Decimal; a float is taken at its shortest spelling, as pricing does."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    # An infinite cap is no cap and is fine; NaN compares false with everything, so it would
    # silently disable the cap, and a negative cap would reject every offer.
    if number.is_nan() or number < 0:
        raise ValueError(f"{what} must be a non-negative number, got {value!r}")
    return number


class LeastExpensiveLinearPayuMS(MarketStrategy):
    """Prefers the offer that is cheapest for ``expected_time_secs`` of work.

    Only offers with linear pricing are scored (the demand asks for them). An offer is rejected
    when its fixed price exceeds ``max_fixed_price``, when its price for a counter named in
    ``max_price_for`` exceeds that cap, when it declares a payment scheme other than ``payu``,
    or when its pricing is malformed. The expected cost counts ``expected_time_secs`` each of
    ``golem.usage.duration_sec`` and ``golem.usage.cpu_sec`` (where the offer prices them) and
    zero of any other counter, whose usage this strategy cannot foresee: cap such counters with
    ``max_price_for``. The score is ``-cost / (1 + cost)``: ordered like ``-cost``, but within
    ``(-1, 0]`` (see the module docstring).
    """

    def __init__(
        self,
        expected_time_secs: float = 60,
        max_fixed_price: Decimal | float | None = None,
        max_price_for: Mapping[str, Decimal | float] | None = None,
    ) -> None:
        if isinstance(expected_time_secs, bool) or not isinstance(expected_time_secs, (int, float)):
            raise TypeError(f"expected_time_secs must be a number, got {expected_time_secs!r}")
        if not math.isfinite(expected_time_secs) or expected_time_secs < 0:
            raise ValueError(
                f"expected_time_secs must be finite and non-negative, got {expected_time_secs!r}"
            )
        self.expected_time_secs = float(expected_time_secs)
        self.max_fixed_price = (
            None if max_fixed_price is None else _money(max_fixed_price, "max_fixed_price")
        )
        caps: dict[str, Decimal] = {}
        for counter, cap in (max_price_for or {}).items():
            if not isinstance(counter, str) or not counter:
                raise ValueError(f"max_price_for keys must be counter names, got {counter!r}")
            caps[counter] = _money(cap, f"max_price_for[{counter!r}]")
        self.max_price_for: Mapping[str, Decimal] = caps

    def decorate_demand(self, properties: dict[str, object], constraints: list[str]) -> None:
        clause = str(compare(COM_PRICING_MODEL, "=", PRICING_MODEL_LINEAR))
        # Idempotent: a demand built twice, or two such strategies in a chain, ask only once.
        if clause not in constraints:
            constraints.append(clause)

    def expected_cost(self, offer: Proposal) -> Decimal:
        """The offer's cost for the expected usage; :class:`ValueError` if it has no such cost."""
        return self._expected_cost(LinearPricing.from_properties(offer.properties))

    def _expected_cost(self, pricing: LinearPricing) -> Decimal:
        usage = {
            counter: self.expected_time_secs
            for counter in (USAGE_DURATION_SEC, USAGE_CPU_SEC)
            if counter in pricing.usage_vector
        }
        return pricing.price_for(usage)

    async def score_offer(self, offer: Proposal) -> float:
        # Offers come from strangers: anything malformed is a rejection, never an exception.
        try:
            flat = flatten_properties(offer.properties)
            pricing = LinearPricing.from_properties(flat)
            cost = self._expected_cost(pricing)
        except (ValueError, TypeError) as exc:
            log.debug("rejected offer %s: unusable pricing: %s", offer.id, exc)
            return SCORE_REJECTED
        scheme = flat.get(COM_SCHEME)
        # A missing scheme is taken as payu (the only one Golem offers); another one we can't pay.
        if scheme is not None and scheme != SCHEME_PAYU:
            log.debug("rejected offer %s: payment scheme %r is not payu", offer.id, scheme)
            return SCORE_REJECTED
        if self.max_fixed_price is not None and pricing.fixed_price > self.max_fixed_price:
            log.debug(
                "rejected offer %s: fixed price %s above the cap %s",
                offer.id, pricing.fixed_price, self.max_fixed_price,
            )
            return SCORE_REJECTED
        for counter, price in pricing.prices.items():
            cap = self.max_price_for.get(counter)
            if cap is not None and price > cap:
                log.debug(
                    "rejected offer %s: price %s for %s above the cap %s",
                    offer.id, price, counter, cap,
                )
                return SCORE_REJECTED
        return _score_for_cost(cost)


def _score_for_cost(cost: Decimal) -> float:
    """``-cost / (1 + cost)``: strictly decreasing in cost, 0 for free, above -1 always."""
    with localcontext() as context:
        context.prec = 50
        score = float(1 / (1 + cost) - 1)  # same as -cost/(1+cost), but 0.0 (not -0.0) when free
    # Only an absurd cost (beyond ~1e16) rounds to -1.0; keep it usable, just last.
    return max(score, _LOWEST_USABLE)


class DecreaseScoreForUnconfirmedAgreement(WrappingStrategy):
    """Ranks providers that failed below equal ones that did not, more so for each failure.

    With ``n`` failures reported for a provider and a base score ``s`` above ``SCORE_REJECTED``:

    * ``s > 0`` becomes ``s * factor**n`` (stays positive);
    * ``s <= 0`` becomes ``-1 + (s + 1) * factor**n``: it moves towards ``SCORE_REJECTED``
      without reaching it. (Multiplying a negative or zero score would raise it or leave it
      unchanged, and dividing it could push it past -1 and turn a penalty into a rejection.)

    Either way the result is below ``s`` for ``n >= 1``, so a failed provider always ranks below
    an equal provider that has not failed, and the penalty never rejects an offer by itself.
    Rejected scores pass through unchanged. Counts last as long as the strategy object.
    """

    def __init__(self, base_strategy: MarketStrategy, factor: float = 0.5) -> None:
        super().__init__(base_strategy)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"factor must be a number, got {factor!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be between 0 and 1 (exclusive), got {factor!r}")
        self.factor = float(factor)
        self._failures: dict[str, int] = {}

    def failure_count(self, provider_id: str) -> int:
        """How many failures have been reported for ``provider_id``."""
        return self._failures.get(provider_id, 0)

    def report_failure(self, provider_id: str, reason: str) -> None:
        self._failures[provider_id] = self._failures.get(provider_id, 0) + 1
        log.debug(
            "provider %s failed (%s); %d failure(s) so far",
            provider_id, reason, self._failures[provider_id],
        )
        super().report_failure(provider_id, reason)

    async def score_offer(self, offer: Proposal) -> float:
        score = await self.base_strategy.score_offer(offer)
        failures = self._failures.get(offer.issuer_id, 0)
        if failures == 0 or score <= SCORE_REJECTED:
            return score
        weight = self.factor**failures
        if score > 0:
            # After very many failures the product underflows; keep it positive, just lowest.
            return max(score * weight, math.ulp(0.0))
        return max(SCORE_REJECTED + (score - SCORE_REJECTED) * weight, _LOWEST_USABLE)


class ProviderFilter(WrappingStrategy):
    """Rejects offers from providers that are not allowed; scores the rest with the base.

    ``deny`` entries reject a provider whose node id or name (``golem.node.id.name``) equals
    one of them; with ``allow``, only providers whose id or name is listed are considered;
    ``is_allowed`` (sync or async) is then asked with the provider's node id. Node ids compare
    case-insensitively (a checksummed address is the same node), names exactly.
    """

    def __init__(
        self,
        base_strategy: MarketStrategy,
        is_allowed: Callable[[str], bool | Awaitable[bool]] | None = None,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
    ) -> None:
        super().__init__(base_strategy)
        if is_allowed is not None and not callable(is_allowed):
            raise TypeError(f"is_allowed must be callable, got {is_allowed!r}")
        self._is_allowed = is_allowed
        self._allow = None if allow is None else _Entries(allow, "allow")
        self._deny = _Entries(() if deny is None else deny, "deny")

    async def score_offer(self, offer: Proposal) -> float:
        try:
            name_property = flatten_properties(offer.properties).get(NODE_ID_NAME)
        except ValueError:
            log.debug("rejected offer %s: malformed properties", offer.id)
            return SCORE_REJECTED
        name = name_property if isinstance(name_property, str) else None
        if self._deny.match(offer.issuer_id, name):
            log.debug("rejected offer %s: provider %s is denied", offer.id, offer.issuer_id)
            return SCORE_REJECTED
        if self._allow is not None and not self._allow.match(offer.issuer_id, name):
            log.debug("rejected offer %s: provider %s is not allowed", offer.id, offer.issuer_id)
            return SCORE_REJECTED
        if self._is_allowed is not None:
            verdict = self._is_allowed(offer.issuer_id)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                log.debug("rejected offer %s: is_allowed(%s) said no", offer.id, offer.issuer_id)
                return SCORE_REJECTED
        return await self.base_strategy.score_offer(offer)


class _Entries:
    """An allow or deny list: each entry may be a node id or a provider name."""

    def __init__(self, values: Iterable[str], what: str) -> None:
        # A bare string is iterable too, and would silently become a list of characters.
        if isinstance(values, (str, bytes)):
            raise TypeError(f"{what} must be a collection of node ids or names, not one string")
        entries = list(values)
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise ValueError(f"{what} entries must be non-empty str, got {entry!r}")
        self._ids = frozenset(entry.casefold() for entry in entries)
        self._names = frozenset(entries)

    def match(self, provider_id: str, name: str | None) -> bool:
        return provider_id.casefold() in self._ids or (name is not None and name in self._names)


def default_strategy() -> MarketStrategy:
    """The cheapest offer for a minute's work, with providers that failed ranked lower."""
    return DecreaseScoreForUnconfirmedAgreement(LeastExpensiveLinearPayuMS())
