"""Per-customer rolling state: bounded day buckets, lifetime facts, tickets and dedupe marks.

One :class:`CustomerState` is the value of the Faust ``customers`` table, keyed by
customer_id, and is written to the changelog after every change, so it is small
and serialises to compact orjson bytes (``to_bytes`` / ``from_bytes``, exact).

Windows are exact to the UTC day. With ``day(t) = t // 86_400_000`` and
``today = day(now)``, a window of N days holds the events whose day bucket d
satisfies ``today - N < d <= today``: an event exactly N days old (by bucket) is
out, N - 1 days old is in. ``spend_prev_90d`` covers ``today - 180 < d <= today - 90``.
Events on a day after today are in no window but do count in lifetime fields;
an event later today (ts > now, same UTC day) is in today's bucket, so it counts.
Spend is net: paid amounts minus refunded amounts, each in its own event's day,
so a window can be negative when it holds a refund but not the original order.

``prune(now)`` drops buckets with ``d <= today - 366`` (no window at any time
>= now can see them) and closed tickets idle for more than 90 days; it never
changes any aggregate at any time >= now. Events at or before the pruning
horizon later update lifetime fields only. ``open_tickets`` and
``open_complaints`` reflect every applied ticket event, whatever ``now`` is. A ticket
event that arrives after its ticket was pruned (or evicted by the 200-ticket bound)
re-creates the ticket from that event alone.

Exactly-once counting: ``offsets`` holds, per source ("topic:partition" or
"rekey:topic:partition"), the last applied offset; ``recent_ids`` holds the
last 64 dedupe ids, each as a 64-bit BLAKE2b digest (:func:`id_digest`) in an
``array('Q')``: 8 bytes an id in memory and 10.7 in the changelog (base64 under
``"j"``), where the ids themselves ("order:" and a 32-digit hex event id, say) took
~41 bytes in the changelog and ~90 as Python strings. Two ids share a digest with
a chance of 2^-64: an event is taken for a duplicate by mistake with a chance of
at most 64 × 2^-64 (~3.5e-18). ``is_duplicate`` checks both; ``apply`` records both.
A negative offset means "unknown": only the id is checked and recorded. An id is
looked for in ``recent_ids`` only when its bit is set in a 1,024-bit filter of
the digests (kept in memory, never persisted): scanning 64 entries for every event
cost ~5% of a worker draining a backlog of 20,000 customers. A changelog record
written before digests (``"i"``: the ids as strings) is read and converted.

Output sequences: ``tag_seq`` and ``churn_seq`` count the ``tag-changes`` and
``churn-alerts`` messages the customer was given (:meth:`next_seq`), so every
output carries a ``seq`` and a ``change_id`` (stream/domain/sequence.py) that a replay
after a crash gives again: the counters travel in the changelog with the rest
of the state (``"q": [tag_seq, churn_seq]``, left out while both are 0: 0 bytes a
customer then, else 10 plus one per digit beyond the first of each, e.g. 11 for
``[12,3]``; a record written before them loads as 0).

Writer generation: ``generation`` is the consumer group generation the state was
last changed in (``"g"``, left out while 0, ~8 bytes a record else; not part of the
state's equality). A recovery compares it only between two states of which each
read further than the other on some source (:meth:`CustomerState.superseded_by`).
"""

from __future__ import annotations

import sys
from array import array
from base64 import b64decode, b64encode
from bisect import bisect_right
from functools import lru_cache
from hashlib import blake2b
from typing import Any

import orjson

from stream.domain.events import AMOUNT_SCALE, Event, LoginEvent, OrderEvent, TicketEvent
from stream.exceptions import StateDecodeError

__all__ = ["AGGREGATE_FIELDS", "DAY_MS", "CustomerState"]

