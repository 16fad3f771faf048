"""Tests for the market strategies: scoring offers, caps, failure penalties and filters."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import pytest

from workgen.backends.base import Proposal
from workgen.protocol.constraints import match, parse_constraints
from workgen.protocol.pricing import LinearPricing
from workgen.protocol.properties import unflatten_properties
from workgen.requestor.strategy import (
    SCORE_NEUTRAL,
    SCORE_REJECTED,
    SCORE_TRUSTED,
    DecreaseScoreForUnconfirmedAgreement,
    LeastExpensiveLinearPayuMS,
    MarketStrategy,
    ProviderFilter,
    default_strategy,
)

DURATION = "golem.usage.duration_sec"
CPU = "golem.usage.cpu_sec"


def offer(
    provider_id: str = "0x4a8b7c1d2e3f405162738495a6b7c8d9e0f1a2b3",
    *,
    name: str | None = "testnet-c1-7",
    cpu_per_sec: float = 0.0001,
    duration_per_sec: float = 0.00002,
    fixed: float = 0.0,
    extra: Mapping[str, object] | None = None,
) -> Proposal:
    """A provider's offer with the properties a yagna vm provider publishes."""
    pricing = LinearPricing((cpu_per_sec, duration_per_sec, fixed), (CPU, DURATION))
    props: dict[str, object] = {
        "golem.inf.cpu.threads": 4,
        "golem.inf.mem.gib": 8.0,
        "golem.inf.storage.gib": 40.0,
        "golem.runtime.name": "vm",
        "golem.runtime.capabilities": ["inet", "vpn", "manifest-support"],
        "golem.com.scheme": "payu",
        "golem.com.scheme.payu.debit-note.interval-sec?": 120,
        "golem.com.payment.platform.erc20-holesky-tglm.address": provider_id,
        **pricing.to_properties(),
    }
    if name is not None:
        props["golem.node.id.name"] = name
    props.update(extra or {})
    return Proposal(
        id=f"R-{provider_id[-6:]}-{cpu_per_sec}-{fixed}",
        issuer_id=provider_id,
        properties=props,
        constraints="(&(golem.srv.comp.expiration>0))",
        state="Initial",
    )


ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"


