"""Training the churn model: the worker's facts at the cuts, labels without leaks, the fit and its back-test."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from agents.cli.churn_train import cut_ms, model_yaml, read_events, train
from agents.cli.main import main
from agents.engine.evaluate import Evaluator, facts_schema
from agents.engine.history_facts import labelled, snapshots
from agents.engine.runtime import Message
from rules import default_rules_dir, load_ruleset
from rules.churn import assess_churn
from rules.churn_fit import Example, fit_churn_model
from rules.churn_model import ChurnModel, feature_values
from stream.domain.events import Event, OrderEvent
from stream.domain.history import ColumnMap, to_event
from stream.domain.state import DAY_MS

from .fakes import make_runtime

RULES = load_ruleset(default_rules_dir(), facts_schema())
CUT = cut_ms("2025-12-31")
ORDERS = """\
event_id,customer,when,amount,status
a1,a,2025-06-01T10:00:00Z,50.00,paid
a2,a,2025-09-10T10:00:00Z,20.00,paid
a3,a,2025-11-20T10:00:00Z,30.00,paid
a3,a,2025-11-20T10:00:00Z,30.00,paid
a4,a,2025-11-21T10:00:00Z,10.00,refunded
b1,b,2025-03-01T10:00:00Z,100.00,paid
a5,a,2026-02-01T10:00:00Z,25.00,paid
b2,b,2026-04-01T10:00:00Z,25.00,paid
"""
LOGINS = [("a", "2025-12-20T08:00:00Z"), ("c", "2025-12-01T08:00:00Z"), ("c", "2025-12-30T08:00:00Z")]
MODEL = ChurnModel(names=("days_since_last_order", "days_since_last_login_log", "never_logged_in",
                          "orders_total_log", "no_paid_order", "spend_365d_log"),
                   means=(30.0, 1.0, 0.5, 1.0, 0.2, 3.0), scales=(30.0, 1.0, 0.5, 1.0, 0.4, 1.0),
                   coefs=(1.0, 0.5, 0.3, -0.5, 0.8, -0.2), intercept=0.1, horizon_days=60.0)
ORDER_MAP = ColumnMap(kind="orders", columns={"customer_id": "customer", "ts": "when"}, id_prefix="orders")


def history(tmp_path: Path) -> tuple[Path, Path]:
    orders, logins = tmp_path / "orders.csv", tmp_path / "logins.jsonl"
    orders.write_text(ORDERS)
    logins.write_text("".join(orjson.dumps({"event_id": f"l{i}", "customer_id": c, "ts": t}).decode() + "\n"
                              for i, (c, t) in enumerate(LOGINS)))
    return orders, logins


def events_of(tmp_path: Path) -> list[Event]:
    orders, logins = history(tmp_path)
    read, bad = read_events(orders, ORDER_MAP)
    more, bad_logins = read_events(logins, ColumnMap(kind="logins"))
    assert bad == bad_logins == []
    return read + more


async def test_training_reads_the_same_facts_and_features_the_worker_scores(tmp_path: Path) -> None:
    events = events_of(tmp_path)
    trained = snapshots(events, [CUT], Evaluator(RULES)).facts[CUT]
    assert sorted(trained) == ["a", "b", "c"]
    runtime, _ = make_runtime()
    runtime.use_ruleset(replace(RULES, churn=replace(RULES.churn, model=MODEL)))
    orders, logins = history(tmp_path)
    rows = [("orders", to_event(dict(zip(ORDERS.splitlines()[0].split(","), line.split(","), strict=True)),
                                ORDER_MAP, n)) for n, line in enumerate(ORDERS.splitlines()[1:], start=2)]
    rows += [("logins", orjson.loads(line)) for line in logins.read_text().splitlines()]
    rows.append(("logins", {"event_id": "last", "customer_id": "c", "ts": CUT}))  # evaluated at the cut itself
    events.append(*read_events(_jsonl(tmp_path, rows[-1][1]), ColumnMap(kind="logins"))[0])
    trained = snapshots(events, [CUT], Evaluator(RULES)).facts[CUT]
    for offset, (topic, row) in enumerate(r for r in rows if _ms(r[1]["ts"]) <= CUT):  # the worker: to the cut
        assert await runtime.handle(Message(topic, 0, offset, row["customer_id"].encode(), orjson.dumps(row))) \
            in ("ok", "duplicate")
    served = {cid: runtime.evaluator.facts(state, CUT) for cid, state in runtime.table.items()}
    assert sorted(served) == sorted(trained)
    for cid, facts in served.items():
        assert {k: v for k, v in facts.items() if k != "tags"} == {k: v for k, v in trained[cid].items() if k != "tags"}
        assert feature_values(MODEL.names, facts, None, 60) == feature_values(MODEL.names, trained[cid], None, 60)
    assert served["a"]["orders_total"] == 3 and served["a"]["spend_365d"] == 90.0  # the duplicate once, refund net
    churn = runtime.table["c"].view["churn"]  # type: ignore[index]
    assert churn["risk"] == round(assess_churn(replace(RULES.churn, model=MODEL), trained["c"]).risk, 4)
    assert churn["reasons"] == ["no paid order yet", "spend in the last 365 days 0.00"]  # orders_total: one fact


def _ms(ts: object) -> int:
    from stream.domain.events import parse_ts
    return parse_ts(ts)


def _jsonl(tmp_path: Path, row: dict[str, object]) -> Path:
    path = tmp_path / "one.jsonl"
    path.write_text(orjson.dumps(row).decode() + "\n")
    return path


def test_labels_look_only_within_the_horizon_and_later_events_are_never_read(tmp_path: Path) -> None:
    events = events_of(tmp_path)
    snaps = snapshots(events, [CUT], Evaluator(RULES), end_ms=CUT + 60 * DAY_MS)
    got = {e.customer_id: e.no_purchase for e in labelled(snaps, 60)}
    assert got == {"a": False, "b": True, "c": True}  # b's next order is 91 days after the cut
    assert max(t for ts in snaps.paid_orders.values() for t in ts) <= CUT + 60 * DAY_MS
    with pytest.raises(ValueError, match="past the history read"):
        labelled(snaps, 90)


def _customers(seed: int, n: int = 400, days: int = 420) -> list[Event]:
    """Orders of ``n`` customers, each buying at its own Poisson rate until an exponential dropout day."""
    rng = np.random.default_rng(seed)
    start = cut_ms("2025-01-01") + 1
    events: list[Event] = []
    for c in range(n):
        rate, stop = rng.gamma(0.8, 1 / 25), rng.exponential(300)
        t = rng.uniform(0, 200)
        k = 0
        while t < min(stop, days):
            ts = start + int(t * DAY_MS)
            events.append(OrderEvent(f"c{c}-{k}", f"c{c}", ts, f"o{c}-{k}", 2000 + 100 * k, "paid", None, 1))
            t += rng.exponential(1 / rate)
            k += 1
    return events


def test_the_fit_learns_from_history_and_back_tests_on_the_last_cut() -> None:
    events = _customers(3)
    cuts = [cut_ms("2025-08-31"), cut_ms("2025-09-30"), cut_ms("2025-10-30")]
    trained = train(events, cuts, 60, RULES)
    model, result = trained.model, trained.backtest
    assert trained.method == "fitted on the earlier cuts, tested on the last cut"
    assert result.examples == sum(1 for e in trained.last_facts)
    assert 0.65 < result.auc < 1 and len(result.calibration) == 10
    assert model.names[:2] == ("days_since_last_order", "days_since_last_order_log")
    assert "logins_30d_log" not in model.names  # no logins anywhere: a constant is left out
    assert model.bgnbd is not None and "bgnbd_expected" in model.names
    recent, silent = (dict(trained.last_facts[0], days_since_last_order=d) for d in (1.0, 200.0))
    assert assess_churn(replace(RULES.churn, model=model), silent).risk > \
        assess_churn(replace(RULES.churn, model=model), recent).risk
    # later orders than the last cut + horizon change nothing: they are never read
    later = [OrderEvent(f"x{i}", f"c{i}", cuts[-1] + 61 * DAY_MS, f"x{i}", 100, "paid", None, 1) for i in range(400)]
    assert train(events + later, cuts, 60, RULES).model == model
    with pytest.raises(ValueError, match="history ends before the last cut plus 60 days"):
        train(events, [cut_ms("2026-02-01")], 60, RULES)


def test_one_cut_holds_out_a_fifth_of_the_customers() -> None:
    trained = train(_customers(5), [cut_ms("2025-10-30")], 60, RULES)
    assert trained.method.startswith("fitted on 80% of the customers")
    assert 0.1 * trained.examples < trained.backtest.examples < 0.3 * trained.examples


def test_the_fit_refuses_one_sided_labels() -> None:
    examples = [Example(f"c{i}", 0, {"orders_total": 1}, True) for i in range(30)]
    with pytest.raises(ValueError, match="both outcomes"):
        fit_churn_model(examples, 90)


def test_tagger_churn_train_writes_a_model_the_worker_loads(tmp_path: Path) -> None:
    source = tmp_path / "orders.jsonl"
    source.write_text("".join(orjson.dumps({"customer_id": e.customer_id, "ts": e.ts, "amount": "20.00",
                                            "event_id": e.event_id}).decode() + "\n" for e in _customers(7)))
    rules_dir = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules_dir)
    result = CliRunner().invoke(main, ["churn", "train", str(source), "--cut", "2025-10-30", "--horizon-days", "60",
                                       "--out", str(rules_dir / "churn_model.yaml")])
    assert result.exit_code == 0, result.output
    for words in ("ROC AUC", "level high (risk >= 0.7): precision", "largest gap", "µs per customer"):
        assert words in result.output
    model = load_ruleset(rules_dir, facts_schema()).churn.model
    assert model is not None and model.horizon_days == 60 and model.trained is not None
    assert model.trained["cuts"] == ["2025-10-30T23:59:59Z"]
    assert model_yaml(model).count("churn_model:") == 1


async def test_a_model_written_into_the_rules_directory_is_hot_reloaded_and_a_broken_one_refused(
        tmp_path: Path) -> None:
    import os

    from agents.timers import PartitionCommands, RulesReload

    from .fakes import FakeSender

    rules_dir = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules_dir)
    runtime, _ = make_runtime()
    commands = FakeSender()
    reload = RulesReload(rules_dir, runtime, PartitionCommands(lambda: [], "commands", commands, runtime))
    assert runtime.evaluator.ruleset.churn.model is None
    path = rules_dir / "churn_model.yaml"
    path.write_text(model_yaml(MODEL))
    await reload.run()
    assert runtime.evaluator.ruleset.churn.model == MODEL and runtime.reload_errors == 0
    path.write_text(model_yaml(MODEL).replace("scale: 30.0", "scale: -1"))
    os.utime(path, ns=(10**18, 10**18))
    await reload.run()
    assert runtime.evaluator.ruleset.churn.model == MODEL and runtime.reload_errors == 1  # the last good one stays


def test_rules_validate_names_a_loaded_model(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules_dir)
    (rules_dir / "churn_model.yaml").write_text(model_yaml(MODEL))
    result = CliRunner().invoke(main, ["rules", "validate", str(rules_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("; learned churn model: 6 features, horizon 60 days\n")
    (rules_dir / "churn_model.yaml").write_text(model_yaml(MODEL).replace("name: no_paid_order", "name: no_order"))
    result = CliRunner().invoke(main, ["rules", "validate", str(rules_dir)])
    assert result.exit_code == 1 and "churn_model.yaml:" in result.output
    assert "churn_model.features[4].name: unknown feature 'no_order'" in result.output


def test_bad_rows_are_rejected_with_file_and_line_and_the_rest_read(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS.replace("b1,b,2025-03-01T10:00:00Z,100.00", "b1,b,yesterday,100.00")
                    + "x1,,2025-03-01T10:00:00Z,1.00,paid\n")
    events, bad = read_events(path, ORDER_MAP)
    assert len(events) == 7
    assert [line.split(": ")[0] for line in bad] == [f"{path}:7", f"{path}:10"]
    assert "field 'ts'" in bad[0] and "customer_id" in bad[1]


def test_train_refuses_a_bad_with_option_and_a_history_too_short(tmp_path: Path) -> None:
    orders, logins = history(tmp_path)
    args = ["churn", "train", str(orders), "--map", "customer_id=customer", "--map", "ts=when",
            "--out", str(tmp_path / "m.yaml")]
    result = CliRunner().invoke(main, [*args, "--with", f"visits:{logins}"])
    assert result.exit_code == 2 and "expected KIND:FILE" in result.output
    result = CliRunner().invoke(main, [*args, "--with", f"logins:{logins}", "--cut", "2026-03-01"])
    assert result.exit_code == 1, result.output
    assert "the history ends before the last cut plus 90 days" in result.output
    assert f"{logins}: 3 events, 0 rows rejected" in result.output and not (tmp_path / "m.yaml").exists()