DAY_MS = 86_400_000
HORIZON_DAYS = 366  # prune buckets with d <= today - HORIZON_DAYS
TICKET_IDLE_MS = 90 * DAY_MS  # closed tickets idle longer than this are dropped
MAX_TICKETS = 200
RECENT_IDS = 64
_ID_BITS = 1023  # id_digest(id) & _ID_BITS: the id's bit in CustomerState._id_bits
FORMAT_VERSION = 1
_SPEND, _ORDERS, _LOGINS, _COMPLAINTS, _ESCALATIONS = range(5)
_OPEN_ACTIONS = frozenset(("opened", "escalated", "reopened"))
_OPEN, _COMPLAINT, _REOPENED = 1, 2, 4  # ticket flags
_LIFETIME = ("orders_total", "max_order", "first_order_at", "last_order_at", "last_login_at",
             "first_seen_at", "last_activity_at", "last_event_ts")

_PERSISTED = ("days", "tickets", "offsets", "recent_ids", "horizon_day", "view", "profile", "manual",
              "tag_seq", "churn_seq", *_LIFETIME)
# persisted too, not part of the customer's state (__eq__): the consumer group generation it was last changed in
_WRITER = ("generation",)
# window sums, in this order, cached per UTC day (see CustomerState._sums)
_S30, _S90, _S365, _SP90, _O30, _O90, _O365, _L7, _L30, _C90, _E90, _OP90, _L365 = range(13)

