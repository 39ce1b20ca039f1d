"""Webhook delivery, the pure part: subscriptions, matching, payloads, signing, backoff, circuit breaker.

The sink agent (agents/webhooks.py) reads ``tag-changes`` and ``churn-alerts``
in its own consumer group and calls these functions; nothing here does I/O.

Subscriptions come from a YAML file (``TAGGER_WEBHOOKS_FILE``)::

    webhooks:
      - name: sales-slack
        url: https://hooks.slack.com/services/T000/B000/XXXX
        format: slack            # or json (default)
        secret: change-me        # HMAC-SHA256 key; the file is secret material
        tags: [big_spender]      # tag changes adding or removing one of these tags
        tiers: [A]               # tag changes moving into or out of one of these tiers
        levels: [high, medium]   # churn alerts entering one of these levels
        max_concurrency: 4       # requests in flight to this URL
        timeout: 10              # seconds per request
    max_attempts: 8
    backoff_base: 0.5
    backoff_cap: 60
    max_delivery_seconds: 600
    breaker_failures: 5
    breaker_reset: 30

A subscription with no ``tags``, ``tiers`` or ``levels`` receives everything.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from stream.exceptions import TaggerError

SIGNATURE_HEADER = "X-Tagger-Signature"
TIMESTAMP_HEADER = "X-Tagger-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
KINDS = ("tag_change", "churn_alert")


class WebhookConfigError(TaggerError, ValueError):
    """The webhooks file is unreadable or invalid: the message names the problem; fix the file.

    Operators: the worker does not start (``invalid webhooks file: ...``); correct the file named
    in ``TAGGER_WEBHOOKS_FILE`` (YAML, see stream/webhook_delivery.py) and start it again.
    """


class Subscription(BaseModel):
    """Which messages go to one URL, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    format: Literal["json", "slack"] = "json"
    secret: SecretStr = SecretStr("")
    tags: frozenset[str] = frozenset()
    tiers: frozenset[str] = frozenset()
    levels: frozenset[Literal["none", "low", "medium", "high"]] = frozenset()
    max_concurrency: int = Field(4, ge=1, le=256)
    timeout: float = Field(10.0, gt=0, le=300)


class WebhookConfig(BaseModel):
    """All subscriptions and the delivery policy they share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    webhooks: tuple[Subscription, ...] = ()
    max_attempts: int = Field(8, ge=1, le=100)
    backoff_base: float = Field(0.5, gt=0)
    backoff_cap: float = Field(60.0, gt=0)
    max_delivery_seconds: float = Field(600.0, gt=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset: float = Field(30.0, gt=0)


def load_config(path: Path) -> WebhookConfig:
    """Read and validate the webhooks file (WebhookConfigError names the problem)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        config = WebhookConfig.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise WebhookConfigError(f"{path}: {exc}") from exc
    names = [s.name for s in config.webhooks]
    if len(names) != len(set(names)):
        raise WebhookConfigError(f"{path}: subscription names must be unique: {names}")
    return config


def matches(sub: Subscription, kind: str, message: Mapping[str, Any]) -> bool:
    """Does ``message`` (a tag change or churn alert) go to ``sub``?"""
    if not (sub.tags or sub.tiers or sub.levels):
        return True
    if kind == "churn_alert":
        return message.get("level") in sub.levels
    touched = set(message.get("added") or ()) | set(message.get("removed") or ())
    if sub.tags & touched:
        return True
    tier, previous = message.get("tier"), message.get("previous_tier")
    return tier != previous and bool(sub.tiers & {tier, previous})


def idempotency_key(topic: str, partition: int, offset: int, subscription: str,
                    message: Mapping[str, Any] | None = None) -> str:
    """``<subscription>:<change_id>``: the same for a message re-published after a crash (stream/domain/sequence.py)
    and for its redeliveries. A message without ``change_id`` (written before it existed) is named
    by its place instead, ``<subscription>:<topic>:<partition>:<offset>``."""
    ident = None if message is None else message.get("change_id")
    if isinstance(ident, str) and ident:
        return f"{subscription}:{ident}"
    return f"{subscription}:{topic}:{partition}:{offset}"


