"""The weighted 0..100 customer score."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rules.model import ScoreWeights


def _clamp(value: float) -> float:
    if value.__class__ is float and 0.0 <= value <= 100.0:  # the usual case (a NaN fails the test)
        return value
    if not isinstance(value, int | float) or math.isnan(value):
        return 0.0
    return min(100.0, max(0.0, float(value)))


def weighted_score(
    weights: ScoreWeights, dims: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """Combine 0..100 dimension values into one 0..100 score.

    Missing dimensions count as 0, values are clamped to 0..100, unknown
    dimensions are ignored. Returns the score rounded to 2 decimals and the
    per-dimension weighted contribution (also rounded to 2 decimals).
    """
    values: list[float] = []
    breakdown: dict[str, float] = {}
    for name, weight in weights.pairs():
        value = weight * _clamp(dims.get(name, 0.0))
        values.append(value)
        breakdown[name] = round(value, 2)
    return min(100.0, max(0.0, round(math.fsum(values), 2))), breakdown