_INT, _FLOAT = "int", "float"
AGGREGATE_FIELDS: dict[str, tuple[str, bool]] = {
    **{k: (_INT, False) for k in ("orders_30d", "orders_90d", "orders_365d", "orders_total",
                                  "logins_7d", "logins_30d", "open_tickets", "open_complaints", "reopened_tickets",
                                  "complaints_90d", "escalations_90d", "orders_prev_90d",
                                  "logins_365d")},
    **{k: (_FLOAT, False) for k in ("spend_30d", "spend_90d", "spend_365d", "spend_prev_90d",
                                    "max_order", "days_since_first_seen")},
    **{k: (_FLOAT, True) for k in ("mean_order_gap_days", "days_since_first_order",
                                   "days_since_last_order", "days_since_last_login",
                                   "days_since_last_activity")},
    **{k: (_INT, True) for k in ("first_order_at", "last_order_at", "last_login_at",
                                 "first_seen_at", "last_activity_at")},
}


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _max(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


def _fold(sums: list[int], age: int, b: list[int]) -> None:
    """Add the counters ``b`` of a bucket ``age`` days old into the window sums."""
    if age < 0 or age >= 365:
        return
    spend, orders = b[_SPEND], b[_ORDERS]
    sums[_S365] += spend
    sums[_O365] += orders
    sums[_L365] += b[_LOGINS]
    if age < 90:
        sums[_S90] += spend
        sums[_O90] += orders
        sums[_C90] += b[_COMPLAINTS]
        sums[_E90] += b[_ESCALATIONS]
        if age < 30:
            sums[_S30] += spend
            sums[_O30] += orders
            sums[_L30] += b[_LOGINS]
            if age < 7:
                sums[_L7] += b[_LOGINS]
    elif age < 180:
        sums[_SP90] += spend
        sums[_OP90] += orders


def _days_since(now: int, t: int | None) -> float | None:
    """Whole days elapsed since ``t`` (0 before one full day), as a float."""
    return None if t is None else float(max(0, now - t) // DAY_MS)


def next_day_step(now: int, t: int | None) -> int | None:
    """When ``_days_since(., t)`` next changes after ``now``: the next whole day since ``t``."""
    if t is None:
        return None
    return t + (max(0, now - t) // DAY_MS + 1) * DAY_MS


@lru_cache(maxsize=1)  # is_duplicate then apply (mark) ask for the same id: it is hashed once
def id_digest(dedupe_id: str) -> int:
    """The 64-bit digest a dedupe id is kept as (stable across processes, unlike ``hash``)."""
    return int.from_bytes(blake2b(dedupe_id.encode(), digest_size=8).digest(), "little")


def _bits_of(digests: array[int]) -> int:
    bits = 0
    for digest in digests:
        bits |= 1 << (digest & _ID_BITS)
    return bits


def _read_as_far(these: dict[str, int], those: dict[str, int]) -> bool:
    """Whether offsets ``these`` reach every source of ``those`` as far (the same customer's messages)."""
    return all(offset <= these.get(source, -1) for source, offset in those.items())


def _ids_to_text(digests: array[int]) -> str:
    """The digests as base64 of their little-endian bytes (the changelog's ``"j"``)."""
    if sys.byteorder == "big":
        digests = array("Q", digests)
        digests.byteswap()
    return b64encode(digests.tobytes()).decode()


def _ids_from(doc: dict[str, Any]) -> array[int]:
    """The recent-id digests of a decoded changelog record: ``"j"``, or the older ``"i"`` list of ids."""
    digests = array("Q")
    text = doc.get("j")
    if text is not None:
        digests.frombytes(b64decode(text, validate=True))
        if sys.byteorder == "big":
            digests.byteswap()
    else:
        ids = doc.get("i", [])
        if not isinstance(ids, list):
            raise TypeError("recent ids have the wrong JSON type")
        digests.extend(id_digest(dedupe_id) for dedupe_id in ids)
    return digests


# a bucket of day d enters the windows at day d and leaves them at d + N (N: a window's length;
# 180 is where spend/orders_prev_90d end)
_WINDOW_DAYS = (7, 30, 90, 180, 365)


class CustomerState:
    """Rolling aggregates of one customer. Mutable; not thread-safe (one agent owns it)."""

    __slots__ = (*_PERSISTED, *_WRITER, "_sums", "_sums_day", "_id_bits", "_ids_dropped")

    def __init__(self) -> None:
        # day -> [net spend units, paid orders, logins, complaints opened, escalations]
        self.days: dict[int, list[int]] = {}
        # ticket_id -> [last action ts, flags (1: open, 2: complaint, 4: ever reopened), category age]. The
        # category age is how long before the last action the event that set the complaint
        # flag happened (-1: no category seen): the latest event carrying a category decides.
        self.tickets: dict[str, list[int]] = {}
        self.offsets: dict[str, int] = {}
        self.recent_ids: array[int] = array("Q")  # id_digest of each, oldest first
        self.horizon_day = -1  # buckets d <= horizon_day were pruned and are never re-created
        self.view: dict[str, Any] | None = None  # the agent's published view, carried opaquely
        self.profile: dict[str, Any] | None = None  # latest customer-profiles record (stream.domain.profiles)
        self.manual: dict[str, Any] | None = None  # manual tags and score adjustment (stream.domain.manual)
        self.tag_seq = 0  # tag-changes messages given a seq so far (the last one's seq)
        self.churn_seq = 0  # churn-alerts messages likewise: each output topic numbers 1, 2, 3, ...
        self.generation = 0  # the consumer group generation the state was last changed in (CustomerTable)
        self.orders_total = 0
        self.max_order = 0
        self.first_order_at: int | None = None
        self.last_order_at: int | None = None
        self.last_login_at: int | None = None
        self.first_seen_at: int | None = None
        self.last_activity_at: int | None = None
        self.last_event_ts: int | None = None
        # Derived, not persisted: the window sums as of UTC day _sums_day (-1: not computed).
        # apply() keeps them current, so aggregates() only rescans buckets once per day.
        self._sums: list[int] = []
        self._sums_day = -1
        # Derived, not persisted: a bit per digest in recent_ids, and maybe of some
        # dropped from it since (-1: not built yet); rebuilt after RECENT_IDS drops.
        self._id_bits = -1
        self._ids_dropped = 0

    # -- dedupe -------------------------------------------------------------------------
    def is_duplicate(self, source: str, offset: int, dedupe_id: str) -> bool:
        """True if this message was applied already (redelivery or producer retry)."""
        if 0 <= offset <= self.offsets.get(source, -1):
            return True
        bits = self._id_bits
        if bits < 0:
            bits = self._id_bits = _bits_of(self.recent_ids)
        digest = id_digest(dedupe_id)
        return bits >> (digest & _ID_BITS) & 1 == 1 and digest in self.recent_ids

    def input_mark(self) -> int:
        """Changes whenever a message of this customer is applied: the low 32 bits of the latest applied
        message's id digest (0 before any). Two evaluations with the same mark saw the same input."""
        return self.recent_ids[-1] & 0xFFFFFFFF if self.recent_ids else 0

    def mark(self, source: str, offset: int, dedupe_id: str) -> None:
        """Record a message as applied (for messages that are not events: profiles, commands)."""
        if offset > self.offsets.get(source, -1):
            self.offsets[source] = offset
        ids, digest = self.recent_ids, id_digest(dedupe_id)
        ids.append(digest)
        if self._id_bits >= 0:
            self._id_bits |= 1 << (digest & _ID_BITS)
        if len(ids) > RECENT_IDS:
            del ids[0]
            self._ids_dropped += 1
            if self._ids_dropped >= RECENT_IDS:  # the filter holds as many dropped ids as kept ones
                self._id_bits, self._ids_dropped = -1, 0

    def superseded_by(self, other: CustomerState) -> bool:
        """Whether this state is an older one than ``other``: a worker's changelog write that reached the
        broker late, after a worker given the partition since had written its newer state (the recovery
        passes over it: stream.faust.app.CustomerTable).

        Both are the same customer's messages applied in each partition's order. ``other`` supersedes this
        state when it has applied every message this one has, and more (no source read further here, one
        further there). When each has read further than the other on some source, the two were written at
        the same time by two workers: the one whose session expired while it could not reach the brokers,
        and the one given its partitions in a later generation, which went on from the committed offsets.
        The later generation's state is then the one to keep: the older one lacks messages whose offsets are
        committed, and the messages it has beyond the other are not committed yet, so they are read again."""
        mine, theirs = self.offsets, other.offsets
        if mine == theirs:
            return False
        if _read_as_far(theirs, mine):
            return True
        return self.generation < other.generation and not _read_as_far(mine, theirs)

    # -- output sequences ---------------------------------------------------------------
    def next_seq(self, kind: str) -> int:
        """The ``seq`` of the customer's next ``kind`` output (``tag`` or ``churn``), counted now."""
        if kind == "tag":
            self.tag_seq += 1
            return self.tag_seq
        if kind == "churn":
            self.churn_seq += 1
            return self.churn_seq
        raise ValueError(f"no output sequence {kind!r}")

    # -- apply --------------------------------------------------------------------------
    def apply(self, event: Event, source: str, offset: int, dedupe_id: str) -> None:
        """Fold one event in. The caller has checked :meth:`is_duplicate`."""
        self.mark(source, offset, dedupe_id)
        ts = event.ts
        self.first_seen_at = _min(self.first_seen_at, ts)
        self.last_event_ts = _max(self.last_event_ts, ts)
        if type(event) is OrderEvent:
            self._order(event, ts)
        elif type(event) is LoginEvent:
            self.last_login_at = _max(self.last_login_at, ts)
            self.last_activity_at = _max(self.last_activity_at, ts)
            self._bump(ts, _LOGINS, 1)
        elif type(event) is TicketEvent:
            self._ticket(event.ticket_id, event.action, event.category, ts)
        else:
            raise TypeError(f"not an event: {event!r}")

    def _bump(self, ts: int, index: int, value: int) -> None:
        day = ts // DAY_MS
        if day > self.horizon_day:
            bucket = self.days.get(day)
            if bucket is None:
                bucket = self.days[day] = [0, 0, 0, 0, 0]
            bucket[index] += value
            if self._sums_day >= 0:
                delta = [0, 0, 0, 0, 0]
                delta[index] = value
                _fold(self._sums, self._sums_day - day, delta)

    def _order(self, event: OrderEvent, ts: int) -> None:
        if event.status == "paid":
            self.orders_total += 1
            self.first_order_at = _min(self.first_order_at, ts)
            self.last_order_at = _max(self.last_order_at, ts)
            self.last_activity_at = _max(self.last_activity_at, ts)
            if event.amount > self.max_order:
                self.max_order = event.amount
            self._bump(ts, _ORDERS, 1)
            if event.amount:
                self._bump(ts, _SPEND, event.amount)
        elif event.status == "refunded" and event.amount:
            self._bump(ts, _SPEND, -event.amount)

    def _ticket(self, ticket_id: str, action: str, category: str, ts: int) -> None:
        complaint = category.lower() == "complaint"
        if action == "opened" and complaint:
            self._bump(ts, _COMPLAINTS, 1)
        elif action == "escalated":
            self._bump(ts, _ESCALATIONS, 1)
        t = self.tickets.get(ticket_id)
        if t is None:
            if len(self.tickets) >= MAX_TICKETS:
                self._evict_ticket()
            t = self.tickets[ticket_id] = [ts, 0, -1]
        if action == "reopened":
            t[1] |= _REOPENED
        if ts >= t[0]:
            if t[2] >= 0:
                t[2] += ts - t[0]
            t[0] = ts
            t[1] = (t[1] & ~_OPEN) | (_OPEN if action in _OPEN_ACTIONS else 0)
        if category and (t[2] < 0 or ts >= t[0] - t[2]):
            t[1] = (t[1] & ~_COMPLAINT) | (_COMPLAINT if complaint else 0)
            t[2] = t[0] - ts

    def _evict_ticket(self) -> None:
        """Drop one ticket to stay at MAX_TICKETS: the oldest closed one, else the oldest."""
        closed = [(t[0], tid) for tid, t in self.tickets.items() if not t[1] & _OPEN]
        pool = closed or [(t[0], tid) for tid, t in self.tickets.items()]
        del self.tickets[min(pool)[1]]

    # -- prune --------------------------------------------------------------------------
    def prune(self, now_ms: int) -> None:
        """Drop what no window at any time >= now can see. Cheap when already done today."""
        cutoff = now_ms // DAY_MS - HORIZON_DAYS
        if cutoff <= self.horizon_day:
            return
        self.horizon_day = cutoff
        days = self.days
        for d in [d for d in days if d <= cutoff]:
            del days[d]
            self._sums_day = -1
        stale = now_ms - TICKET_IDLE_MS
        for tid in [tid for tid, t in self.tickets.items() if not t[1] & _OPEN and t[0] < stale]:
            del self.tickets[tid]

    # -- read ---------------------------------------------------------------------------
    def _window_sums(self, now_ms: int) -> list[int]:
        """The window sums as of ``now_ms``'s UTC day (rescanned once a day, else kept by apply())."""
        today = now_ms // DAY_MS
        if today != self._sums_day:
            self._sums = sums = [0] * 13
            for d, b in self.days.items():
                _fold(sums, today - d, b)
            self._sums_day = today
        return self._sums

    def spend_orders_365d(self, now_ms: int) -> tuple[float, int]:
        """``spend_365d`` and ``orders_365d`` of :meth:`aggregates`, without the rest."""
        sums = self._window_sums(now_ms)
        return sums[_S365] / AMOUNT_SCALE, sums[_O365]

    def aggregates(self, now_ms: int) -> dict[str, Any]:
        """The facts at ``now_ms`` (keys and types as in :data:`AGGREGATE_FIELDS`)."""
        s30, s90, s365, sp90, o30, o90, o365, l7, l30, c90, e90, op90, l365 = self._window_sums(now_ms)
        open_tickets = open_complaints = reopened = 0
        for t in self.tickets.values():
            flags = t[1]
            if flags & _OPEN:
                open_tickets += 1
                if flags & _COMPLAINT:
                    open_complaints += 1
                if flags & _REOPENED:
                    reopened += 1
        total, first, last = self.orders_total, self.first_order_at, self.last_order_at
        gap = None
        if total >= 2 and first is not None and last is not None:
            gap = (last - first) / (total - 1) / DAY_MS
        return {
            "orders_30d": o30, "orders_90d": o90, "orders_365d": o365, "orders_total": total,
            "logins_7d": l7, "logins_30d": l30, "open_tickets": open_tickets,
            "open_complaints": open_complaints, "reopened_tickets": reopened,
            "complaints_90d": c90, "escalations_90d": e90,
            "orders_prev_90d": op90, "logins_365d": l365,
            "spend_30d": s30 / AMOUNT_SCALE, "spend_90d": s90 / AMOUNT_SCALE,
            "spend_365d": s365 / AMOUNT_SCALE, "spend_prev_90d": sp90 / AMOUNT_SCALE,
            "max_order": self.max_order / AMOUNT_SCALE,
            "days_since_first_seen": _days_since(now_ms, self.first_seen_at) or 0.0,
            "mean_order_gap_days": gap,
            "days_since_first_order": _days_since(now_ms, first),
            "days_since_last_order": _days_since(now_ms, last),
            "days_since_last_login": _days_since(now_ms, self.last_login_at),
            "days_since_last_activity": _days_since(now_ms, self.last_activity_at),
            "first_order_at": first, "last_order_at": last, "last_login_at": self.last_login_at,
            "first_seen_at": self.first_seen_at, "last_activity_at": self.last_activity_at,
        }

    def next_change_at(self, now_ms: int) -> int | None:
        """The earliest time after ``now_ms`` at which :meth:`aggregates` can differ with no new event.

        Window sums change only when a day bucket enters or leaves a window (at UTC midnights
        given by the buckets held); ``days_since_*`` change at each whole day since their
        timestamp. None: nothing changes with time alone (no events at all).
        """
        today = now_ms // DAY_MS
        due: int | None = None
        if self.days:
            days = sorted(self.days)
            later = bisect_right(days, today)
            if later < len(days):  # a bucket dated after today enters the windows on its day
                due = days[later]
            for n in _WINDOW_DAYS:  # the oldest bucket still inside an n-day window leaves it first
                i = bisect_right(days, today - n)
                if i < later and (due is None or days[i] + n < due):
                    due = days[i] + n
            if due is not None:
                due *= DAY_MS
        for t in (self.first_seen_at, self.first_order_at, self.last_order_at, self.last_login_at,
                  self.last_activity_at):
            step = next_day_step(now_ms, t)
            if step is not None and (due is None or step < due):
                due = step
        return due

    # -- serialisation ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Compact orjson; empty parts are left out."""
        doc: dict[str, Any] = {"v": FORMAT_VERSION, "l": [getattr(self, k) for k in _LIFETIME],
                               "h": self.horizon_day}
        if self.days:  # two parallel lists: smaller than a dict with string keys, faster to load
            doc["d"], doc["c"] = list(self.days), list(self.days.values())
        for key, value in (("t", self.tickets), ("o", self.offsets)):
            if value:
                doc[key] = value
        if self.recent_ids:
            doc["j"] = _ids_to_text(self.recent_ids)
        if self.tag_seq or self.churn_seq:
            doc["q"] = [self.tag_seq, self.churn_seq]
        if self.generation:
            doc["g"] = self.generation
        for key, carried in (("w", self.view), ("p", self.profile), ("m", self.manual)):
            if carried is not None:
                doc[key] = carried
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        """Inverse of :meth:`to_bytes`; raises StateDecodeError on foreign or corrupt bytes.

        The bytes are ours (the changelog), so only the shape is checked, not every value."""
        try:
            doc = orjson.loads(data)
            if doc.get("v") != FORMAT_VERSION:
                raise StateDecodeError(f"customer state format {doc.get('v')!r} is not "
                                       f"{FORMAT_VERSION}; was it written by a newer tagger?")
            state = cls()
            for key, value in zip(_LIFETIME, doc["l"], strict=True):
                setattr(state, key, value)
            state.horizon_day = int(doc["h"])
            state.days = dict(zip(doc.get("d", ()), doc.get("c", ()), strict=True))
            state.tickets = doc.get("t", {})
            state.offsets = doc.get("o", {})
            state.recent_ids = _ids_from(doc)
            state.view = doc.get("w")
            state.profile = doc.get("p")
            state.manual = doc.get("m")
            state.tag_seq, state.churn_seq = (int(n) for n in doc.get("q", (0, 0)))
            state.generation = int(doc.get("g", 0))
            if not (isinstance(state.tickets, dict) and isinstance(state.offsets, dict)):
                raise TypeError("tickets or offsets have the wrong JSON type")
        except StateDecodeError:
            raise
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateDecodeError(f"customer state is not decodable: {exc!r}") from None
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in _PERSISTED)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"CustomerState(days={len(self.days)}, tickets={len(self.tickets)}, "
                f"orders_total={self.orders_total}, last_event_ts={self.last_event_ts})")
