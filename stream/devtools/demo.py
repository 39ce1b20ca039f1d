"""Demo event generator: orders, logins and support tickets for simulated customers.

Customers differ so that tags and tiers are interesting: a heavy-tailed (Pareto)
order value and order rhythm (weekly, monthly, rare buyers) make a few of them big
spenders; some go silent after a while; some complain a lot. Each event is picked
by drawing a customer in proportion to their activity, so ``time_step_ms`` sets how
much simulated time the stream covers (e.g. 200 customers, 60_000 ms per event:
about 40 days per 60k events, enough for the weekly/monthly rhythms to show).

The output follows the input contract: UTF-8 JSON, Kafka key = ``customer_id``,
every event has ``event_id``, ``customer_id`` and ``ts`` (RFC 3339 with an offset
or epoch milliseconds; both are used). ``margin`` is the order's profit in major
units. Orders reuse their ``order_id`` when a placed order is later paid or
cancelled and when a paid order is refunded; tickets follow
opened → (escalated) → resolved → (reopened → ...). Behaviour comes from
``random.Random(seed)``. Ids (event, order, ticket) are random per run unless
``start_ms`` is set, so two demo runs into one broker never reuse an id (the
tagger would drop repeats as producer retries), while a fixed ``start_ms``
reproduces every byte.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from stream.kafka.kafka_admin import Bootstrap, make_producer

log = logging.getLogger(__name__)

KINDS = ("order", "login", "ticket")
DEFAULT_TOPICS: Mapping[str, str] = {
    "order": "orders", "login": "logins", "ticket": "support-tickets",
}
_MAX_CATCH_UP_S = 1.0  # a pacer further behind than this restarts its schedule: no floods


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and how fast."""

    customers: int = 200
    """Number of customers, ids ``cust-00000`` onwards."""
    rate: float = 50.0
    """Events per second; 0 produces as fast as possible."""
    seed: int = 7
    """Seed of all behaviour, so a run is reproducible."""
    currency: str = "USD"
    """Currency of every amount."""
    start_ms: int | None = None
    """Event time of the first event, epoch ms (default: now)."""
    time_step_ms: float | None = None
    """Event time advance per event; default 1000/rate (real time), or the wall clock
    at generation time when rate is 0."""
    topics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    """Event kind (order, login, ticket) → topic name."""

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError("customers must be >= 1")
        if not (self.rate >= 0 and math.isfinite(self.rate)):
            raise ValueError("rate must be a finite number >= 0")
        if self.time_step_ms is not None and self.time_step_ms < 0:
            raise ValueError("time_step_ms must be >= 0")
        if missing := [k for k in KINDS if k not in self.topics]:
            raise ValueError(f"topics has no entry for {missing}")

    @property
    def step_ms(self) -> float | None:
        """Event time advance per event; None means the wall clock."""
        if self.time_step_ms is not None:
            return self.time_step_ms
        return 1000.0 / self.rate if self.rate > 0 else None


# --- customers --------------------------------------------------------------------

_RHYTHMS = {"weekly": 1 / 7, "monthly": 1 / 30, "rare": 1 / 120}  # orders per day
_RHYTHM_SHARE = {"weekly": 0.2, "monthly": 0.5, "rare": 0.3}
_CATEGORIES = ("electronics", "apparel", "home", "grocery", "beauty", "sports", "books", "toys")
_CHANNELS = ("web", "app", "store")
_SEVERITIES = ("low", "medium", "high", "critical")
_OFFSETS = tuple(timezone(timedelta(minutes=m)) for m in (0, 60, -300, -480, 330, 540))


@dataclass(slots=True)
class _Ticket:
    ticket_id: str
    category: str
    severity: int
    state: str = "opened"


@dataclass(slots=True)
class Customer:
    """One simulated customer: behaviour fixed at creation, plus open order/ticket state."""

    id: str
    rhythm: str
    weights: tuple[float, float, float]  # order, login, ticket events per day
    order_value_cents: float  # typical order value (Pareto across customers)
    margin_rate: float
    complainer: bool
    channel_weights: tuple[float, float, float]
    favourite: tuple[str, str]
    tz: timezone
    silent_after: int = 0  # global event number after which they go quiet (0: never)
    pending: tuple[str, int, list[dict[str, Any]] | None] | None = None  # placed, unpaid
    last_paid: tuple[str, int, list[dict[str, Any]] | None] | None = None
    ticket: _Ticket | None = None

    @property
    def total_weight(self) -> float:
        return sum(self.weights)

    def pick_kind(self, rng: random.Random) -> str:
        return rng.choices(KINDS, self.weights)[0]


