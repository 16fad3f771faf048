"""Money as people read it: the platform's currency, readable rounding, exact accounts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from workgen.protocol.money import currency, exact, readable


@pytest.mark.parametrize("platform, token", [
    ("erc20-holesky-tglm", "tGLM"), ("erc20-polygon-glm", "GLM"), ("workgen-local-tglm", "tGLM"),
    ("zksync-mainnet-glm", "GLM"), ("erc20-foo-usdc", "USDC"),
])
def test_the_currency_is_the_platform_s_token(platform: str, token: str) -> None:
    assert currency(platform) == token


@pytest.mark.parametrize("amount, text", [
    ("0.0000530637322800714180", "0.0000531"),  # tiny: significant digits, never zero
    ("0.000000000123456", "0.000000000123"),
    ("0.00535", "0.00535"),
    ("12.3456", "12.3"),
    ("1234.5", "1235"),  # large: every integer digit stays
    ("98765432.1", "98765432"),
    ("0", "0"),
    ("-0.0012345", "-0.00123"),
])
def test_readable_amounts_keep_three_significant_digits(amount: str, text: str) -> None:
    assert readable(Decimal(amount)) == text
    assert readable(Decimal(amount), "tGLM") == f"{text} tGLM"


def test_exact_amounts_keep_every_digit_and_no_exponent() -> None:
    total = sum((Decimal("0.0000000001"), Decimal("1000"), Decimal("0.1")), Decimal(0))
    assert exact(total, "GLM") == "1000.1000000001 GLM"
    assert exact(Decimal("1E+3")) == "1000"
    assert exact(Decimal("0.000")) == "0"
    assert exact(Decimal("1.2300")) == "1.23"
