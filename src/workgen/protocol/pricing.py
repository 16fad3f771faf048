"""Golem's linear pricing model: what an offer charges for the usage an activity reports.

An offer with ``golem.com.pricing.model = "linear"`` lists its usage counters in
``golem.com.usage.vector`` and its prices in ``golem.com.pricing.model.linear.coeffs``:
one coefficient per counter, in the same order, followed by one fixed start price. So for
``usage.vector = ["golem.usage.duration_sec", "golem.usage.cpu_sec"]`` and
``coeffs = [0.001, 0.002, 0.5]`` the cost is ``0.001 * duration + 0.002 * cpu + 0.5``.

Money is computed as :class:`decimal.Decimal`. A float coefficient or usage is taken at its
shortest decimal spelling (``0.1`` is exactly one tenth), not its binary expansion, so the
result is what a person reading the offer would compute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import cast

from .properties import (
    COM_PRICING_MODEL,
    COM_PRICING_MODEL_LINEAR_COEFFS,
    COM_USAGE_VECTOR,
    PRICING_MODEL_LINEAR,
    flatten_properties,
)

__all__ = ["LinearPricing"]

Amount = float | Decimal

# Wide enough that sums of products of float-sized operands are never rounded.
_PRECISION = 100


def _decimal(value: object, what: str) -> Decimal:
    """A finite, non-negative number as a Decimal, or a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        number = Decimal(repr(value))
    else:
        number = Decimal(value)
        if not number.is_finite():
            raise ValueError(f"{what} must be finite, got {value!r}")
    if number < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return number


def _list_property(flat: Mapping[str, object], name: str) -> tuple[object, ...]:
    value = flat.get(name)
    if value is None:
        raise ValueError(f"no {name!r} property")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name!r} must be a list, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class LinearPricing:
    """``coeffs[i]`` is the price per unit of ``usage_vector[i]``; ``coeffs[-1]`` is fixed."""

    coeffs: tuple[float, ...]
    usage_vector: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.coeffs, (str, bytes)) or isinstance(self.usage_vector, (str, bytes)):
            raise ValueError("coeffs and usage_vector must be sequences, not strings")
        coeffs, usage_vector = tuple(self.coeffs), tuple(self.usage_vector)
        if len(coeffs) != len(usage_vector) + 1:
            raise ValueError(
                f"linear pricing needs one coefficient per usage counter plus a fixed price:"
                f" {len(usage_vector)} counters need {len(usage_vector) + 1} coefficients,"
                f" got {len(coeffs)}"
            )
        for index, coeff in enumerate(coeffs):
            if isinstance(coeff, Decimal):
                # The properties are JSON, which has no decimal type to carry it.
                raise ValueError(f"coefficient {index} must be an int or float, got {coeff!r}")
            _decimal(coeff, f"coefficient {index}")
        for counter in usage_vector:
            if not isinstance(counter, str) or not counter:
                raise ValueError(f"usage counter names must be non-empty str, got {counter!r}")
        if len(set(usage_vector)) != len(usage_vector):
            raise ValueError(f"usage counters repeat: {list(usage_vector)}")
        object.__setattr__(self, "coeffs", coeffs)
        object.__setattr__(self, "usage_vector", usage_vector)

    @classmethod
    def from_prices(cls, prices: Mapping[str, float], fixed: float = 0.0) -> LinearPricing:
        """Build from per-counter prices (in the mapping's order) and a fixed start price."""
        return cls((*prices.values(), fixed), tuple(prices))

    @classmethod
    def from_properties(cls, props: Mapping[str, object]) -> LinearPricing:
        """Read the pricing of an offer's properties (flat or nested)."""
        flat = flatten_properties(props)
        model = flat.get(COM_PRICING_MODEL)
        if model is None:
            raise ValueError(f"no {COM_PRICING_MODEL!r} property")
        if model != PRICING_MODEL_LINEAR:
            raise ValueError(f"unsupported pricing model {model!r}, expected 'linear'")
        coeffs = _list_property(flat, COM_PRICING_MODEL_LINEAR_COEFFS)
        usage_vector = _list_property(flat, COM_USAGE_VECTOR)
        # __post_init__ checks the element types that these casts only claim.
        return cls(cast(tuple[float, ...], coeffs), cast(tuple[str, ...], usage_vector))

    def to_properties(self) -> dict[str, object]:
        """The flat properties an offer carries for this pricing."""
        return {
            COM_PRICING_MODEL: PRICING_MODEL_LINEAR,
            COM_PRICING_MODEL_LINEAR_COEFFS: list(self.coeffs),
            COM_USAGE_VECTOR: list(self.usage_vector),
        }

    @property
    def fixed_price(self) -> Decimal:
        """The start price, charged once whatever the usage."""
        return _decimal(self.coeffs[-1], "the fixed price")

    @property
    def prices(self) -> dict[str, Decimal]:
        """The price per unit of each usage counter, in usage-vector order."""
        return {
            counter: _decimal(coeff, counter)
            # The coefficients end with the fixed price, which no counter has.
            for counter, coeff in zip(self.usage_vector, self.coeffs, strict=False)
        }

    def price_for(self, usage: Mapping[str, Amount]) -> Decimal:
        """The cost of ``usage`` (counter name to amount); a counter left out counts as zero."""
        unknown = [counter for counter in usage if counter not in self.usage_vector]
        if unknown:
            raise ValueError(
                f"unknown usage counters {unknown}; this pricing knows {list(self.usage_vector)}"
            )
        return self.price_for_vector([usage.get(counter, 0) for counter in self.usage_vector])

    def price_for_vector(self, values: Sequence[Amount]) -> Decimal:
        """The cost of usage given in usage-vector order, as debit notes report it."""
        if isinstance(values, (str, bytes)) or len(values) != len(self.usage_vector):
            raise ValueError(
                f"expected {len(self.usage_vector)} usage values"
                f" ({', '.join(self.usage_vector) or 'none'}), got {values!r}"
            )
        with localcontext() as context:
            context.prec = _PRECISION
            total = self.fixed_price
            for counter, price, amount in zip(self.usage_vector, self.prices.values(), values,
                                                    strict=False):
                total += price * _decimal(amount, f"usage of {counter}")
        return total
