"""Measure the tagger's state: memory and disk per customer, and recovery time from the changelog.

    .venv/bin/python deploy/measure_state.py --customers 50000 --events 250000

On the embedded broker (Tansu) and redis-server, one worker with 8 partitions:

1. produces demo events (a year of event time) and lets a RocksDB worker
   (``TAGGER_STORE=rocksdb://``) process them all; measures its RSS, the size
   of its RocksDB directory, the changelog and Redis;
2. restarts it on its local state (reads only the changelog tail) and times
   the start until ``/readyz`` answers 200;
3. deletes its data directory and restarts it: the whole changelog is read;
4. starts a memory-store worker on the same changelog, for comparison.

Prints one JSON document. The figures per million customers are linear
extrapolations (state is per customer; nothing in it grows with the count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from stream.devtools.demo import DemoConfig, run_demo
from stream.devtools.embedded import ServiceGroup, free_port, spawn, terminate, worker_env
from stream.kafka.kafka_admin import consume_all
from stream.kafka.topics import ensure_all_topics
from stream.settings import Settings

DAY_MS = 86_400_000


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Run:
    """One worker process of the measurement."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: Any = None

    def start_until_ready(self, timeout: float = 1800) -> float:
        started = time.monotonic()
        self.proc = spawn([sys.executable, "-m", "agents", "worker"], env=self.env, log_path=self.log)
        while _get(self.port, "/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                raise SystemExit(f"worker did not become ready; see {self.log}")
            time.sleep(0.1)
        return time.monotonic() - started

    def wait_processed(self, count: int, timeout: float = 3600) -> float:
        started = time.monotonic()
        while True:
            stats = _get(self.port, "/stats")[1]
            done = sum(stats["outcomes"].values()) if stats else 0
            if done >= count:
                return time.monotonic() - started
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                raise SystemExit(f"worker stopped at {done}/{count}; see {self.log}")
            time.sleep(0.5)

    def rss(self) -> int:
        return _rss_bytes(self.proc.pid)

    def stop(self) -> None:
        terminate(self.proc, grace=30.0)


def measure(customers: int, events: int, partitions: int, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"partitions": partitions, "events_produced": 0}
    with ServiceGroup() as services:
        settings = Settings(kafka_bootstrap_servers=services.bootstrap, redis_url=services.redis_url,
                            partitions=partitions)  # type: ignore[call-arg]
        ensure_all_topics(settings)
        port = free_port()
        datadir = workdir / "rocksdb-data"
        env = worker_env(services.bootstrap, services.redis_url, port, datadir, embedded=True)
        env.update(TAGGER_PARTITIONS=str(partitions), TAGGER_STORE="rocksdb://", TAGGER_SWEEP_INTERVAL="3600",
                   TAGGER_LOG_LEVEL="warning")
        worker = Run(env, port, workdir / "worker.log")
        worker.start_until_ready()  # no events yet: the baseline of an empty worker
        out["empty_worker_rss_bytes"] = worker.rss()
        worker.stop()

        config = DemoConfig(customers=customers, rate=0, start_ms=int(time.time() * 1000) - 365 * DAY_MS,
                            time_step_ms=365 * DAY_MS / events)
        out["events_produced"] = asyncio.run(run_demo(services.bootstrap, config, limit=events))
        worker.start_until_ready()
        out["first_run_processing_s"] = round(worker.wait_processed(out["events_produced"]), 1)
        time.sleep(5)  # let the last changelog writes and Redis flushes land
        client = redis.Redis.from_url(services.redis_url)
        out["customers"] = sum(1 for _ in client.scan_iter(match="tagger:c:*", count=10_000))
        out["rocksdb_worker_rss_bytes"] = worker.rss()
        out["redis_used_memory_bytes"] = int(client.info("memory")["used_memory"])
        worker.stop()
        out["rocksdb_dir_bytes"] = _du(datadir)
        changelog = consume_all(services.bootstrap, f"{settings.app_id}-customers-changelog", timeout=600)
        out["changelog_records"] = len(changelog)
        out["changelog_live_keys"] = len({r["key"] for r in changelog})
        del changelog

        out["restart_with_local_state_ready_s"] = round(worker.start_until_ready(), 1)
        out["rocksdb_worker_rss_after_restart_bytes"] = worker.rss()
        worker.stop()

        shutil.rmtree(datadir)
        out["restart_without_local_state_ready_s"] = round(worker.start_until_ready(), 1)
        out["rocksdb_worker_rss_after_full_recovery_bytes"] = worker.rss()
        worker.stop()

        memory = Run(dict(env, TAGGER_STORE="memory://", TAGGER_DATADIR=str(workdir / "memory-data")), port,
                     workdir / "memory-worker.log")
        out["memory_store_recovery_ready_s"] = round(memory.start_until_ready(), 1)
        time.sleep(2)
        out["memory_store_worker_rss_bytes"] = memory.rss()
        memory.stop()

    n = max(out["customers"], 1)
    per_million = 1_000_000 / n
    base = out["empty_worker_rss_bytes"]
    for key in ("rocksdb_worker_rss_bytes", "rocksdb_worker_rss_after_full_recovery_bytes",
                "memory_store_worker_rss_bytes"):  # above an empty worker
        out[f"{key}_per_million_customers_gib"] = round((out[key] - base) * per_million / 2**30, 2)
    for key in ("rocksdb_dir_bytes", "redis_used_memory_bytes"):
        out[f"{key}_per_million_customers_gib"] = round(out[key] * per_million / 2**30, 2)
    baseline = out["restart_with_local_state_ready_s"]  # group join and start-up, no records to read
    for key in ("restart_without_local_state_ready_s", "memory_store_recovery_ready_s"):
        out[f"{key}_changelog_records_per_s"] = round(out["changelog_records"] / max(out[key] - baseline, 0.1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=250_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tagger-measure-"))
    print(json.dumps(measure(args.customers, args.events, args.partitions, workdir), indent=2))  # noqa: T201
    print(f"logs: {workdir}", file=sys.stderr)  # noqa: T201


if __name__ == "__main__":
    main()
