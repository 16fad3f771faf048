"""Tests for Golem's linear pricing model."""

from __future__ import annotations

from decimal import Decimal

import pytest

from workgen.protocol.pricing import LinearPricing
from workgen.protocol.properties import unflatten_properties

DURATION = "golem.usage.duration_sec"
CPU = "golem.usage.cpu_sec"

OFFER_PROPS = {
    "golem.com.pricing.model": "linear",
    "golem.com.pricing.model.linear.coeffs": [0.001, 0.002, 0.5],
    "golem.com.usage.vector": [DURATION, CPU],
    "golem.runtime.name": "vm",
}


def pricing() -> LinearPricing:
    return LinearPricing((0.001, 0.002, 0.5), (DURATION, CPU))


def test_cost_is_sum_of_coefficient_times_usage_plus_fixed_price() -> None:
    assert pricing().price_for({DURATION: 100, CPU: 50}) == Decimal("0.7")


def test_price_is_exact_decimal_not_binary_float() -> None:
    tenth = LinearPricing((0.1, 0.0), (DURATION,))
    assert tenth.price_for({DURATION: 3}) == Decimal("0.3")
    assert LinearPricing((0.1, 0.2), (DURATION,)).price_for({DURATION: 1}) == Decimal("0.3")


def test_fractional_usage_and_decimal_amounts_are_priced_exactly() -> None:
    got = pricing().price_for({DURATION: 1.5, CPU: Decimal("0.25")})
    assert got == Decimal("0.5020")


def test_large_values_keep_every_digit() -> None:
    precise = LinearPricing((0.0000123456789, 0.0), (CPU,))
    assert precise.price_for({CPU: 123456789.123456}) == Decimal("0.0000123456789") * Decimal(
        "123456789.123456"
    )


def test_missing_counter_counts_as_zero_usage() -> None:
    assert pricing().price_for({}) == Decimal("0.5")
    assert pricing().price_for({CPU: 10}) == Decimal("0.52")


def test_price_for_vector_takes_usage_in_usage_vector_order() -> None:
    assert pricing().price_for_vector([100, 50]) == Decimal("0.7")


def test_fixed_price_and_per_counter_prices_are_decimals() -> None:
    assert pricing().fixed_price == Decimal("0.5")
    assert pricing().prices == {DURATION: Decimal("0.001"), CPU: Decimal("0.002")}


def test_only_a_fixed_price_is_valid_pricing() -> None:
    assert LinearPricing((2.0,), ()).price_for({}) == Decimal("2.0")


def test_from_prices_orders_coefficients_like_the_mapping() -> None:
    built = LinearPricing.from_prices({CPU: 0.002, DURATION: 0.001}, fixed=0.5)
    assert built == LinearPricing((0.002, 0.001, 0.5), (CPU, DURATION))


def test_lists_are_stored_as_tuples() -> None:
    assert LinearPricing([1, 0], [CPU]) == LinearPricing((1, 0), (CPU,))  # type: ignore[arg-type]


def test_from_properties_reads_the_golem_property_names() -> None:
    assert LinearPricing.from_properties(OFFER_PROPS) == pricing()


def test_from_properties_accepts_the_nested_form() -> None:
    assert LinearPricing.from_properties(unflatten_properties(OFFER_PROPS)) == pricing()


def test_to_properties_round_trips() -> None:
    props = pricing().to_properties()
    assert props == {k: v for k, v in OFFER_PROPS.items() if k != "golem.runtime.name"}
    assert LinearPricing.from_properties(props) == pricing()


def test_integer_coefficients_from_json_are_accepted() -> None:
    props = {**OFFER_PROPS, "golem.com.pricing.model.linear.coeffs": [0, 1, 0]}
    assert LinearPricing.from_properties(props).price_for({CPU: 3}) == Decimal(3)


@pytest.mark.parametrize(
    ("coeffs", "usage_vector", "message"),
    [
        ((0.1, 0.2), (DURATION, CPU), "2 counters need 3 coefficients, got 2"),
        ((0.1, 0.2, 0.3, 0.4), (DURATION, CPU), "got 4"),
        ((), (), "got 0"),
        ((-0.1, 0.0), (CPU,), "coefficient 0 must not be negative"),
        ((0.1, -1), (CPU,), "coefficient 1 must not be negative"),
        ((float("nan"), 0.0), (CPU,), "must be finite"),
        ((float("inf"), 0.0), (CPU,), "must be finite"),
        (("0.1", 0.0), (CPU,), "must be a number"),
        ((True, 0.0), (CPU,), "must be a number"),
        ((Decimal("0.1"), 0.0), (CPU,), "int or float"),
        ((0.1, 0.1, 0.0), (CPU, CPU), "repeat"),
        ((0.1, 0.0), ("",), "non-empty"),
        ((0.1, 0.0), (3,), "non-empty"),
        ((0.1, 0.0), CPU, "not strings"),
    ],
)
def test_malformed_pricing_is_a_value_error(
    coeffs: tuple[float, ...], usage_vector: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LinearPricing(coeffs, usage_vector)


def test_unknown_usage_counter_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown usage counters \['golem.usage.gib'\]"):
        pricing().price_for({"golem.usage.gib": 1})


@pytest.mark.parametrize("amount", [-1, float("nan"), float("inf"), "3", True])
def test_bad_usage_amounts_are_value_errors(amount: object) -> None:
    with pytest.raises(ValueError, match="usage of golem.usage.cpu_sec"):
        pricing().price_for({CPU: amount})  # type: ignore[dict-item]


def test_usage_vector_of_wrong_length_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected 2 usage values"):
        pricing().price_for_vector([1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"golem.com.pricing.model": None}, "no 'golem.com.pricing.model'"),
        ({"golem.com.pricing.model": "fixed"}, "unsupported pricing model 'fixed'"),
        ({"golem.com.pricing.model.linear.coeffs": None}, "no 'golem.com.pricing.model.linear.coeffs'"),
        ({"golem.com.pricing.model.linear.coeffs": "0.1,0.2,0.5"}, "must be a list"),
        ({"golem.com.usage.vector": None}, "no 'golem.com.usage.vector'"),
        ({"golem.com.usage.vector": [DURATION]}, "1 counters need 2 coefficients, got 3"),
    ],
)
def test_malformed_offer_properties_are_value_errors(
    change: dict[str, object], message: str
) -> None:
    props = {k: v for k, v in {**OFFER_PROPS, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        LinearPricing.from_properties(props)
