"""Replay: column mapping, row → event, bad rows with line numbers, pacing; export rows; tail filters."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from agents.cli.console import alert_wanted
from agents.cli.replay import Pacer, detect_format, read_rows
from stream.domain.history import ColumnMap, MappingError, RowError, encode, load_mapping, to_event
from stream.view.export import csv_row

CDNOW = ColumnMap(kind="orders", columns={"amount": "dollar_value", "ts": "date"},
                  constants={"currency": "USD"}, ts_format="%Y%m%d", id_prefix="cdnow")


def test_cdnow_row_becomes_a_valid_order() -> None:
    row = {"customer_id": "00001", "date": "19970101", "number_of_cds": "1", "dollar_value": "11.77"}
    event = to_event(row, CDNOW, 2)
    assert event == {"customer_id": "00001", "ts": "1997-01-01T00:00:00Z", "amount": "11.77",
                     "currency": "USD", "event_id": "cdnow-2", "order_id": "cdnow-2"}
    assert orjson.loads(encode(event, CDNOW, currency="USD", max_bytes=1 << 20)) == event


@pytest.mark.parametrize(("row", "reason"), [
    ({"customer_id": "", "date": "19970101", "dollar_value": "1"}, "field 'customer_id'"),
    ({"customer_id": "7", "date": "1997-13-01", "dollar_value": "1"}, "does not match format"),
    ({"customer_id": "7", "date": "19970101", "dollar_value": "abc"}, "is not a number"),
    ({"customer_id": "7", "date": "19970101", "dollar_value": "-3"}, "must be a finite number >= 0"),
    ({"customer_id": "7", "date": "19970101"}, "field 'amount' (column 'dollar_value') is missing"),
])
def test_bad_rows_say_why(row: dict[str, str], reason: str) -> None:
    with pytest.raises(RowError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        to_event(row, CDNOW, 5)


def test_the_workers_own_parser_rejects_what_it_would_dead_letter() -> None:
    event = to_event({"customer_id": "7", "date": "19970101", "dollar_value": "1"}, CDNOW, 3)
    with pytest.raises(RowError, match="currency"):
        encode(event, CDNOW, currency="EUR", max_bytes=1 << 20)
    login = ColumnMap(kind="logins")
    with pytest.raises(RowError, match="ts"):
        to_event({"customer_id": "c", "ts": "2026-01-01T00:00:00"}, login, 1)  # no offset
    assert to_event({"customer_id": "c", "ts": "1795341300000"}, login, 1)["ts"] == 1795341300000


def test_mapping_rejects_unknown_fields_and_kinds(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="unknown kind"):
        ColumnMap(kind="payments")
    with pytest.raises(MappingError, match="unknown field"):
        ColumnMap(kind="logins", columns={"amount": "x"})
    f = tmp_path / "m.yaml"
    f.write_text("kind: tickets\ncolumns: {customer_id: who, action: what}\nconstants: {severity: high}\n")
    m = load_mapping(f, columns={"ts": "when"})
    assert m.kind == "tickets" and m.source("customer_id") == "who" and m.source("ts") == "when"
    event = to_event({"who": "c1", "what": "opened", "when": "2026-01-01T00:00:00Z"}, m, 9)
    assert event["severity"] == "high" and event["ticket_id"] == "replay-9"
    f.write_text("kind: tickets\ncolums: {}\n")
    with pytest.raises(MappingError, match="colums"):
        load_mapping(f)


def test_read_rows_keeps_physical_line_numbers_and_flags_broken_lines() -> None:
    ws = io.StringIO(" customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n\n 00002 1997 2\n")
    rows = list(read_rows(ws, "ws"))
    assert rows[0] == (2, {"customer_id": "00001", "date": "19970101", "number_of_cds": "1", "dollar_value": "11.77"})
    assert rows[1][0] == 4 and isinstance(rows[1][1], RowError)
    text = 'a,b\n1,"x\ny"\n2,z\n'
    rows = list(read_rows(io.StringIO(text, newline=""), "csv"))
    assert [(n, r) for n, r in rows] == [(3, {"a": "1", "b": "x\ny"}), (4, {"a": "2", "b": "z"})]
    rows = list(read_rows(io.StringIO('{"a": 1}\nnot json\n[1]\n'), "jsonl"))
    assert rows[0] == (1, {"a": 1}) and isinstance(rows[1][1], RowError) and isinstance(rows[2][1], RowError)
    rows = list(read_rows(io.StringIO("1;2\n"), "csv", delimiter=";", columns=["x", "y"]))
    assert rows == [(1, {"x": "1", "y": "2"})]
    assert detect_format(Path("a.jsonl")) == "jsonl" and detect_format(Path("a.CSV")) == "csv"
    assert detect_format(Path("CDNOW_master.txt")) == "ws"


def test_pacer_spaces_sends_to_the_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert now[0] == pytest.approx(100.4) and len(slept) == 4
    unpaced = Pacer(0.0, clock=lambda: now[0], sleep=sleep)
    unpaced.wait()
    assert len(slept) == 4


def test_export_csv_row_and_alert_level_filter() -> None:
    view = {"customer_id": "c1", "tier": "A", "score": 81.5, "tags": ["big_spender", "vip"],
            "manual": {"tags": {"vip": {"author": "jane", "note": "n"}}}, "churn": {"level": "low", "risk": 0.3},
            "aggregates": {"spend_365d": 12000.0}, "reasons": {"big_spender": "spend_365d=12000.00 >= 10000"},
            "evaluated_at": "2026-01-01T00:00:00.000Z", "ruleset_version": "v1"}
    row = csv_row(view)
    assert row["tags"] == "big_spender;vip" and row["manual_tags"] == "vip" and row["churn_level"] == "low"
    assert row["reasons"] == "big_spender: spend_365d=12000.00 >= 10000"
    assert csv_row({"customer_id": "c2", "churn": None})["churn_level"] == ""
    assert alert_wanted({"level": "high", "previous_level": "low"}, {"high"})
    assert alert_wanted({"level": "none", "previous_level": "high"}, {"high"})
    assert not alert_wanted({"level": "low", "previous_level": "none"}, {"high"})
    assert alert_wanted({"level": "low"}, set())
