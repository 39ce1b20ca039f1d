"""Audit records: fixed fields, no floats (so no money), and both sinks (no broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.access.audit import AuditLog, audit_record
from stream.access.auth import Principal

SAM = Principal("sam", "sales", frozenset({"support"}))


def test_a_record_says_who_what_when_and_which_customer() -> None:
    record = audit_record(action="customer.read", outcome="allowed", status=200, principal=SAM, customer_id="c1",
                          disclosed=["tier", "tags:public"], worker="h:1", at_ms=0, detail={"found": True})
    assert record["actor"] == "sam" and record["role"] == "sales" and record["action"] == "customer.read"
    assert record["customer_id"] == "c1" and record["at"] == "1970-01-01T00:00:00.000Z"
    assert record["outcome"] == "allowed" and record["status"] == 200 and record["found"] is True
    assert record["disclosed"] == ["tier", "tags:public"] and len(record["audit_id"]) == 32


def test_anonymous_refusals_are_recorded_without_an_actor() -> None:
    record = audit_record(action="privacy.request", outcome="unauthenticated", status=401, principal=None,
                          detail={"reason": "missing bearer token"})
    assert record["actor"] is None and record["role"] is None and record["customer_id"] is None


@pytest.mark.parametrize("detail", [
    {"amount": 12.5},  # not an audit field
    {"tag": 12840.0},  # a float never gets in
    {"returned": 1.5},
    {"customers": ["c1", 3.5]},
    {"reason": {"spend_365d": 12840.0}},
])
def test_money_cannot_enter_a_record(detail: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="audit field"):
        audit_record(action="tag.list", outcome="allowed", status=200, principal=SAM, detail=detail)


def test_unknown_action_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        audit_record(action="customer.delete", outcome="allowed", status=200, principal=SAM)


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.acked = 0
        self.fail = fail

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> Any:
        self.sent.append((key, value))

        async def ack() -> None:
            if self.fail:
                raise RuntimeError("broker down")
            self.acked += 1
        return asyncio.ensure_future(ack())


async def test_both_sinks_get_the_same_json_line(tmp_path: Path) -> None:
    sink, path = Sink(), tmp_path / "audit.jsonl"
    log = AuditLog(sink, path)
    records = [audit_record(action="customer.read", outcome="allowed", status=200, principal=SAM,
                            customer_id=f"c{i}") for i in range(3)]
    for record in records:
        await log.write(record)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == records
    assert [(k, orjson.loads(v)) for k, v in sink.sent] == [(f"c{i}".encode(), r) for i, r in enumerate(records)]
    assert sink.acked == 3 and log.written == 3
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_failed_kafka_write_raises_so_the_api_can_refuse(tmp_path: Path) -> None:
    log = AuditLog(Sink(fail=True), None)
    with pytest.raises(RuntimeError, match="broker down"):
        await log.write(audit_record(action="tag.list", outcome="allowed", status=200, principal=SAM))