def _customer(rng: random.Random, index: int, customers: int) -> Customer:
    rhythm = rng.choices(list(_RHYTHM_SHARE), list(_RHYTHM_SHARE.values()))[0]
    orders = _RHYTHMS[rhythm] * rng.lognormvariate(0, 0.4)
    complainer = rng.random() < 0.1
    tickets = orders * (0.8 if complainer else 0.05) + (0.02 if complainer else 0.002)
    quiet = index > 0 and rng.random() < 0.15
    return Customer(
        id=f"cust-{index:05d}",
        rhythm=rhythm,
        weights=(orders, orders * rng.uniform(1, 6), tickets),
        order_value_cents=2000 * rng.paretovariate(1.3),
        margin_rate=rng.uniform(0.05, 0.45),
        complainer=complainer,
        channel_weights=(rng.random(), rng.random(), rng.random() * 0.3),
        favourite=(rng.choice(_CATEGORIES), rng.choice(_CATEGORIES)),
        tz=rng.choice(_OFFSETS),
        silent_after=rng.randint(2 * customers, 40 * customers) if quiet else 0,
    )


def make_customers(rng: random.Random, count: int) -> list[Customer]:
    """``count`` customers with heterogeneous, seeded behaviour."""
    return [_customer(rng, i, count) for i in range(count)]


# --- events -----------------------------------------------------------------------


def _money(cents: int, rng: random.Random) -> float | str:
    """Major units, as a JSON number or a decimal string (both are allowed)."""
    return cents / 100 if rng.random() < 0.5 else f"{cents // 100}.{cents % 100:02d}"


def _timestamp(ts_ms: int, tz: timezone, rng: random.Random) -> int | str:
    if rng.random() < 0.5:
        return ts_ms
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    return moment.astimezone(tz).isoformat(timespec="milliseconds")


