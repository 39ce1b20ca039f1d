"""Fixtures that run the real thing: Apache Kafka (or Tansu), redis-server and tagger worker processes.

The broker is real Apache Kafka (one KRaft node from Maven Central, :mod:`stream.devtools.kafka_local`) whenever
Java and Maven are here, else Tansu; ``TAGGER_TEST_BROKER=tansu`` (or ``kafka``) picks one. Tansu-only
workarounds (the highwater shim, 6 s session timeouts) are set only on Tansu.

Every test gets its own topic names, consumer group and Redis key prefix, so
tests sharing the session's broker and Redis never see each other's data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from rules import default_rules_dir
from stream.access.auth import hash_token, new_token
from stream.devtools.embedded import ServiceGroup, TansuBroker, free_port, spawn, terminate
from stream.devtools.kafka_local import KafkaCluster, default_broker, kafka_unavailable
from stream.kafka.kafka_admin import consume_all, make_producer
from stream.kafka.topics import ensure_all_topics
from stream.settings import Settings

PARTITIONS = 4
# Broker settings of the tests' Kafka beside the defaults of stream.devtools.kafka_local: messages up to our producers'
# 16 MiB, so a worker sees (and dead-letters) an event over TAGGER_MAX_EVENT_BYTES, as it would where
# operators raised the broker's 1 MiB default (docker-compose.yml sets the same).
KAFKA_TEST_CONFIG = {"message.max.bytes": str(16 << 20), "replica.fetch.max.bytes": str(16 << 20)}


def wait_for(check: Callable[[], Any], timeout: float, what: str | Callable[[], str],
             interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (or what it returns then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        time.sleep(interval)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report ends with the tail of each of its workers' logs: CI keeps nothing else."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Namespace):
                for i, worker in enumerate(value.workers):
                    report.sections.append((f"worker-{i} log, last lines", worker.log()))
                    if worker.proc is not None and worker.proc.poll() is None:  # where its partitions stand
                        status, doc = worker.get("/stats?partitions")
                        report.sections.append((f"worker-{i} /stats?partitions (HTTP {status})",
                                                json.dumps(doc, indent=1)))


def broker_kind() -> str:
    """``kafka`` or ``tansu``: ``TAGGER_TEST_BROKER`` if set, else Kafka when Java and Maven are here."""
    chosen = os.environ.get("TAGGER_TEST_BROKER", "").strip().lower()
    if chosen not in ("", "kafka", "tansu"):
        raise pytest.UsageError(f"TAGGER_TEST_BROKER={chosen!r}: use kafka or tansu")
    return chosen or default_broker()


def require_kafka() -> None:
    """Skip, saying what to install, where real Apache Kafka cannot run."""
    why = kafka_unavailable()
    if why:
        pytest.skip(f"needs real Apache Kafka: {why}")


def tansu_settings(services: ServiceGroup) -> dict[str, Any]:
    """The workarounds only Tansu needs (BROKER_NOTES.md): none on real Kafka."""
    if isinstance(services.broker, TansuBroker):
        return {"tansu_compat": "true", "session_timeout": 6, "heartbeat_interval": 1}
    return {}


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceGroup]:
    broker = TansuBroker() if broker_kind() == "tansu" else KafkaCluster(1, config=KAFKA_TEST_CONFIG)
    with ServiceGroup(broker=broker) as group:
        yield group


@dataclass
class Worker:
    """One ``tagger worker`` process."""

    env: dict[str, str]
    log_path: Path
    web_port: int
    proc: Any = None
    tokens: dict[str, str] = field(default_factory=dict)  # API tokens by name (the namespace's)

    def start(self) -> Worker:
        self.proc = spawn([sys.executable, "-m", "agents", "worker"], env=self.env, log_path=self.log_path)
        wait_for(lambda: self.alive_and_serving(), 60, f"worker on port {self.web_port} to serve")
        return self

    def alive_and_serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
        return self.get("/healthz")[0] == 200

    def get(self, path: str, who: str | None = "admin", bearer: str | None = None) -> tuple[int, Any]:
        return self.request("GET", path, who=who, bearer=bearer)

    def request(self, method: str, path: str, body: Any = None, who: str | None = "admin",
                bearer: str | None = None) -> tuple[int, Any]:
        """HTTP to this worker as token ``who`` (None: no Authorization header), or with ``bearer`` verbatim."""
        secret = bearer if bearer is not None else self.tokens.get(who) if who else None
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=20.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass
class Namespace:
    """An isolated tagger deployment on the shared broker and Redis."""

    services: ServiceGroup
    tmp: Path
    env: dict[str, str]
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)  # token name (viewer, sales, ...) -> bearer token
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.delivery_errors: list[str] = []
        self.producer = make_producer(self.services.bootstrap, on_delivery=self._delivered)
        self.redis = redis.Redis.from_url(self.services.redis_url)

    def worker(self, **settings: Any) -> Worker:
        """Start a worker; ``settings`` override TAGGER_<NAME> variables for it."""
        port = free_port()
        env = dict(self.env, TAGGER_WEB_PORT=str(port),
                   TAGGER_DATADIR=str(self.tmp / f"data-{len(self.workers)}"),
                   **{f"TAGGER_{k.upper()}": str(v) for k, v in settings.items()})
        worker = Worker(env, self.tmp / f"worker-{len(self.workers)}.log", port, tokens=self.tokens)
        self.workers.append(worker)
        return worker.start()

    def topic(self, kind: str) -> str:
        return {"order": self.settings.orders_topic, "login": self.settings.logins_topic,
                "ticket": self.settings.tickets_topic, "profile": self.settings.profiles_topic,
                "manual": self.settings.tag_commands_topic, "privacy": self.settings.privacy_requests_topic}[kind]

    def produce(self, kind: str, event: dict[str, Any] | bytes, key: bytes | str | None = "auto",
                partition: int | None = None) -> None:
        value = event if isinstance(event, bytes) else orjson.dumps(event)
        if key == "auto":
            key = event["customer_id"] if isinstance(event, dict) else None
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        self.producer.produce(self.topic(kind), key=key, value=value, **kwargs)
        self.flush()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_errors.append(f"{msg.topic()}: {err}")

    def flush(self, timeout: float = 30) -> None:
        """Wait until the broker has every produced message; fail if some are still queued after ``timeout``
        or the broker refused one."""
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} produced messages not delivered to the broker within {timeout}s"
        assert not self.delivery_errors, f"the broker refused produced messages: {self.delivery_errors[:5]}"

    def read(self, topic: str, until: Callable[[list[dict[str, Any]]], bool],
             timeout: float = 60) -> list[dict[str, Any]]:
        records = consume_all(self.services.bootstrap, topic, timeout=timeout, until=until)
        assert until(records), f"{topic}: condition not met within {timeout}s; got {records[-5:]}"
        return records

    def changes(self, customer_id: str, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r["value"] for r in records if r["key"] == customer_id]
        return mine(self.read(self.settings.tag_changes_topic, lambda rs: until(mine(rs))))

    def view(self, customer_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(f"{self.settings.redis_prefix}:c:{customer_id}")
        return orjson.loads(raw) if raw else None

    def reevaluate(self) -> str:
        import subprocess

        out = subprocess.run([sys.executable, "-m", "agents", "reevaluate", "--timeout", "60"],
                             env=self.env, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout


@pytest.fixture
def namespace(services: ServiceGroup, tmp_path: Path) -> Iterator[Namespace]:
    yield from isolated_namespace(services, tmp_path)


def rules_without_bands(tmp: Path) -> Path:
    """A copy of the shipped rules with every exit cut-off equal to its entry cut-off: no tier bands and no churn
    exit levels, so tiers are exactly the plain rank definition (for the tests that check tiers exactly)."""
    target = tmp / "rules-without-bands"
    if target.exists():  # made already for this directory
        return target
    shutil.copytree(default_rules_dir(), target)
    for name, old, new in (("tiers.yaml", "a_exit_fraction: 0.07", "a_exit_fraction: 0.05"),
                           ("tiers.yaml", "b_exit_fraction: 0.25", "b_exit_fraction: 0.20"),
                           ("churn.yaml", "exit_levels:\n    low: 0.2\n    medium: 0.45\n    high: 0.65",
                            "exit_levels:\n    low: 0.25\n    medium: 0.5\n    high: 0.7")):
        text = (target / name).read_text()
        assert old in text, (name, old)
        (target / name).write_text(text.replace(old, new))
    return target


def deployment_fields(uid: str) -> dict[str, Any]:
    """Settings of one isolated deployment: its own group, Redis prefix and topics, stream clock, no sweeps."""
    return dict(
        app_id=f"tagger-{uid}", redis_prefix=f"t{uid}",
        orders_topic=f"orders-{uid}", logins_topic=f"logins-{uid}", tickets_topic=f"tickets-{uid}",
        tag_changes_topic=f"tag-changes-{uid}", dead_letters_topic=f"dead-letters-{uid}",
        profiles_topic=f"profiles-{uid}", tag_commands_topic=f"tag-commands-{uid}",
        churn_alerts_topic=f"churn-alerts-{uid}", privacy_requests_topic=f"privacy-{uid}",
        audit_log_topic=f"audit-{uid}",
        clock="stream", sweep_interval=3600, log_level="info",
    )


def isolated_namespace(services: ServiceGroup, tmp_path: Path) -> Iterator[Namespace]:
    """A fresh :class:`Namespace` whose workers stop at the end (for fixtures of any scope)."""
    uid = uuid.uuid4().hex[:8]
    fields: dict[str, Any] = dict(
        **deployment_fields(uid), partitions=PARTITIONS, **tansu_settings(services),
    )
    settings = Settings(kafka_bootstrap_servers=services.bootstrap, redis_url=services.redis_url, **fields)
    # one API token per role, and a sales token of the support team (restricted tags owned by support)
    principals = {"viewer": ("viewer", []), "sales": ("sales", []), "finance": ("finance", []),
                  "admin": ("admin", []), "support": ("sales", ["support"])}
    tokens = {name: new_token() for name in principals}
    entries = [{"name": name, "role": role, "teams": teams, "sha256": hash_token(tokens[name])}
               for name, (role, teams) in principals.items()]
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=services.bootstrap, REDIS_URL=services.redis_url,
               TAGGER_API_TOKENS=json.dumps(entries), **{f"TAGGER_{k.upper()}": str(v) for k, v in fields.items()})
    ensure_all_topics(settings)
    ns = Namespace(services, tmp_path, env, settings, tokens)
    try:
        yield ns
    finally:
        for worker in ns.workers:
            worker.stop()
