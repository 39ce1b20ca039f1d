"""`tagger replay` of the CDNOW log (shipped in lifetimes) in stream time, then `tagger export` from Redis."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import lifetimes
import orjson
import pytest

from stream.kafka.kafka_admin import consume_all

from .conftest import Namespace, wait_for

pytestmark = pytest.mark.integration
CDNOW = Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt"


def tagger(ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents", *args], env=ns.env, capture_output=True, text=True,
                          timeout=180, check=False)


def test_replay_cdnow_slice_in_stream_time_then_export(namespace: Namespace, tmp_path: Path) -> None:
    lines = CDNOW.read_text().splitlines()
    header, rows = lines[0], [r for r in lines[1:] if int(r.split()[0]) <= 40]  # customers 1..40, all orders
    history = tmp_path / "cdnow.txt"
    bad = [" 00007 1997-02-30  1   9.99", " 00008 19970301  1   -4.00", " 00009 19970301  1"]
    history.write_text("\n".join([header, *rows[:50], *bad, *rows[50:]]) + "\n")
    replay = ["replay", str(history), "--kind", "orders", "--map", "amount=dollar_value", "--map", "ts=date",
              "--ts-format", "%Y%m%d", "--const", "currency=USD", "--no-progress"]

    stopped = tagger(namespace, *replay, "--stop-on-error")
    assert stopped.returncode == 1
    assert "line 52: rejected: field 'ts'" in stopped.stderr
    assert "rows read 51, sent 50, rejected 1, failed 0" in stopped.stdout

    out = tagger(namespace, *replay, "--rate", "0")
    assert out.returncode == 0, out.stderr
    assert f"rows read {len(rows) + 3}, sent {len(rows)}, rejected 3, failed 0" in out.stdout
    for line, why in ((52, "field 'ts'"), (53, "field 'amount'"), (54, "3 columns, expected 4")):
        assert f"line {line}: rejected: {why}" in out.stderr
    sent = consume_all(namespace.services.bootstrap, namespace.settings.orders_topic, timeout=30,
                       until=lambda rs: len(rs) >= 50 + len(rows))
    assert len(sent) == 50 + len(rows)  # both runs; the second repeats event ids, counted once
    last = max(r.split()[1] for r in rows)
    customers = {r.split()[0] for r in rows}

    namespace.worker(coalesce_customers=0)  # each event evaluated as it is applied (a backlog is not coalesced)
    day = f"{last[:4]}-{last[4:6]}-{last[6:]}"

    def views() -> list[dict]:
        found = [namespace.view(c) for c in customers]
        return [v for v in found if v is not None]

    wait_for(lambda: len(views()) == len(customers) and any(v["evaluated_at"].startswith(day) for v in views()),
             90, "every replayed customer's view, up to the last event")
    # each view is as of that customer's own last event until `tagger reevaluate` brings all of them
    # to stream time "now": the last replayed event (1998), not today's wall clock
    stale = sorted(c for c in customers if not (namespace.view(c) or {})["evaluated_at"].startswith(day))
    assert len(stale) >= 2
    one = tagger(namespace, "reevaluate", "--customer", stale[0], "--timeout", "60")
    assert one.returncode == 0 and f"re-evaluated customer {stale[0]}" in one.stdout, one.stderr
    wait_for(lambda: (namespace.view(stale[0]) or {})["evaluated_at"].startswith(day), 30, "the one customer")
    assert not (namespace.view(stale[1]) or {})["evaluated_at"].startswith(day)  # nobody else
    namespace.reevaluate()
    wait_for(lambda: all(v["evaluated_at"].startswith(day) for v in views()), 30, "views as of the last event")
    view = namespace.view("00001")
    assert view is not None
    cutoff = f"{int(last[:4]) - 1}{last[4:]}"
    spend = sum(float(r.split()[3]) for r in rows if r.split()[0] == "00001" and r.split()[1] > cutoff)
    assert view["aggregates"]["spend_365d"] == pytest.approx(spend)
    assert "new_customer" not in view["tags"]  # first order 1997-01-01: not new as of 1998-06

    exported = tagger(namespace, "export", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    docs = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert {d["customer_id"] for d in docs} == customers and f"exported {len(customers)}" in exported.stderr
    target = tmp_path / "out.csv"
    as_csv = tagger(namespace, "export", "--format", "csv", "-o", str(target), "--tier", "A")
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert table and all(r["tier"] == "A" for r in table)
    assert {r["customer_id"] for r in table} == {d["customer_id"] for d in docs if d["tier"] == "A"}
