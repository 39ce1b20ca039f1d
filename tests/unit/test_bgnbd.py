"""BG/NBD closed forms against lifetimes / direct integration, and the maximum-likelihood fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from rules.bgnbd import expected_purchases, fit_bgnbd, p_alive

CDNOW = (0.243, 4.414, 0.793, 2.426)  # Fader, Hardie & Lee (2005), time in weeks
CASES = [(2, 30.43, 38.86), (0, 0.0, 38.86), (1, 1.71, 38.86), (7, 35.71, 38.86), (50, 38.0, 39.0)]


def _posterior_expectation(x: float, t_x: float, T: float, t: float) -> tuple[float, float]:
    """P(alive) and E[X(T, T+t)] by integrating over (lambda, p) directly, not via the closed forms.

    Substituting lambda = v^(1/r) and p = s^(1/a) absorbs the prior's singular powers, so the
    integrands are smooth; normalising constants cancel in the ratios.
    """
    r, alpha, a, b = CDNOW

    def parts(v: float, s: float) -> tuple[float, float, float]:
        lam, p = v ** (1 / r), s ** (1 / a)
        prior = math.exp(-alpha * lam) * (1 - p) ** (b - 1)
        alive = prior * (1 - p) ** x * lam**x * math.exp(-lam * T)
        dead = prior * p * (1 - p) ** (x - 1) * lam**x * math.exp(-lam * t_x) if x > 0 else 0.0
        return alive, dead, alive * -math.expm1(-lam * p * t) / p

    v_max = (40.0 / (alpha + t_x)) ** r

    def integral(i: int) -> float:
        return float(integrate.dblquad(lambda s, v: parts(v, s)[i], 0.0, v_max, 0.0, 1.0 - 1e-15,
                                       epsabs=0, epsrel=1e-8)[0])

    alive, dead, expected = integral(0), integral(1), integral(2)
    return alive / (alive + dead), expected / (alive + dead)


@pytest.mark.parametrize(("x", "t_x", "T"), CASES[:3])
def test_closed_forms_match_direct_integration(x: float, t_x: float, T: float) -> None:
    alive, expected = _posterior_expectation(x, t_x, T, 39.0)
    assert p_alive(*CDNOW, x, t_x, T) == pytest.approx(alive, rel=2e-3)
    assert expected_purchases(*CDNOW, x, t_x, T, 39.0) == pytest.approx(expected, rel=2e-3)


def test_published_cdnow_values() -> None:
    # customer 1 of the CDNOW sample (x=2, t_x=30.43, T=38.86): P(alive) 0.7266, E[X(39)] 1.226
    assert p_alive(*CDNOW, 2, 30.43, 38.86) == pytest.approx(0.72658, abs=1e-4)
    assert expected_purchases(*CDNOW, 2, 30.43, 38.86, 39.0) == pytest.approx(1.22603, abs=1e-4)


def test_against_lifetimes() -> None:
    lifetimes = pytest.importorskip("lifetimes")
    import pandas as pd

    fitter = lifetimes.BetaGeoFitter()
    fitter.params_ = pd.Series(dict(zip(("r", "alpha", "a", "b"), CDNOW, strict=True)))
    for x, t_x, T in CASES:
        assert p_alive(*CDNOW, x, t_x, T) == pytest.approx(
            float(np.ravel(fitter.conditional_probability_alive(x, t_x, T))[0]), rel=1e-9)
        for t in (1.0, 39.0, 200.0):
            ours = expected_purchases(*CDNOW, x, t_x, T, t)
            theirs = float(np.ravel(fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T))[0])
            assert ours == pytest.approx(theirs, rel=1e-9)


def test_one_time_buyer_is_alive_and_edge_cases() -> None:
    assert p_alive(*CDNOW, 0, 0.0, 38.86) == 1.0
    assert p_alive(*CDNOW, 0, 0.0, 1000.0) == 1.0
    assert expected_purchases(*CDNOW, 3, 10.0, 20.0, 0.0) == 0.0
    # a = 1 is a removable singularity
    near = expected_purchases(0.5, 4.0, 1.0 + 1e-6, 2.0, 3, 10.0, 20.0, 30.0)
    assert expected_purchases(0.5, 4.0, 1.0, 2.0, 3, 10.0, 20.0, 30.0) == pytest.approx(near, rel=1e-4)
    # frequent buyers stay finite
    assert math.isfinite(expected_purchases(*CDNOW, 5000, 38.5, 39.0, 39.0))


def test_fit_on_cdnow_reproduces_published_params() -> None:
    datasets = pytest.importorskip("lifetimes.datasets")
    data = datasets.load_cdnow_summary(index_col=[0])
    fit = fit_bgnbd(data["frequency"], data["recency"], data["T"])
    assert fit.converged
    assert (fit.r, fit.alpha, fit.a, fit.b) == pytest.approx(CDNOW, rel=5e-3)
    assert fit.log_likelihood == pytest.approx(-9582.4, abs=0.5)


def _simulate(n: int, params: tuple[float, float, float, float], seed: int) -> tuple[list[float], ...]:
    r, alpha, a, b = params
    rng = np.random.default_rng(seed)
    xs, txs, Ts = [], [], []
    for _ in range(n):
        lam, p, T = rng.gamma(r, 1 / alpha), rng.beta(a, b), rng.uniform(30, 365)
        t, x, t_x = 0.0, 0, 0.0
        while True:
            t += rng.exponential(1 / lam)
            if t > T:
                break
            x, t_x = x + 1, t
            if rng.random() < p:
                break
        xs.append(float(x))
        txs.append(t_x)
        Ts.append(T)
    return xs, txs, Ts


def test_fit_recovers_known_params() -> None:
    true = (0.6, 20.0, 0.8, 3.0)
    fit = fit_bgnbd(*_simulate(20_000, true, seed=3))
    assert fit.converged
    assert fit.r == pytest.approx(true[0], rel=0.15)
    assert fit.alpha == pytest.approx(true[1], rel=0.2)
    assert fit.a == pytest.approx(true[2], rel=0.35)
    assert fit.b == pytest.approx(true[3], rel=0.4)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no customers"):
        fit_bgnbd([], [], [])
    with pytest.raises(ValueError, match="t_x <= T"):
        fit_bgnbd([1.0], [5.0], [2.0])
