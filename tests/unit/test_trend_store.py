"""Trends without Redis: what each role sees of a point, the query bounds, and the trend timer's choices."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from agents.trends import TrendRecorder
from stream.access.auth import Principal
from stream.domain.events import parse_ts
from stream.settings import Settings
from stream.view.trend_store import (
    MAX_TAGS,
    TrendQueryError,
    boundary,
    disclosed,
    query_bounds,
    rule_tags,
    visible_point,
)

RULES = {"big_spender": ("public", "revenue"), "inactive_30d": ("team", "retention"),
         "has_open_complaint": ("restricted", "support")}
POINT = {"at": "2026-11-22T10:00:00.000Z", "tiers": {"A": 1, "B": 2, "C": 3, "D": 4},
         "churn": {"none": 5, "low": 2, "medium": 2, "high": 1},
         "tags": {"big_spender": 1, "inactive_30d": 3, "has_open_complaint": 2}}
MINUTE = 60_000


def who(role: str, teams: frozenset[str] = frozenset()) -> Principal:
    return Principal(name=role, role=role, teams=teams)  # type: ignore[arg-type]


@pytest.mark.parametrize(("principal", "churn", "tags"), [
    (who("viewer"), False, {"big_spender"}),
    (who("viewer", frozenset({"support"})), False, {"big_spender", "has_open_complaint"}),
    (who("sales"), True, {"big_spender", "inactive_30d"}),
    (who("sales", frozenset({"support"})), True, {"big_spender", "inactive_30d", "has_open_complaint"}),
    (who("finance"), True, {"big_spender", "inactive_30d"}),
    (who("admin"), True, {"big_spender", "inactive_30d", "has_open_complaint"}),
])
def test_every_role_sees_tiers_churn_from_sales_up_and_only_its_visible_tags(principal: Principal, churn: bool,
                                                                              tags: set[str]) -> None:
    seen = visible_point(POINT, principal, RULES)
    assert seen["at"] == POINT["at"] and seen["tiers"] == POINT["tiers"]
    assert ("churn" in seen) is churn and seen.get("churn", POINT["churn"]) == POINT["churn"]
    assert seen["tags"] == {t: n for t, n in POINT["tags"].items() if t in tags}
    assert ("trends:churn" in disclosed(principal)) is churn


def test_a_manual_or_unknown_tag_counts_as_team() -> None:
    point = {**POINT, "tags": {"vip_manual": 4}}
    assert visible_point(point, who("viewer"), RULES)["tags"] == {}
    assert visible_point(point, who("sales"), RULES)["tags"] == {"vip_manual": 4}


def test_query_bounds_take_rfc3339_or_epoch_ms_and_name_the_bad_parameter() -> None:
    assert query_bounds({}) == (None, None)
    assert query_bounds({"from": "", "to": ""}) == (None, None)
    ten = parse_ts("2026-11-22T10:00:00Z")
    assert query_bounds({"from": "1000", "to": "2026-11-22T11:00:00+01:00"}) == (1000, ten)
    assert query_bounds({"from": str(ten), "to": str(ten)}) == (ten, ten)
    for query, parameter in [({"from": "yesterday"}, "from"), ({"to": "2026-11-22T10:00:00"}, "to"),
                             ({"from": "-5"}, "from"), ({"to": "99999999999999999"}, "to"),
                             ({"from": "2000", "to": "1000"}, "to")]:
        with pytest.raises(TrendQueryError) as caught:
            query_bounds(query)
        assert caught.value.parameter == parameter and caught.value.reason.startswith(f"{parameter}: "), query


def test_boundaries_and_tags_counted() -> None:
    assert boundary(5 * MINUTE + 59_999, MINUTE) == 5 * MINUTE == boundary(5 * MINUTE, MINUTE)
    assert rule_tags(["b", "a", "b", *(f"t{i}" for i in range(200))]) == ["b", "a", *(f"t{i}" for i in range(98))]
    assert len(rule_tags(f"t{i}" for i in range(200))) == MAX_TAGS


class FakeStore:
    """Records the boundaries asked for; ``existing``: boundaries another worker recorded already."""

    def __init__(self, existing: Sequence[int] = ()) -> None:
        self.asked: list[int] = []
        self.newest = max(existing, default=-1)
        self.fail = False

    async def record(self, boundary_ms: int, tags: Sequence[str]) -> bool:
        if self.fail:
            raise ConnectionError("redis down")
        self.asked.append(boundary_ms)
        added = boundary_ms > self.newest
        self.newest = max(self.newest, boundary_ms)
        return added


async def test_the_timer_records_the_latest_boundary_passed_once_and_retries_after_an_error() -> None:
    store = FakeStore(existing=[2 * MINUTE])
    clock: list[int | None] = [None]

    async def now() -> int | None:
        return clock[0]

    recorder = TrendRecorder(store, MINUTE, now, lambda: ["big_spender"])  # type: ignore[arg-type]
    await recorder.run()
    assert store.asked == []  # no event seen yet
    for t in (2 * MINUTE + 5, 2 * MINUTE + 30_000, 3 * MINUTE - 1):  # another worker has this one
        clock[0] = t
        await recorder.run()
    assert store.asked == [2 * MINUTE] and recorder.last == 2 * MINUTE
    clock[0] = 3 * MINUTE
    await recorder.run()
    clock[0] = 7 * MINUTE + 10  # the clock jumped four boundaries: only the latest
    await recorder.run()
    assert store.asked == [2 * MINUTE, 3 * MINUTE, 7 * MINUTE]
    store.fail, clock[0] = True, 8 * MINUTE
    await recorder.run()  # logged, not raised; tried again at the next tick
    assert recorder.last == 7 * MINUTE
    store.fail = False
    await recorder.run()
    assert store.asked[-1] == 8 * MINUTE and recorder.last == 8 * MINUTE


def test_the_trend_settings_default_to_an_hour_and_90_days_and_must_be_positive() -> None:
    defaults = Settings()  # type: ignore[call-arg]
    assert (defaults.trend_interval, defaults.trend_span) == (3600, 90 * 86400)
    for field in ("trend_interval", "trend_span"):
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: 0})  # type: ignore[arg-type]