def _slack_text(kind: str, m: Mapping[str, Any]) -> str:
    cid = m.get("customer_id", "?")
    if kind == "churn_alert":
        because = "; ".join(m.get("reasons") or [])
        return (f":warning: churn risk *{m.get('previous_level')} → {m.get('level')}* for `{cid}` "
                f"(risk {m.get('risk')}): {because}")
    parts = []
    if m.get("tier") != m.get("previous_tier"):
        parts.append(f"tier *{m.get('previous_tier') or '-'} → {m.get('tier')}*")
    why: Mapping[str, Any] = m.get("reasons") or {}
    parts += [f"+{t} ({why[t]})" if t in why else f"+{t}" for t in m.get("added") or []]
    parts += [f"-{t}" for t in m.get("removed") or []]
    return f"customer `{cid}`: " + ", ".join(parts or ["tags unchanged"])


def payload(sub: Subscription, kind: str, message: Mapping[str, Any], key: str) -> bytes:
    """The request body: generic JSON, or a Slack incoming-webhook message."""
    if sub.format == "slack":
        text = _slack_text(kind, message)
        return orjson.dumps({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]})
    return orjson.dumps({"id": key, "type": kind, "subscription": sub.name, "data": message})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` HMAC-SHA256 of ``<timestamp>.<body>`` (timestamp in epoch seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance: float = 300.0) -> bool:
    """Receiver side: the signature is right and the timestamp is recent (replay protection)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def headers(sub: Subscription, body: bytes, key: str, kind: str, now: float) -> dict[str, str]:
    """Request headers: content type, idempotency key, event kind, timestamp and signature."""
    ts = int(now)
    out = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key, "X-Tagger-Event": kind,
           TIMESTAMP_HEADER: str(ts)}
    secret = sub.secret.get_secret_value()
    if secret:
        out[SIGNATURE_HEADER] = sign(secret, ts, body)
    return out


def backoff(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``attempt`` (1 = first retry): exponential, capped, half of it jittered."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + rng() * ceiling / 2


Verdict = Literal["ok", "retry", "permanent"]


def classify(status: int | None) -> Verdict:
    """2xx ok; no answer, 408, 429 and 5xx worth a retry; any other status will not get better."""
    if status is not None and 200 <= status < 300:
        return "ok"
    if status is None or status in (408, 425, 429) or status >= 500:
        return "retry"
    return "permanent"


@dataclass
class CircuitBreaker:
    """Per-URL breaker: ``failures`` in a row open it for ``reset`` seconds, then one trial call decides."""

    failures: int
    reset: float
    clock: Callable[[], float] = time.monotonic
    state: Literal["closed", "open", "half_open"] = "closed"
    consecutive: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False

    def wait_time(self) -> float:
        """0 if a call may go now (taking the half-open trial slot), else seconds to wait first."""
        if self.state == "closed":
            return 0.0
        remaining = self.opened_at + self.reset - self.clock()
        if self.state == "open" and remaining > 0:
            return remaining
        if self.trial_in_flight:
            return min(1.0, self.reset)
        self.state, self.trial_in_flight = "half_open", True
        return 0.0

    def success(self) -> None:
        self.state, self.consecutive, self.trial_in_flight = "closed", 0, False

    def failure(self) -> None:
        self.consecutive += 1
        if self.state == "half_open" or self.consecutive >= self.failures:
            self.state, self.opened_at = "open", self.clock()
        self.trial_in_flight = False


def dead_letter(sub: Subscription, kind: str, topic: str, partition: int, offset: int, key: str,
                message: Mapping[str, Any], error: str, attempts: int, now_ms: int) -> bytes:
    """A ``webhook-dead-letters`` record: what could not be delivered where, and why."""
    return orjson.dumps({"subscription": sub.name, "url": sub.url, "type": kind, "idempotency_key": key,
                         "source": {"topic": topic, "partition": partition, "offset": offset},
                         "error": error, "attempts": attempts, "failed_at_ms": now_ms, "message": message})
