"""Money as people read it: the payment platform's currency, and amounts rounded for reading
where that is all they are for (a live display), exact where they are accounts (a total)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def currency(platform: str) -> str:
    """The token a payment platform pays in: ``erc20-holesky-tglm`` pays ``tGLM`` (test GLM),
    ``erc20-polygon-glm`` pays ``GLM``; another token is named in capitals."""
    token = platform.rsplit("-", 1)[-1].strip()
    if token.lower() == "glm":
        return "GLM"
    if token.lower() == "tglm":
        return "tGLM"
    return token.upper() or "GLM"


def readable(amount: Decimal, unit: str = "", digits: int = 3) -> str:
    """``amount`` to ``digits`` significant digits, never in exponent form and never rounded
    to zero: 0.0000530637 → ``0.0000531``, 12.3456 → ``12.3``, 1234.5 → ``1235``."""
    if not amount.is_finite():
        text = str(amount)
    elif amount == 0:
        text = "0"
    else:
        exponent = amount.adjusted() - digits + 1
        rounded = amount.quantize(Decimal(1).scaleb(min(exponent, 0)), ROUND_HALF_UP)
        text = f"{rounded.normalize():f}"
    return f"{text} {unit}" if unit else text


def exact(amount: Decimal, unit: str = "") -> str:
    """All of ``amount``'s digits (no trailing zeros, no exponent): an account's figure."""
    text = f"{amount.normalize():f}" if amount.is_finite() and amount != 0 else (
        "0" if amount == 0 else str(amount))
    return f"{text} {unit}" if unit else text
