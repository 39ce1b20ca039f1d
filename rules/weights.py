"""Weights that must be non-negative numbers summing to 1 (score dimensions, churn components)."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, ClassVar

from .exceptions import RulesetError


class Weights:
    """Mixin for frozen dataclasses of weights; validates on creation."""

    label: ClassVar[str] = ""

    def __post_init__(self) -> None:
        values = self.as_dict()
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RulesetError(f"weight '{name}' must be a finite number, got {value!r}")
            if value < 0:
                raise RulesetError(f"weight '{name}' must be non-negative, got {value}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "_pairs", tuple((name, float(value)) for name, value in values.items()))
        total = math.fsum(values.values())
        if abs(total - 1.0) > 1e-9:
            raise RulesetError(f"{self.label} weights sum to {total:g}, not 1",
                               hint=f"adjust them so {' + '.join(values)} = 1")

    def pairs(self) -> tuple[tuple[str, float], ...]:
        """(name, weight) in declaration order, computed once (the hot path reads these)."""
        return getattr(self, "_pairs", None) or tuple(self.as_dict().items())

    def as_dict(self) -> dict[str, float]:
        """Name -> weight, in declaration order."""
        pairs = getattr(self, "_pairs", None)  # set once the weights are validated (hot path: no fields())
        if pairs is not None:
            return dict(pairs)
        this: Any = self
        return {f.name: getattr(self, f.name) for f in fields(this)}
