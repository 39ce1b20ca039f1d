"""Worker groups and backlogs for ``tagger bench`` (see :mod:`agents.bench.harness` for the phases).

A *group* is N worker processes of one command (``worker`` or ``baseline-worker``, or
``quix``: the Quix Streams peer, ``agents/bench/quix.py``) in one consumer group. Each
group has its own app id, input and output topics and Redis prefix, so every group
reads the same backlog from its start and no group sees another's state. Each worker of
a group has its own web port and data dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from stream.devtools.demo import DEFAULT_TOPICS, DemoConfig, DemoGenerator
from stream.devtools.embedded import free_port, spawn, terminate, worker_env
from stream.settings import Settings

Message = tuple[str, bytes | None, int | None, bytes]
"""One backlog message: (default topic name, key, partition or None for the key's, value)."""

# settings field of each topic a group gets its own copy of (inputs and outputs)
_GROUP_TOPICS = {"orders": "ORDERS", "logins": "LOGINS", "support-tickets": "TICKETS",
                 "tag-changes": "TAG_CHANGES", "churn-alerts": "CHURN_ALERTS", "dead-letters": "DEAD_LETTERS"}
NOT_EVENTS = ("batch", "command")  # /stats outcomes that are not finished input events


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET on a local worker; status 0 if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def finished_events(stats_body: bytes) -> int:
    """Input events a worker has finished with, from its /stats document (0 if unreadable): counted
    and, when the worker is behind (evaluation under backlog, agents.engine.runtime), evaluated too."""
    try:
        doc = json.loads(stats_body)
        outcomes = doc["outcomes"]
    except (ValueError, KeyError, TypeError):
        return 0
    counted = sum(int(n) for outcome, n in outcomes.items() if outcome not in NOT_EVENTS)
    return counted - int(doc.get("events_waiting_evaluation", 0))


@dataclass
class Group:
    """N workers of one command in one consumer group, with their own topics and Redis prefix."""

    name: str
    command: str
    env: dict[str, str]
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    expected: int = 0  # input events this group should have finished by now

    def topic(self, default: str) -> str:
        """This group's name of a default topic (``orders`` → ``tagger-1-orders``)."""
        return f"{self.name}-{default}" if default in _GROUP_TOPICS else default

    @property
    def demo_topics(self) -> dict[str, str]:
        """Event kind → this group's input topic, for :class:`DemoConfig`."""
        return {kind: self.topic(name) for kind, name in DEFAULT_TOPICS.items()}

    @property
    def app_id(self) -> str:
        return self.env["TAGGER_APP_ID"]

    @property
    def redis_prefix(self) -> str:
        return self.env["TAGGER_REDIS_PREFIX"]


def new_group(name: str, command: str, count: int, *, bootstrap: str, redis_url: str, partitions: int,
              workdir: Path, settings: dict[str, str] | None = None, tansu: bool = True) -> Group:
    """Start ``count`` workers of ``command`` as group ``name`` (not waited for: see :func:`wait_ready`),
    with extra ``settings`` (environment variables); ``tansu``: the broker is Tansu (its settings)."""
    env = worker_env(bootstrap, redis_url, 0, workdir, embedded=tansu) | (settings or {})
    env.update(TAGGER_PARTITIONS=str(partitions), TAGGER_APP_ID=f"bench-{name}", TAGGER_REDIS_PREFIX=f"bench-{name}")
    env.update({f"TAGGER_{field_}_TOPIC": f"{name}-{topic}" for topic, field_ in _GROUP_TOPICS.items()})
    group = Group(name, command, env, workdir)
    for i in range(count):
        group.ports.append(free_port())
        group.logs.append(workdir / f"{name}-{i}.log")
        group.procs.append(spawn_worker(group, i))
    return group


def spawn_worker(group: Group, i: int) -> subprocess.Popen[bytes]:
    """Start (or restart) worker ``i`` of ``group`` with its own port and data dir."""
    env = dict(group.env, TAGGER_WEB_PORT=str(group.ports[i]),
               TAGGER_DATADIR=str(group.workdir / f"{group.name}-{i}-data"))
    module = ["agents.bench.quix"] if group.command == "quix" else ["agents", group.command]
    return spawn([sys.executable, "-m", *module], env=env, log_path=group.logs[i])


def stop_group(group: Group) -> None:
    """Stop every worker of the group at once (SIGTERM, SIGKILL after 15 s)."""
    with ThreadPoolExecutor(max_workers=max(len(group.procs), 1)) as pool:
        list(pool.map(lambda proc: terminate(proc, grace=15.0), group.procs))


def check_alive(group: Group) -> None:
    """Raise a ClickException naming the log of any worker of the group that has exited."""
    for i, proc in enumerate(group.procs):
        if proc.poll() is not None:
            raise click.ClickException(f"{group.name} worker {i} exited with code {proc.returncode}; "
                                       f"see its log {group.logs[i]}")


def wait_ready(group: Group, timeout: float = 180.0) -> float:
    """Wait until every worker answers /readyz 200 in two polls a second apart; returns seconds waited.

    Two all-ready polls in a row: every worker has joined and holds partitions and no
    rebalance started in between, so a timing that starts now sees no rebalance.
    """
    began, streak = time.monotonic(), 0
    while streak < 2:
        check_alive(group)
        if time.monotonic() - began > timeout:
            status = {port: get(port, "/readyz")[0] for port in group.ports}
            raise click.ClickException(f"{group.name}: workers not ready after {timeout:.0f}s "
                                       f"(/readyz by port: {status}); see {[str(p) for p in group.logs]}")
        ready = all(get(port, "/readyz")[0] == 200 for port in group.ports)
        streak = streak + 1 if ready else 0
        time.sleep(1.0 if ready else 0.25)
    return time.monotonic() - began


def done(group: Group) -> int:
    """Input events the group's workers have finished, summed over their /stats."""
    return sum(finished_events(get(port, "/stats")[1]) for port in group.ports)


def wait_done(group: Group, target: int, stall_timeout: float = 120.0, poll: float = 0.1) -> None:
    """Wait until the group has finished ``target`` events; fail if it makes no progress for ``stall_timeout``."""
    last, since = -1, time.monotonic()
    while (now_done := done(group)) < target:
        check_alive(group)
        if now_done != last:
            last, since = now_done, time.monotonic()
        elif time.monotonic() - since > stall_timeout:
            raise click.ClickException(f"{group.name}: stuck at {now_done} of {target} events for "
                                       f"{stall_timeout:.0f}s; see {[str(p) for p in group.logs]}")
        time.sleep(poll)


def wait_settled(group: Group, timeout: float = 30.0) -> None:
    """Wait until no worker of the group has evaluations or Redis views waiting, then the group's commit
    interval and a second more (the changelog write of what was left dirty, and its commit), so that a
    latency phase measures a steady worker.

    Right after a drain a worker still writes the views of the customers it evaluated last (~2,000
    after 30,000 events over 3,000 customers): a phase started then had p99 ~200 ms at 1,000 ev/s
    against 56-89 ms five seconds later (same script, same worker).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(group)
        docs = [json.loads(get(port, "/stats")[1] or b"{}") for port in group.ports]
        if all(d.get("redis_pending") == 0 and d.get("events_waiting_evaluation") == 0 for d in docs):
            break
        time.sleep(0.1)
    time.sleep(float(group.env.get("TAGGER_COMMIT_INTERVAL", Settings.model_fields["commit_interval"].default)) + 1)


def drain_rate(group: Group, expected: int, started: float, stall_timeout: float = 120.0) -> float:
    """Events/s of the group from ``started`` (monotonic: when the backlog began to be produced) until
    ``expected`` are finished (lag 0).

    The workers are ready and idle before production starts, so this is the time to drain a
    backlog that appears at once. (Timing from the first finished event instead fails when a small
    backlog, e.g. 150 envelopes, is drained within one poll.)
    """
    wait_done(group, expected, stall_timeout, poll=0.02)
    return expected / (time.monotonic() - started)


def backlog(config: DemoConfig, events: int, partitions: int, batch: int) -> list[Message]:
    """``events`` demo events: one per message, or batch envelopes of up to ``batch`` per topic partition."""
    from stream.kafka.kafka_admin import expected_partition

    generated = DemoGenerator(config).take(events)
    if batch <= 0:
        return [(topic, key, None, value) for topic, key, value in generated]
    pending: dict[tuple[str, int], list[bytes]] = {}
    out: list[Message] = []

    def envelope(slot: tuple[str, int], values: list[bytes]) -> None:
        value = b'{"batch_id":"b%d","events":[' % (len(out) + 1) + b",".join(values) + b"]}"
        out.append((slot[0], None, slot[1], value))

    for topic, key, value in generated:
        slot = (topic, expected_partition(key, partitions))
        pending.setdefault(slot, []).append(value)
        if len(pending[slot]) >= batch:
            envelope(slot, pending.pop(slot))
    for slot, values in pending.items():
        envelope(slot, values)
    return out


def produce(bootstrap: str, messages: list[Message], group: Group) -> float:
    """Produce ``messages`` to the group's copy of each topic; returns the seconds it took."""
    from stream.kafka.kafka_admin import make_producer

    rename = group.topic
    producer: Any = make_producer(bootstrap)
    began = time.monotonic()
    for topic, key, partition, value in messages:
        while True:
            try:
                if partition is None:
                    producer.produce(rename(topic), value, key)
                else:
                    producer.produce(rename(topic), value, key, partition=partition)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.01)
    if producer.flush(60):
        raise click.ClickException("backlog not delivered to the broker within 60 s")
    return time.monotonic() - began
