"""CI smoke run of `tagger bench`: the whole harness works end to end (figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_runs_every_phase_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "agents", "bench", "--events", "1500", "--customers", "150",
                          "--partitions", "4", "--latency-seconds", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["events"] == 1500 and "worker_events_per_s" in run.stdout
    for key in ("raw_aiokafka_messages_per_s", "worker_events_per_s", "tagger_vs_raw_aiokafka", "worker_rss_mb",
                "state_bytes_per_customer", "redis_bytes_per_customer", "recovery_to_ready_s"):
        assert result[key] > 0, key
    assert 100 < result["customers_in_state"] <= 150  # the demo draws customers by weight
    assert result["latency_p50_s"] is not None and result["latency_p50_s"] <= result["latency_p99_s"]


def test_percentile_between_two_histogram_snapshots() -> None:
    from agents.bench import percentile

    before = [(0.1, 10.0), (1.0, 10.0), (float("inf"), 10.0)]
    after = [(0.1, 60.0), (1.0, 110.0), (float("inf"), 110.0)]  # 50 new under 0.1 s, 50 in (0.1, 1]
    assert percentile(before, after, 0.5) == pytest.approx(0.1)
    assert percentile(before, after, 0.75) == pytest.approx(0.55)
    assert percentile(before, before, 0.5) is None
