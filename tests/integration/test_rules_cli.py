"""`tagger rules dry-run` against the views a real worker wrote to a real Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rules import default_rules_dir

from .conftest import Namespace
from .test_pipeline import order, view_of

pytestmark = pytest.mark.integration

SPEND = {"d-6000": 6000, "d-7000": 7000, "d-3000": 3000, "d-12000": 12000}


def snapshot(ns: Namespace) -> dict[bytes, Any]:
    """Every key under the namespace's Redis prefix with its value."""
    out: dict[bytes, Any] = {}
    for key in ns.redis.scan_iter(match=f"{ns.settings.redis_prefix}:*"):
        kind = ns.redis.type(key)
        if kind == b"string":
            out[key] = ns.redis.get(key)
        elif kind == b"zset":
            out[key] = ns.redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = ns.redis.smembers(key)
        else:
            out[key] = kind
    return out


def dry_run(ns: Namespace, candidate: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "agents", "rules", "dry-run", str(candidate), *args],
                         env=ns.env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def test_dry_run_counts_gains_and_changes_nothing(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    ns.worker()
    for i, (cid, amount) in enumerate(SPEND.items()):
        ns.produce("order", order(cid, f"e{i}", 1 + i, amount))
    for cid, amount in SPEND.items():
        view_of(ns, cid, lambda v, amount=amount: v["aggregates"]["spend_365d"] == amount)
    assert "big_spender" in ns.view("d-12000")["tags"]  # type: ignore[index]
    ns.workers[0].stop()  # nothing else writes to this namespace from here on

    candidate = tmp_path / "candidate"
    shutil.copytree(default_rules_dir(), candidate)
    tags = candidate / "tags.yaml"
    text = tags.read_text()
    assert "when: spend_365d >= 10000" in text and "exit: spend_365d < 8000" in text
    tags.write_text(text.replace("when: spend_365d >= 10000", "when: spend_365d >= 5000")
                    .replace("exit: spend_365d < 8000", "exit: spend_365d < 4000"))

    before = snapshot(ns)
    report = json.loads(dry_run(ns, candidate, "--json"))
    assert report["evaluated"] == 4 and not report["skipped"] and not report["errors"]
    big = report["tags"]["big_spender"]
    assert (big["before"], big["after"], big["gained"], big["lost"]) == (1, 3, 2, 0)
    assert {e["customer_id"]: e["reason"] for e in big["gain_examples"]} == {
        "d-6000": "spend_365d=6000.00 >= 5000", "d-7000": "spend_365d=7000.00 >= 5000"}
    # 4 paying customers: both cut-off ranks are ceil(0.05*4) = ceil(0.2*4) = 1, the top spend
    assert report["cutoffs"] == {"a": 12000.0, "b": 12000.0}

    table = dry_run(ns, candidate)
    assert "4 customers evaluated" in table
    row = next(line for line in table.splitlines() if line.startswith("big_spender "))
    assert row.split() == ["big_spender", "1", "3", "+2", "-0"]
    assert snapshot(ns) == before
