"""Webhook pure logic: config, matching, payloads, signing, backoff, classification, circuit breaker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.webhook_delivery import (
    CircuitBreaker,
    Subscription,
    WebhookConfigError,
    backoff,
    classify,
    headers,
    load_config,
    matches,
    payload,
    sign,
    verify,
)

CHANGE = {"customer_id": "c1", "added": ["big_spender"], "removed": [], "tier": "A", "previous_tier": "B",
          "reasons": {"big_spender": "spend_365d=12840.00 >= 10000"}}
ALERT = {"customer_id": "c1", "level": "high", "previous_level": "medium", "risk": 0.81,
         "reasons": ["no paid order for 41 days; usual gap 7 days"]}


def sub(**kw: object) -> Subscription:
    return Subscription.model_validate({"name": "s", "url": "http://127.0.0.1:1/h", **kw})


def test_matching_by_tag_tier_and_level() -> None:
    assert matches(sub(), "tag_change", CHANGE) and matches(sub(), "churn_alert", ALERT)
    assert matches(sub(tags=["big_spender"]), "tag_change", CHANGE)
    assert matches(sub(tags=["big_spender"]), "tag_change", {**CHANGE, "added": [], "removed": ["big_spender"]})
    assert not matches(sub(tags=["vip"]), "tag_change", {**CHANGE, "tier": "B"})
    assert matches(sub(tiers=["B"]), "tag_change", CHANGE)  # moved out of B
    assert not matches(sub(tiers=["A"]), "tag_change", {**CHANGE, "previous_tier": "A"})  # stayed in A
    assert not matches(sub(tags=["big_spender"]), "churn_alert", ALERT)
    assert matches(sub(levels=["high"]), "churn_alert", ALERT)
    assert not matches(sub(levels=["medium"]), "churn_alert", ALERT)  # leaving medium is not entering it
    assert not matches(sub(levels=["high"]), "tag_change", CHANGE)


def test_payloads_generic_and_slack() -> None:
    generic = orjson.loads(payload(sub(), "tag_change", CHANGE, "k1"))
    assert generic == {"id": "k1", "type": "tag_change", "subscription": "s", "data": CHANGE}
    slack = orjson.loads(payload(sub(format="slack"), "tag_change", CHANGE, "k1"))
    assert "tier *B → A*" in slack["text"] and "+big_spender (spend_365d=12840.00 >= 10000)" in slack["text"]
    assert slack["blocks"][0]["text"]["type"] == "mrkdwn"
    alert = orjson.loads(payload(sub(format="slack"), "churn_alert", ALERT, "k"))["text"]
    assert "medium → high" in alert and "usual gap 7 days" in alert


def test_signature_verifies_and_rejects_tampering_and_old_timestamps() -> None:
    signed = sub(secret="s3cret")  # noqa: S106 - a test key
    body = payload(signed, "churn_alert", ALERT, "k")
    h = headers(signed, body, "k", "churn_alert", now=1_700_000_000.5)
    assert h["Idempotency-Key"] == "k" and h["X-Tagger-Timestamp"] == "1700000000"
    assert h["X-Tagger-Signature"] == sign("s3cret", 1_700_000_000, body)
    assert verify("s3cret", h["X-Tagger-Timestamp"], body, h["X-Tagger-Signature"], now=1_700_000_010)
    assert not verify("wrong", h["X-Tagger-Timestamp"], body, h["X-Tagger-Signature"], now=1_700_000_010)
    assert not verify("s3cret", h["X-Tagger-Timestamp"], body + b" ", h["X-Tagger-Signature"], now=1_700_000_010)
    assert not verify("s3cret", h["X-Tagger-Timestamp"], body, h["X-Tagger-Signature"], now=1_700_001_000)
    assert "X-Tagger-Signature" not in headers(sub(), body, "k", "churn_alert", now=0)
    # the known HMAC-SHA256 of "1.{}" with key "key", computed independently
    import hashlib
    import hmac
    assert sign("key", 1, b"{}") == "sha256=" + hmac.new(b"key", b"1.{}", hashlib.sha256).hexdigest()


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert [backoff(a, 0.5, 60, rng=lambda: 0.0) for a in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]
    assert [backoff(a, 0.5, 60, rng=lambda: 1.0) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff(20, 0.5, 60, rng=lambda: 1.0) == 60
    assert 30 <= backoff(20, 0.5, 60) <= 60


def test_classification() -> None:
    assert classify(200) == classify(204) == "ok"
    assert classify(None) == classify(500) == classify(503) == classify(429) == classify(408) == "retry"
    assert classify(400) == classify(404) == classify(410) == "permanent"


def test_circuit_breaker_opens_waits_and_half_opens() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=3, reset=10.0, clock=lambda: now[0])
    for _ in range(2):
        assert b.wait_time() == 0
        b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and b.wait_time() == 10.0
    now[0] = 4.0
    assert b.wait_time() == 6.0
    now[0] = 10.0
    assert b.wait_time() == 0 and b.state == "half_open"
    assert b.wait_time() > 0  # only one trial at a time
    b.failure()
    assert b.state == "open" and b.wait_time() == 10.0
    now[0] = 21.0
    assert b.wait_time() == 0
    b.success()
    assert b.state == "closed" and b.wait_time() == 0 and b.consecutive == 0


def test_config_file(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("webhooks:\n  - {name: a, url: 'http://x/h', tags: [vip], format: slack, secret: zq9-secret}\n"
                 "max_attempts: 3\n")
    config = load_config(f)
    assert config.max_attempts == 3 and config.webhooks[0].tags == frozenset({"vip"})
    assert "zq9-secret" not in repr(config)  # secret masked
    f.write_text("webhooks:\n  - {name: a, url: 'ftp://x'}\n")
    with pytest.raises(WebhookConfigError, match="url"):
        load_config(f)
    f.write_text("webhooks:\n  - {name: a, url: 'http://x', levels: [extreme]}\n")
    with pytest.raises(WebhookConfigError, match="levels"):
        load_config(f)
    f.write_text("webhooks:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n")
    with pytest.raises(WebhookConfigError, match="unique"):
        load_config(f)
