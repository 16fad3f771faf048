"""Checked numeric options: ``type=`` functions for argparse.

Each turns an option's text into a number or raises :class:`argparse.ArgumentTypeError`, so a
bad value (``nan``, ``inf``, ``-1``, ``1e999``, ``ten``) is a usage error (exit code 2) that says
what is allowed, never a traceback nor a limit silently switched off.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# The largest memory or storage size in GiB anything accepts: 1 PiB, far above any machine,
# and small enough that its bytes fit every limit the kernel takes.
MAX_GIB = float(1 << 20)
# The longest time in seconds: 30 days.
MAX_SECONDS = 30 * 86400.0


def number(*, minimum: float = 0.0, maximum: float = math.inf,
           above_minimum: bool = False) -> Callable[[str], float]:
    """A finite number from ``minimum`` (excluded if ``above_minimum``) to ``maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {_shown(text)}")
        if value < minimum or (above_minimum and value == minimum):
            bound = "more than" if above_minimum else "at least"
            raise argparse.ArgumentTypeError(
                f"must be {bound} {_fmt(minimum)}, not {_shown(text)}")
        if value > maximum:
            raise argparse.ArgumentTypeError(
                f"must be at most {_fmt(maximum)}, not {_shown(text)}")
        return value

    return parse


def whole(*, minimum: int = 0, maximum: int) -> Callable[[str], int]:
    """A whole number from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            # Bounded before int(): a 5000-digit text is an error, not a slow conversion.
            value = int(text) if len(text.strip()) <= 20 else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {_shown(text)}") from None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {minimum} to {maximum}, not {_shown(text)}")
        return value

    return parse


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:30] + "...")


size_gib = number(maximum=MAX_GIB, above_minimum=True)
"""A memory or storage size in GiB: more than 0, at most :data:`MAX_GIB`."""
seconds = number(maximum=MAX_SECONDS, above_minimum=True)
"""A time in seconds: more than 0, at most :data:`MAX_SECONDS`."""
price = number()
"""A price (GLM per unit of usage): finite and not negative."""
