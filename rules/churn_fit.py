"""Fitting and back-testing the learned churn model (:mod:`rules.churn_model`) on labelled facts.

An example is one customer's facts at a cut date and whether they placed **no** paid order
in the ``horizon_days`` after it (the event the risk is the probability of). The fit is
scikit-learn's ``LogisticRegression`` with its defaults (L2, C = 1, lbfgs) on features
standardised by their training mean and standard deviation; features that do not vary in
the training examples are left out (they could not be weighed). Pure: no files, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rules.churn_model import BGNBD_FEATURES, FEATURES, ChurnModel, feature_values

__all__ = ["DEFAULT_FEATURES", "Backtest", "CalibrationRow", "Example", "backtest", "fit_churn_model"]

#: every feature, in catalogue order; the BG/NBD ones only when parameters are given
DEFAULT_FEATURES = tuple(FEATURES)


@dataclass(frozen=True)
class Example:
    """One customer at one cut: the facts then, and whether no paid order followed within the horizon."""

    customer_id: str
    cut_ms: int
    facts: Mapping[str, Any]
    no_purchase: bool


@dataclass(frozen=True)
class CalibrationRow:
    """One decile of the predicted risk: how many, the mean prediction, the observed rate of no purchase."""

    decile: int
    count: int
    predicted: float
    observed: float


@dataclass(frozen=True)
class Backtest:
    """Held-out metrics of a model: ROC AUC of the risk, precision and recall of ``high``, calibration."""

    examples: int
    no_purchase: int
    auc: float
    precision_high: float
    recall_high: float
    calibration: tuple[CalibrationRow, ...]

    @property
    def max_calibration_gap(self) -> float:
        """The largest |predicted - observed| over the deciles."""
        return max((abs(r.predicted - r.observed) for r in self.calibration), default=float("nan"))


def matrix(names: tuple[str, ...], examples: Sequence[Example], bgnbd: tuple[float, float, float, float] | None,
           horizon: float) -> np.ndarray:
    """The raw feature values of every example (one row each), as the worker computes them."""
    rows = [feature_values(names, e.facts, bgnbd, horizon) for e in examples]
    return np.asarray(rows, dtype=float).reshape(len(examples), len(names))


def fit_churn_model(examples: Sequence[Example], horizon_days: float, *,
                    bgnbd: tuple[float, float, float, float] | None = None,
                    features: tuple[str, ...] = DEFAULT_FEATURES,
                    trained: Mapping[str, Any] | None = None) -> ChurnModel:
    """Logistic regression of "no paid order within ``horizon_days``" on the features of ``examples``."""
    from sklearn.linear_model import LogisticRegression

    unknown = [n for n in features if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s): {', '.join(unknown)}")
    names = tuple(n for n in features if bgnbd is not None or n not in BGNBD_FEATURES)
    labels = np.asarray([e.no_purchase for e in examples], dtype=bool)
    if len(examples) < 20 or labels.all() or not labels.any():
        raise ValueError(f"need at least 20 examples of both outcomes; got {len(examples)} examples, "
                         f"{int(labels.sum())} without a purchase")
    x = matrix(names, examples, bgnbd, horizon_days)
    means, scales = x.mean(axis=0), x.std(axis=0)
    keep = scales > 1e-12
    if not keep.any():
        raise ValueError("no feature varies across the examples")
    names = tuple(n for n, k in zip(names, keep, strict=True) if k)
    means, scales = means[keep], scales[keep]
    fitted = LogisticRegression().fit((x[:, keep] - means) / scales, labels)
    return ChurnModel(names=names, means=tuple(float(v) for v in means), scales=tuple(float(v) for v in scales),
                      coefs=tuple(float(v) for v in fitted.coef_[0]), intercept=float(fitted.intercept_[0]),
                      horizon_days=float(horizon_days), bgnbd=bgnbd, trained=trained)


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half); NaN without both classes."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(predicted: Sequence[float], observed: Sequence[bool], bins: int = 10) -> tuple[CalibrationRow, ...]:
    """Mean prediction and observed rate per decile of the prediction (sorted, split into equal counts)."""
    order = np.argsort(np.asarray(predicted, dtype=float), kind="stable")
    p, y = np.asarray(predicted, dtype=float)[order], np.asarray(observed, dtype=float)[order]
    rows = []
    for i, part in enumerate(np.array_split(np.arange(len(p)), bins), start=1):
        if len(part):
            rows.append(CalibrationRow(i, len(part), float(p[part].mean()), float(y[part].mean())))
    return tuple(rows)


def backtest(risks: Sequence[float], levels: Sequence[str], no_purchase: Sequence[bool]) -> Backtest:
    """Metrics of risks (and the levels they gave) against what happened."""
    flagged = [level == "high" for level in levels]
    hits = sum(f and p for f, p in zip(flagged, no_purchase, strict=True))
    n_flagged, n_pos = sum(flagged), sum(no_purchase)
    return Backtest(
        examples=len(risks), no_purchase=n_pos, auc=roc_auc(risks, no_purchase),
        precision_high=hits / n_flagged if n_flagged else math.nan,
        recall_high=hits / n_pos if n_pos else math.nan,
        calibration=calibration(risks, no_purchase),
    )
