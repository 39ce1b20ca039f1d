"""The BG/NBD buy-till-you-die model (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

While alive, a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``
(shape ``r``, rate ``alpha``); after every purchase they drop out for good with probability
``p ~ Beta(a, b)``. A customer is summarised by ``(x, t_x, T)``: ``x`` repeat purchases
(purchases after the first), ``t_x`` the time of the last purchase and ``T`` the age, both
measured from the first purchase. The time unit is whatever the inputs use; in this project
it is **days** everywhere (ruleset parameters, ``tagger churn fit``, the churn component), so
``alpha`` is in days and ``r / alpha`` is the mean purchase rate per day.

The closed forms below are the paper's equations (2), (10) and (13). The conditional
expectation uses Euler's transformation of the Gauss hypergeometric function,
``2F1(A, B; C; z) = (1 - z)^(C-A-B) 2F1(C-A, C-B; C; z)``, which turns
``((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)`` into
``(1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)``: no huge power times a huge series for
frequent buyers, and the series converges faster as ``x`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, gammaln, hyp2f1

__all__ = ["BGNBDFit", "expected_purchases", "fit_bgnbd", "log_likelihood", "p_alive"]


def _odds_dead(r: float, alpha: float, a: float, b: float, x: float, t_x: float, T: float) -> float:
    """``a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x)``: P(dead)/P(alive) given the history (0 if x=0)."""
    if x <= 0:
        return 0.0
    return a / (b + x - 1.0) * math.exp((r + x) * math.log((alpha + T) / (alpha + t_x)))


def p_alive(r: float, alpha: float, a: float, b: float, x: float, t_x: float, T: float) -> float:
    """P(still alive at T | x repeat purchases, last at t_x). Exactly 1 when x = 0 (no repeat yet)."""
    return 1.0 / (1.0 + _odds_dead(r, alpha, a, b, x, t_x, T))


def expected_purchases(
    r: float, alpha: float, a: float, b: float, x: float, t_x: float, T: float, t: float
) -> float:
    """E[number of purchases in (T, T + t] | x, t_x, T], the paper's equation (10)."""
    if t <= 0:
        return 0.0
    if abs(a - 1.0) < 1e-9:  # removable singularity of the closed form at a = 1
        a = 1.0 + 1e-9
    c = a + b + x - 1.0
    z = t / (alpha + T + t)
    tail = math.exp((a - 1.0) * math.log1p(-z)) * float(hyp2f1(a + b - 1.0 - r, a - 1.0, c, z))
    return c / (a - 1.0) * (1.0 - tail) * p_alive(r, alpha, a, b, x, t_x, T)


def log_likelihood(
    params: Sequence[float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Sum of the individual log-likelihoods (the paper's equation 6), optionally weighted by counts."""
    r, alpha, a, b = params
    base = (
        gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        + betaln(a, b + x) - betaln(a, b)
    )
    alive = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    dead = np.where(
        repeat,
        np.log(a) - np.log(np.where(repeat, b + x - 1.0, 1.0)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    ll = base + np.logaddexp(alive, dead)
    return float(np.sum(ll if weights is None else ll * weights))


@dataclass(frozen=True)
class BGNBDFit:
    """Maximum-likelihood estimates and how the optimiser ended."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int
    converged: bool
    message: str


def fit_bgnbd(
    x: Sequence[float] | np.ndarray,
    t_x: Sequence[float] | np.ndarray,
    T: Sequence[float] | np.ndarray,
    *,
    initial: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    penalizer: float = 0.0,
) -> BGNBDFit:
    """Fit (r, alpha, a, b) by maximum likelihood: L-BFGS-B over the log of each parameter.

    Identical (x, t_x, T) rows are collapsed with counts first, so large histories stay fast.
    ``penalizer`` adds ``penalizer * sum(params^2)`` to the negative log-likelihood (0: none).
    """
    from scipy.optimize import minimize

    data = np.column_stack([np.asarray(v, dtype=float) for v in (x, t_x, T)])
    if data.size == 0:
        raise ValueError("no customers to fit")
    if np.any(data[:, 0] < 0) or np.any(data[:, 1] < 0) or np.any(data[:, 1] > data[:, 2] + 1e-9):
        raise ValueError("need x >= 0 and 0 <= t_x <= T for every customer")
    rows, counts = np.unique(data, axis=0, return_counts=True)
    cx, ctx, cT = rows[:, 0], rows[:, 1], rows[:, 2]
    weights = counts.astype(float)
    scale = float(np.sum(weights))

    def objective(log_params: np.ndarray) -> float:
        params = np.exp(log_params)
        value = -log_likelihood(params, cx, ctx, cT, weights) + penalizer * float(np.sum(params**2))
        return value / scale if math.isfinite(value) else 1e300

    result = minimize(
        objective, np.log(np.asarray(initial, dtype=float)), method="L-BFGS-B",
        bounds=[(-12.0, 12.0)] * 4, options={"maxiter": 2000},
    )
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BGNBDFit(
        r=r, alpha=alpha, a=a, b=b,
        log_likelihood=log_likelihood((r, alpha, a, b), cx, ctx, cT, weights),
        customers=int(scale), converged=bool(result.success), message=str(result.message),
    )
