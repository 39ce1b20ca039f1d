"""Webhook sink against a real local HTTP server that fails, is slow, drops connections and answers 500 a while.

Every emitted tag change and churn alert must reach the flaky endpoint with a 2xx exactly once
(also across a worker SIGKILL and restart, which may re-publish some: the key is their change_id),
every request's HMAC-SHA256 signature must verify,
and an endpoint that never recovers must end in webhook-dead-letters, once per message.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.kafka.kafka_admin import consume_all
from stream.webhook_delivery import verify

from .conftest import Namespace, wait_for

pytestmark = pytest.mark.integration
SECRET = "whsec-test-key"  # noqa: S105 - a test key


class Receiver:
    """Counts requests per idempotency key; /flaky fails for a while, /dead always answers 503."""

    def __init__(self, failing_for: float) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.accepted: Counter[str] = Counter()
        self.bad_signatures = 0
        self.first: float | None = None
        self.failing_for = failing_for
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.decide(self.path, self.headers, body)
                if status == 0:  # drop the connection without an answer
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def decide(self, path: str, headers: Any, body: bytes) -> int:
        key = headers.get("Idempotency-Key")
        if path == "/dead":
            return 503
        ok = verify(SECRET, headers.get("X-Tagger-Timestamp", ""), body, headers.get("X-Tagger-Signature", ""))
        with self.lock:
            now = time.monotonic()
            self.first = self.first or now
            n = len(self.requests)
            self.requests.append({"key": key, "body": body})
            if not ok:
                self.bad_signatures += 1
                return 401
            if now - self.first < self.failing_for:
                return 500 if n % 4 else 0  # 500s, and every 4th connection dropped
        if n % 5 == 0:
            time.sleep(1.5)  # slow, but within the 3 s timeout
        with self.lock:
            self.accepted[key] += 1
        return 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failing_for=4.0)
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_every_message_delivered_exactly_once_after_failures_and_a_restart(
        namespace: Namespace, receiver: Receiver, tmp_path: Path) -> None:
    config = tmp_path / "webhooks.yaml"
    config.write_text(f"""
webhooks:
  - name: flaky
    url: http://127.0.0.1:{receiver.port}/flaky
    secret: {SECRET}
    max_concurrency: 3
    timeout: 3
  - name: dead
    url: http://127.0.0.1:{receiver.port}/dead
    format: slack
    tiers: [A, B, C, D]
max_attempts: 50
backoff_base: 0.1
backoff_cap: 1
max_delivery_seconds: 8
breaker_failures: 3
breaker_reset: 1
""")
    wdl = f"webhook-dead-letters-{namespace.settings.app_id}"
    overrides = {"webhooks_file": str(config), "webhook_dead_letters_topic": wdl}
    worker = namespace.worker(**overrides)

    def order(cid: str, n: int) -> dict[str, Any]:
        return {"event_id": f"o-{cid}-{n}", "customer_id": cid, "ts": "2026-11-20T10:00:00Z",
                "order_id": f"o-{cid}-{n}", "amount": "120.00" if n else "40.00"}

    for i in range(8):
        namespace.produce("order", order(f"wh-{i:02d}", 0))

    def emitted() -> set[str]:
        keys = set()
        for topic in (namespace.settings.tag_changes_topic, namespace.settings.churn_alerts_topic):
            for r in consume_all(namespace.services.bootstrap, topic, timeout=2):
                keys.add(f"flaky:{r['value']['change_id']}")  # a re-published copy has the same key
        return keys

    wait_for(lambda: len(emitted()) >= 8, 60, "tag changes for 8 customers")
    wait_for(lambda: set(receiver.accepted) >= emitted(), 60, "every message accepted by /flaky")
    assert receiver.requests and len(receiver.requests) > len(receiver.accepted)  # there were failures

    worker.signal(signal.SIGKILL)  # uncommitted offsets come again after the restart; none may repeat
    worker = namespace.worker(**overrides)
    for i in range(8, 12):
        namespace.produce("order", order(f"wh-{i:02d}", 0))
    namespace.produce("order", order("wh-00", 1))
    wait_for(lambda: len(emitted()) >= 12, 90, "tag changes after the restart")
    wait_for(lambda: set(receiver.accepted) >= emitted(), 60, "every message accepted after the restart")
    time.sleep(3)  # room for any repeat to show up
    expected = emitted()
    assert set(receiver.accepted) == expected
    assert all(n == 1 for n in receiver.accepted.values()), receiver.accepted.most_common(3)
    assert receiver.bad_signatures == 0
    bodies = [orjson.loads(r["body"]) for r in receiver.requests]
    assert all(b["subscription"] == "flaky" and b["id"] in expected for b in bodies)

    # /dead never recovers: each tier-changing message ends in the dead-letter topic, once
    changes = consume_all(namespace.services.bootstrap, namespace.settings.tag_changes_topic, timeout=2)
    tiered = {f"dead:{r['value']['change_id']}" for r in changes if r["value"]["tier"] != r["value"]["previous_tier"]}
    assert tiered
    def dead_letters() -> list[dict[str, Any]] | None:
        records = consume_all(namespace.services.bootstrap, wdl, timeout=3)
        return records if {r["value"]["idempotency_key"] for r in records} >= tiered else None

    dead = wait_for(dead_letters, 60, "dead letters for every tier change sent to /dead")
    keys = Counter(r["value"]["idempotency_key"] for r in dead)
    assert set(keys) == tiered and all(n == 1 for n in keys.values()), keys.most_common(3)
    assert all(r["value"]["error"].startswith(("HTTP 503", "circuit open")) for r in dead)
    status, _ = worker.get("/healthz")
    assert status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    def value(series: str) -> float:
        found = re.search(re.escape(series) + r" ([0-9.e+]+)", text)
        assert found, series
        return float(found.group(1))

    assert value('tagger_webhook_deliveries_total{outcome="delivered",subscription="flaky"}') >= 4
    assert value('tagger_webhook_attempts_total{result="http_error",subscription="dead"}') >= 1
    assert value('tagger_webhook_deliveries_total{outcome="dead_letter",subscription="dead"}') >= 1
    assert value('tagger_webhook_delivery_seconds_count{outcome="delivered",subscription="flaky"}') >= 4