class Fixed(MarketStrategy):
    """Scores every offer the same, and remembers what it was told."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.failures: list[tuple[str, str]] = []

    async def score_offer(self, offer: Proposal) -> float:
        return self.score

    def report_failure(self, provider_id: str, reason: str) -> None:
        self.failures.append((provider_id, reason))


# -- LeastExpensiveLinearPayuMS ------------------------------------------------------------

async def test_cheapest_offer_scores_highest() -> None:
    strategy = LeastExpensiveLinearPayuMS()
    cheap = await strategy.score_offer(offer(cpu_per_sec=0.0001))
    dear = await strategy.score_offer(offer(cpu_per_sec=0.0002))
    dearest = await strategy.score_offer(offer(cpu_per_sec=0.0002, fixed=0.01))
    assert cheap > dear > dearest > SCORE_REJECTED


async def test_expected_cost_counts_expected_time_of_cpu_and_duration_plus_fixed_price() -> None:
    strategy = LeastExpensiveLinearPayuMS(expected_time_secs=100)
    cost = strategy.expected_cost(offer(cpu_per_sec=0.001, duration_per_sec=0.002, fixed=0.5))
    assert cost == Decimal("0.8")


async def test_scores_order_like_minus_cost_and_stay_above_rejected_for_any_cost() -> None:
    strategy = LeastExpensiveLinearPayuMS(expected_time_secs=3600)
    scores = [
        await strategy.score_offer(offer(cpu_per_sec=price, duration_per_sec=0.0, fixed=fixed))
        for price, fixed in [(0.0, 0.0), (0.001, 0.0), (0.1, 0.0), (10.0, 0.0), (10.0, 1e9)]
    ]
    assert scores[0] == SCORE_NEUTRAL
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert all(SCORE_REJECTED < score <= SCORE_NEUTRAL for score in scores)


async def test_counters_other_than_cpu_and_duration_count_as_no_usage() -> None:
    pricing = LinearPricing((0.5, 0.001, 0.0), ("golem.usage.gib", DURATION))
    plain = offer()
    priced_by_gib = Proposal(
        id="R-gib", issuer_id=BOB, properties={**plain.properties, **pricing.to_properties()},
        constraints="", state="Initial",
    )
    strategy = LeastExpensiveLinearPayuMS(expected_time_secs=10)
    assert strategy.expected_cost(priced_by_gib) == Decimal("0.010")
    capped = LeastExpensiveLinearPayuMS(max_price_for={"golem.usage.gib": 0.1})
    assert await capped.score_offer(priced_by_gib) == SCORE_REJECTED


async def test_fixed_price_above_cap_is_rejected_and_at_cap_is_accepted() -> None:
    strategy = LeastExpensiveLinearPayuMS(max_fixed_price=Decimal("0.1"))
    assert await strategy.score_offer(offer(fixed=0.11)) == SCORE_REJECTED
    assert await strategy.score_offer(offer(fixed=0.1)) > SCORE_REJECTED


async def test_per_counter_price_above_cap_is_rejected() -> None:
    strategy = LeastExpensiveLinearPayuMS(max_price_for={CPU: 0.0001, DURATION: Decimal("0.1")})
    assert await strategy.score_offer(offer(cpu_per_sec=0.0002)) == SCORE_REJECTED
    assert await strategy.score_offer(offer(cpu_per_sec=0.0001)) > SCORE_REJECTED
    assert await strategy.score_offer(offer(duration_per_sec=0.2)) == SCORE_REJECTED


async def test_float_cap_compares_at_its_decimal_spelling() -> None:
    # 0.1 as a binary float is a hair above one tenth; an offer of exactly 0.1 must still pass.
    strategy = LeastExpensiveLinearPayuMS(max_fixed_price=0.1)
    assert await strategy.score_offer(offer(fixed=0.1)) > SCORE_REJECTED


async def test_non_linear_pricing_is_rejected() -> None:
    fixed_model = offer(extra={
        "golem.com.pricing.model": "fixed", "golem.com.pricing.model.fixed.price": 1.0,
    })
    assert await LeastExpensiveLinearPayuMS().score_offer(fixed_model) == SCORE_REJECTED


@pytest.mark.parametrize("bad", [
    {"golem.com.pricing.model.linear.coeffs": [0.1, 0.2]},  # one coefficient short
    {"golem.com.pricing.model.linear.coeffs": [0.1, -0.2, 0.0]},  # negative price
    {"golem.com.pricing.model.linear.coeffs": "0.1,0.2,0.0"},
    {"golem.com.pricing.model.linear.coeffs": [0.1, None, 0.0]},
    {"golem.com.usage.vector": [CPU, CPU]},
    {"golem.com.usage.vector": None},
    {"golem.com.pricing.model": None},
    {"golem.com.pricing": {"model": "flat"}},  # nested spelling that conflicts with the flat one
])
async def test_malformed_pricing_is_rejected_without_raising(bad: dict[str, object]) -> None:
    assert await LeastExpensiveLinearPayuMS().score_offer(offer(extra=bad)) == SCORE_REJECTED


async def test_payment_scheme_other_than_payu_is_rejected() -> None:
    strategy = LeastExpensiveLinearPayuMS()
    prepaid = offer(extra={"golem.com.scheme": "prepaid"})
    assert await strategy.score_offer(prepaid) == SCORE_REJECTED


async def test_nested_offer_properties_are_scored_like_flat_ones() -> None:
    flat = offer()
    nested = Proposal(id="R-n", issuer_id=flat.issuer_id,
                      properties=unflatten_properties(flat.properties), constraints="",
                      state="Initial")
    strategy = LeastExpensiveLinearPayuMS()
    assert await strategy.score_offer(nested) == await strategy.score_offer(flat)


def test_demand_decoration_asks_for_linear_pricing_once() -> None:
    strategy = default_strategy()
    properties: dict[str, object] = {}
    constraints: list[str] = ["(golem.runtime.name=vm)"]
    strategy.decorate_demand(properties, constraints)
    strategy.decorate_demand(properties, constraints)
    assert constraints == ["(golem.runtime.name=vm)", "(golem.com.pricing.model=linear)"]
    assert properties == {}
    clause = parse_constraints(constraints[1])
    assert match({}, clause, offer().properties, "()")
    assert not match({}, clause, offer(extra={"golem.com.pricing.model": "fixed"}).properties, "()")


@pytest.mark.parametrize("kwargs", [
    {"expected_time_secs": -1}, {"expected_time_secs": float("inf")},
    {"max_fixed_price": -0.1}, {"max_fixed_price": Decimal("NaN")},
    {"max_price_for": {CPU: -1}}, {"max_price_for": {"": 1}},
])
def test_invalid_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LeastExpensiveLinearPayuMS(**kwargs)  # type: ignore[arg-type]


def test_acceptable_amount_is_the_agreed_price_of_the_usage() -> None:
    pricing = LinearPricing((0.001, 0.002, 0.5), (CPU, DURATION))
    amount = default_strategy().acceptable_amount(pricing, {CPU: 100, DURATION: 50})
    assert amount == Decimal("0.7")


# -- DecreaseScoreForUnconfirmedAgreement --------------------------------------------------

async def test_failed_provider_ranks_below_an_equal_provider_that_did_not_fail() -> None:
    strategy = DecreaseScoreForUnconfirmedAgreement(LeastExpensiveLinearPayuMS())
    strategy.report_failure(ALICE, "agreement not approved")
    alice, bob = await strategy.score_offer(offer(ALICE)), await strategy.score_offer(offer(BOB))
    assert SCORE_REJECTED < alice < bob


async def test_each_failure_lowers_the_rank_further_but_never_rejects() -> None:
    strategy = DecreaseScoreForUnconfirmedAgreement(LeastExpensiveLinearPayuMS(), factor=0.5)
    scores = []
    for _ in range(5):
        scores.append(await strategy.score_offer(offer(ALICE, cpu_per_sec=0.05)))
        strategy.report_failure(ALICE, "activity lost")
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert all(score > SCORE_REJECTED for score in scores)
    assert strategy.failure_count(ALICE) == 5 and strategy.failure_count(BOB) == 0


async def test_positive_scores_are_multiplied_by_factor_per_failure() -> None:
    strategy = DecreaseScoreForUnconfirmedAgreement(Fixed(SCORE_TRUSTED), factor=0.5)
    strategy.report_failure(ALICE, "x")
    strategy.report_failure(ALICE, "y")
    assert await strategy.score_offer(offer(ALICE)) == SCORE_TRUSTED * 0.25


async def test_neutral_and_negative_scores_move_towards_rejected() -> None:
    for base in (SCORE_NEUTRAL, -0.5):
        strategy = DecreaseScoreForUnconfirmedAgreement(Fixed(base), factor=0.5)
        strategy.report_failure(ALICE, "x")
        assert await strategy.score_offer(offer(ALICE)) == -1 + (base + 1) * 0.5


async def test_very_many_failures_keep_an_offer_usable() -> None:
    for base in (SCORE_TRUSTED, -0.5):
        strategy = DecreaseScoreForUnconfirmedAgreement(Fixed(base), factor=0.1)
        for _ in range(2000):
            strategy.report_failure(ALICE, "x")
        assert await strategy.score_offer(offer(ALICE)) > SCORE_REJECTED


async def test_rejected_scores_are_not_changed_by_the_penalty() -> None:
    strategy = DecreaseScoreForUnconfirmedAgreement(Fixed(-7.0))
    strategy.report_failure(ALICE, "x")
    assert await strategy.score_offer(offer(ALICE)) == -7.0


def test_failures_are_forwarded_to_the_base_strategy() -> None:
    base = Fixed(SCORE_NEUTRAL)
    DecreaseScoreForUnconfirmedAgreement(base).report_failure(ALICE, "agreement rejected")
    assert base.failures == [(ALICE, "agreement rejected")]


async def test_failure_counts_belong_to_each_strategy_object() -> None:
    first, second = default_strategy(), default_strategy()
    first.report_failure(ALICE, "x")
    assert await first.score_offer(offer(ALICE)) < await second.score_offer(offer(ALICE))


@pytest.mark.parametrize("factor", [0, 1, 1.5, -0.5])
def test_factor_must_lie_strictly_between_zero_and_one(factor: float) -> None:
    with pytest.raises(ValueError):
        DecreaseScoreForUnconfirmedAgreement(Fixed(0.0), factor=factor)


# -- ProviderFilter ------------------------------------------------------------------------

async def test_deny_by_node_id_rejects_only_that_provider() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), deny=[ALICE])
    assert await strategy.score_offer(offer(ALICE, name="alice")) == SCORE_REJECTED
    assert await strategy.score_offer(offer(BOB, name="bob")) == SCORE_TRUSTED


async def test_node_ids_match_whatever_their_letter_case() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), deny=[BOB.upper().replace("0X", "0x")])
    assert await strategy.score_offer(offer(BOB)) == SCORE_REJECTED


async def test_deny_by_name_rejects_that_provider() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), deny=["alice"])
    assert await strategy.score_offer(offer(ALICE, name="alice")) == SCORE_REJECTED
    assert await strategy.score_offer(offer(ALICE, name="Alice")) == SCORE_TRUSTED


async def test_allow_by_id_or_name_admits_only_listed_providers() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), allow=[ALICE, "bob"])
    assert await strategy.score_offer(offer(ALICE, name="alice")) == SCORE_TRUSTED
    assert await strategy.score_offer(offer(BOB, name="bob")) == SCORE_TRUSTED
    carol = "0xca201000000000000000000000000000000000003"
    assert await strategy.score_offer(offer(carol, name="carol")) == SCORE_REJECTED


async def test_allow_by_name_needs_the_name_property_not_an_id_prefix() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), allow=[ALICE[:10]])
    assert await strategy.score_offer(offer(ALICE, name=None)) == SCORE_REJECTED


async def test_deny_wins_over_allow() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), allow=["alice"], deny=[ALICE])
    assert await strategy.score_offer(offer(ALICE, name="alice")) == SCORE_REJECTED


async def test_sync_callable_decides_by_node_id() -> None:
    strategy = ProviderFilter(Fixed(SCORE_TRUSTED), lambda provider_id: provider_id == BOB)
    assert await strategy.score_offer(offer(ALICE)) == SCORE_REJECTED
    assert await strategy.score_offer(offer(BOB)) == SCORE_TRUSTED


async def test_async_callable_is_awaited() -> None:
    asked: list[str] = []

    async def is_allowed(provider_id: str) -> bool:
        asked.append(provider_id)
        return provider_id != ALICE

    strategy = ProviderFilter(LeastExpensiveLinearPayuMS(), is_allowed)
    assert await strategy.score_offer(offer(ALICE)) == SCORE_REJECTED
    assert await strategy.score_offer(offer(BOB)) > SCORE_REJECTED
    assert asked == [ALICE, BOB]


async def test_filter_forwards_demand_decoration_failures_and_payment_bounds() -> None:
    base = Fixed(SCORE_NEUTRAL)
    strategy = ProviderFilter(DecreaseScoreForUnconfirmedAgreement(LeastExpensiveLinearPayuMS()))
    constraints: list[str] = []
    strategy.decorate_demand({}, constraints)
    assert constraints == ["(golem.com.pricing.model=linear)"]
    ProviderFilter(base).report_failure(BOB, "gone")
    assert base.failures == [(BOB, "gone")]
    pricing = LinearPricing((0.5, 0.0), (DURATION,))
    assert strategy.acceptable_amount(pricing, {DURATION: 2}) == Decimal("1.0")


def test_a_single_string_is_not_taken_for_a_list_of_providers() -> None:
    with pytest.raises(TypeError):
        ProviderFilter(Fixed(0.0), deny=ALICE)


def test_a_wrapper_needs_a_market_strategy() -> None:
    with pytest.raises(TypeError):
        ProviderFilter(object())  # type: ignore[arg-type]
