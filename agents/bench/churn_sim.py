"""Synthetic order histories with known churn, for ``tagger churn report``.

Customers follow a BG/NBD process (time in days): the first order on the customer's first
day, repeat orders at Poisson rate ``lambda ~ Gamma(r, alpha)``, and after every repeat order
they drop out for good with probability ``p ~ Beta(a, b)``; the dropout time is the ground
truth. The generator also emits what the stream sees besides orders, and these carry churn
signal by construction (the report says so): alive customers log in at ``2 lambda + 0.03`` a
day and at a tenth of that after dropping out; every customer opens a complaint at 0.002 a
day, and a churner opens one in the 30 days before dropping out with probability 0.3.
Events up to the cut-off are folded through :class:`stream.domain.state.CustomerState` exactly as
the stream does, so the facts are the stream's facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.domain.events import AMOUNT_SCALE, Event, LoginEvent, OrderEvent, TicketEvent
from stream.domain.state import DAY_MS, CustomerState

START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: day 0 of every simulation
TRUE_PARAMS = (0.5, 15.0, 0.8, 4.0)  # r, alpha (days), a, b of the generator


@dataclass(frozen=True)
class SimCustomer:
    """One simulated customer: facts at the cut-off and the ground truth."""

    customer_id: str
    facts: dict[str, Any]
    churned: bool  # dropped out at or before the cut-off (hidden from the stream)
    buys_next: bool  # has a paid order in the holdout period after the cut-off


def _poisson_times(rng: np.random.Generator, rate: float, start: float, end: float) -> list[float]:
    if rate <= 0 or end <= start:
        return []
    count = int(rng.poisson(rate * (end - start)))
    return sorted(float(t) for t in rng.uniform(start, end, count))


def _orders(rng: np.random.Generator, birth: float, end: float) -> tuple[list[float], float | None, float]:
    """Order days from ``birth`` up to ``end``, the dropout day (None: alive at ``end``), the rate."""
    r, alpha, a, b = TRUE_PARAMS
    rate, p = rng.gamma(r, 1.0 / alpha), rng.beta(a, b)
    times, t = [birth], birth
    while True:
        t += rng.exponential(1.0 / rate)
        if t > end:
            return times, None, rate
        times.append(t)
        if rng.random() < p:
            return times, t, rate


def _events(rng: np.random.Generator, cid: str, birth: float, cutoff: float, end: float) -> tuple[
        list[Event], float | None, list[float]]:
    orders, dropout, order_rate = _orders(rng, birth, end)
    rate = 2.0 * order_rate + 0.03
    stop = end if dropout is None else dropout
    logins = _poisson_times(rng, rate, birth, stop) + _poisson_times(rng, rate / 10, stop, end)
    complaints = _poisson_times(rng, 0.002, birth, stop)
    if dropout is not None and rng.random() < 0.3:
        complaints.append(max(birth, dropout - rng.uniform(0, 30)))
    events: list[Event] = []
    for i, t in enumerate(orders):
        amount = int(rng.lognormal(3.9, 0.6) * AMOUNT_SCALE)
        events.append(OrderEvent(f"{cid}-o{i}", cid, _ms(t), f"{cid}-o{i}", amount, "paid", None, 1))
    events += [LoginEvent(f"{cid}-l{i}", cid, _ms(t), None, None, "web") for i, t in enumerate(logins)]
    for i, t in enumerate(complaints):
        tid = f"{cid}-t{i}"
        events.append(TicketEvent(f"{tid}-a", cid, _ms(t), tid, "opened", "complaint", "medium"))
        if rng.random() < 0.5:
            events.append(TicketEvent(f"{tid}-b", cid, _ms(t + 1), tid, "escalated", "complaint", "high"))
        if rng.random() < 0.5:
            events.append(TicketEvent(f"{tid}-c", cid, _ms(t + rng.uniform(2, 20)), tid, "resolved", "", "low"))
    events.sort(key=lambda e: e.ts)
    return [e for e in events if e.ts <= _ms(cutoff)], dropout, [t for t in orders if cutoff < t <= end]


def _ms(day: float) -> int:
    return START_MS + int(day * DAY_MS)


def simulate(customers: int, seed: int, *, history_days: float = 365.0, holdout_days: float = 90.0) -> list[
        SimCustomer]:
    """``customers`` histories born uniformly over ``history_days``; facts at the end of it."""
    rng = np.random.default_rng(seed)
    cutoff, end = history_days, history_days + holdout_days
    result = []
    for n in range(customers):
        cid = f"sim-{n:06d}"
        events, dropout, later = _events(rng, cid, float(rng.uniform(0, history_days)), cutoff, end)
        state = CustomerState()
        for event in events:
            state.apply(event, "sim:0", -1, event.event_id)
        churned = dropout is not None and dropout <= cutoff
        result.append(SimCustomer(cid, state.aggregates(_ms(cutoff)), churned, bool(later)))
    return result


def precision_recall(flagged: list[bool], positive: list[bool]) -> tuple[float, float]:
    """Precision and recall of ``flagged`` against ``positive`` (NaN when undefined)."""
    hits = sum(f and p for f, p in zip(flagged, positive, strict=True))
    n_flagged, n_pos = sum(flagged), sum(positive)
    return (hits / n_flagged if n_flagged else float("nan"), hits / n_pos if n_pos else float("nan"))


def cdnow_holdout(path: str, calibration_end: str = "19970930") -> tuple[list[dict[str, Any]], list[bool], float]:
    """The CDNOW log (shipped by ``lifetimes``) split into calibration and hold-out.

    Returns each customer's facts at the end of calibration (built by feeding the
    calibration purchases through :class:`CustomerState`, as the stream would), whether
    they bought again in the hold-out period, and the hold-out length in days.
    """
    from datetime import UTC, datetime

    def day_ms(text: str) -> int:
        return int(datetime.strptime(text, "%Y%m%d").replace(tzinfo=UTC).timestamp() * 1000)

    cut = day_ms(calibration_end) + DAY_MS - 1
    states: dict[str, CustomerState] = {}
    bought_later: dict[str, bool] = {}
    last_ts = cut
    with open(path, encoding="utf-8") as fh:
        next(fh)  # header
        for n, line in enumerate(fh):
            cid, date, _, dollars = line.split()
            ts = day_ms(date) + 12 * 3600 * 1000  # one purchase per day-line, at noon
            last_ts = max(last_ts, ts)
            if ts > cut:
                bought_later[cid] = True
                continue
            state = states.setdefault(cid, CustomerState())
            order = OrderEvent(f"c{n}", cid, ts, f"o{n}", round(float(dollars) * AMOUNT_SCALE), "paid", None, 1)
            state.apply(order, "cdnow:0", n, f"order:c{n}")
    customers = sorted(states)
    facts = [states[c].aggregates(cut) for c in customers]
    return facts, [not bought_later.get(c, False) for c in customers], (last_ts - cut) / DAY_MS
