"""Numbers as users write them (``0.1``, ``8/255``), for the CLI, recipes and method specs."""

from __future__ import annotations

import math

from convertsnn.errors import ConvertSNNError


def parse_number(text: str, what: str) -> float:
    """``"0.1"``, ``"8/255"`` or ``"0.5/255"`` to a float."""
    try:
        numerator, _, denominator = text.strip().partition("/")
        value = float(numerator) / float(denominator or "1")
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    except (ValueError, ZeroDivisionError):
        raise ConvertSNNError(
            f"{what} '{text}' is not a number (write e.g. 0.1 or 8/255)"
        ) from None


def parse_number_list(text: str, what: str) -> list[float]:
    """``"2/255,8/255"`` to floats (at least one)."""
    values = [parse_number(part, what) for part in text.split(",") if part.strip()]
    if not values:
        raise ConvertSNNError(f"{what} is empty; give comma-separated numbers like 2/255,8/255")
    return values