class EventFactory:
    """Builds one event of a kind for a customer, advancing their order/ticket state."""

    def __init__(self, rng: random.Random, ids: random.Random, currency: str) -> None:
        self.rng, self.ids, self.currency = rng, ids, currency

    def _id(self, prefix: str = "") -> str:
        return f"{prefix}{self.ids.getrandbits(128):032x}"

    def make(self, kind: str, customer: Customer, ts_ms: int) -> dict[str, Any]:
        body = {"order": self._order, "login": self._login, "ticket": self._ticket}[kind](customer)
        ts = _timestamp(ts_ms, customer.tz, self.rng)
        return {"event_id": self._id(), "customer_id": customer.id, "ts": ts, **body}

    def _items(self, customer: Customer) -> list[dict[str, Any]]:
        rng, lines = self.rng, self.rng.choices((1, 2, 3, 4), (50, 25, 15, 10))[0]
        items = []
        for _ in range(lines):
            quantity = rng.choices((1, 2, 3, 5), (70, 20, 7, 3))[0]
            unit = max(99, round(customer.order_value_cents * rng.lognormvariate(0, 0.5)
                                 / (lines * quantity)))
            category = rng.choice(customer.favourite if rng.random() < 0.7 else _CATEGORIES)
            items.append({"sku": f"{category[:3].upper()}-{rng.randint(1000, 9999)}",
                          "category": category, "quantity": quantity, "unit_price": unit / 100})
        return items

    def _new_order(self, customer: Customer) -> tuple[str, int, list[dict[str, Any]] | None]:
        if self.rng.random() < 0.7:
            items = self._items(customer)
            cents = sum(round(i["unit_price"] * 100) * i["quantity"] for i in items)
            return self._id("ord-"), cents, items
        cents = max(99, round(customer.order_value_cents * self.rng.lognormvariate(0, 0.5)))
        return self._id("ord-"), cents, None

    def _order(self, customer: Customer) -> dict[str, Any]:
        rng, roll = self.rng, self.rng.random()
        if customer.pending and roll < 0.6:
            (order_id, cents, items), customer.pending = customer.pending, None
            status = "paid" if rng.random() < 0.85 else "cancelled"
        elif customer.last_paid and roll < 0.04:
            (order_id, cents, items), customer.last_paid = customer.last_paid, None
            status = "refunded"
        else:
            order_id, cents, items = self._new_order(customer)
            status = "paid" if customer.pending or rng.random() < 0.9 else "placed"
            if status == "placed":
                customer.pending = (order_id, cents, items)
        if status == "paid":
            customer.last_paid = (order_id, cents, items)
        event: dict[str, Any] = {"order_id": order_id, "amount": _money(cents, rng),
                                 "status": status}
        if rng.random() < 0.8:
            event["currency"] = self.currency
        if rng.random() < 0.6:
            event["margin"] = round(cents * customer.margin_rate) / 100
        if items is not None:
            event["items"] = items
        return event

    def _login(self, customer: Customer) -> dict[str, Any]:
        rng, event = self.rng, dict[str, Any]()
        if rng.random() < 0.85:
            event["session_seconds"] = round(rng.lognormvariate(math.log(240), 0.9))
        if rng.random() < 0.85:
            event["pages_viewed"] = 1 + int(rng.expovariate(1 / 6))
        if rng.random() < 0.9:
            event["channel"] = rng.choices(_CHANNELS, customer.channel_weights)[0]
        return event

    def _ticket(self, customer: Customer) -> dict[str, Any]:
        rng, ticket = self.rng, customer.ticket
        if ticket is None or (ticket.state == "resolved" and rng.random() >= 0.15):
            ticket = customer.ticket = self._open_ticket(customer)
        elif ticket.state == "resolved":
            ticket.state = "reopened"
        elif ticket.state == "escalated" or rng.random() >= 0.1 + 0.1 * ticket.severity:
            ticket.state = "resolved"
        else:
            ticket.state, ticket.severity = "escalated", min(ticket.severity + 1, 3)
        return {"ticket_id": ticket.ticket_id, "action": ticket.state,
                "category": ticket.category, "severity": _SEVERITIES[ticket.severity]}

    def _open_ticket(self, customer: Customer) -> _Ticket:
        shares = (60, 20, 20) if customer.complainer else (15, 60, 25)
        category = self.rng.choices(("complaint", "inquiry", "billing"), shares)[0]
        severity = self.rng.choices((0, 1, 2, 3), (45, 35, 15, 5))[0]
        severity = min(severity + (category == "complaint"), 3)
        return _Ticket(self._id("tkt-"), category, severity)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class DemoGenerator:
    """An endless, reproducible stream of ``(topic, key, value)`` demo events."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.start_ms = config.start_ms if config.start_ms is not None else _now_ms()
        self._rng = random.Random(config.seed)
        self._customers = make_customers(self._rng, config.customers)
        # ids: reproducible with a fixed start, unique per run with the default one
        seeded = config.start_ms is not None
        ids = random.Random(f"{config.seed}:{config.start_ms}" if seeded else None)
        self._factory = EventFactory(self._rng, ids, config.currency)
        self._silencing = sorted(
            (c.silent_after, i) for i, c in enumerate(self._customers) if c.silent_after
        )
        self._active = list(self._customers)
        self._cumulative = self._weights()

    def _weights(self) -> list[float]:
        total, cumulative = 0.0, []
        for customer in self._active:
            total += customer.total_weight
            cumulative.append(total)
        return cumulative

    def _silence(self, n: int) -> None:
        """Remove customers whose silence starts at event ``n`` from the draw."""
        changed = False
        while self._silencing and self._silencing[0][0] <= n and len(self._active) > 1:
            self._active.remove(self._customers[self._silencing.pop(0)[1]])
            changed = True
        if changed:
            self._cumulative = self._weights()

    def _pick(self) -> Customer:
        point = self._rng.random() * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, point)
        return self._active[min(index, len(self._active) - 1)]

    def _event_time(self, n: int, previous: int) -> int:
        step = self.config.step_ms
        if step is None:
            return max(previous, _now_ms())
        return self.start_ms + round(n * step)

    def events(self) -> Iterator[tuple[str, bytes, bytes]]:
        """Yield events forever: ``(topic, key, JSON value)``."""
        ts = self.start_ms
        for n in range(1 << 62):
            self._silence(n)
            customer = self._pick()
            kind = customer.pick_kind(self._rng)
            ts = self._event_time(n, ts)
            event = self._factory.make(kind, customer, ts)
            yield self.config.topics[kind], customer.id.encode(), orjson.dumps(event)

    def take(self, count: int) -> list[tuple[str, bytes, bytes]]:
        """The next ``count`` events as a list."""
        return [e for _, e in zip(range(count), self.events(), strict=False)]


class _Pacer:
    """Monotonic-clock schedule: event n is due at t0 + n/rate (no per-event drift)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.base = 0

    def delay(self, n: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        due = self.t0 + (n - self.base) / self.rate
        if now - due > _MAX_CATCH_UP_S:
            self.t0, self.base = now, n
            return 0.0
        return due - now


class _Deliveries:
    """Counts failed deliveries (the producer reports errors only)."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: Any = None

    def __call__(self, error: Any, _msg: Any) -> None:
        if error is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = error


async def run_demo(
    bootstrap: Bootstrap,
    config: DemoConfig,
    *,
    stop: asyncio.Event | None = None,
    limit: int | None = None,
    flush_timeout: float = 30.0,
) -> int:
    """Produce demo events until ``stop`` is set or ``limit`` is reached.

    ``bootstrap``: servers, or a full librdkafka configuration (security included).

    Returns the number of events the broker acknowledged; failed deliveries are
    counted and logged as a warning.
    """
    deliveries = _Deliveries()
    producer = make_producer(
        bootstrap, on_delivery=deliveries, **{"delivery.report.only.error": True}
    )
    pacer, sent = _Pacer(config.rate), 0
    stopped = stop.is_set if stop is not None else lambda: False
    for topic, key, value in DemoGenerator(config).events():
        if (limit is not None and sent >= limit) or stopped():
            break
        if (delay := pacer.delay(sent)) > 0.001:  # shorter waits are caught up on later
            producer.poll(0)
            await asyncio.sleep(delay)
            if stopped():
                break
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0)
                await asyncio.sleep(0.005)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            await asyncio.sleep(0)
    unsent = await asyncio.to_thread(producer.flush, flush_timeout)
    failed = deliveries.failed + unsent
    if failed:
        log.warning("demo: %d of %d events not delivered (first error: %s)",
                    failed, sent, deliveries.first_error or "flush timed out")
    return sent - failed
