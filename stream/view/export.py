"""``tagger export``: every current customer view in Redis, as CSV or JSON Lines.

Redis is inside the trust boundary (the views are unfiltered), so the export is
an operator's tool: whoever can run it can read Redis anyway. Keys are read with
SCAN in batches, so a large keyspace is streamed, not loaded at once.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Mapping
from typing import Any, TextIO

import orjson

#: CSV columns, in order; tags are joined with ``;`` and reasons as ``tag: reason`` with `` | ``.
CSV_COLUMNS = ("customer_id", "tier", "score", "tags", "manual_tags", "churn_level", "churn_risk",
               "spend_365d", "evaluated_at", "ruleset_version", "reasons")


def csv_row(view: Mapping[str, Any]) -> dict[str, Any]:
    """One flat CSV row of a customer view."""
    churn = view.get("churn") or {}
    manual = view.get("manual") or {}
    manual_tags = manual.get("tags") or {}
    reasons = view.get("reasons") or {}
    return {
        "customer_id": view.get("customer_id", ""),
        "tier": view.get("tier") or "",
        "score": "" if view.get("score") is None else view.get("score"),
        "tags": ";".join(view.get("tags") or []),
        "manual_tags": ";".join(sorted(manual_tags)) if isinstance(manual_tags, dict) else ";".join(manual_tags),
        "churn_level": churn.get("level", ""),
        "churn_risk": churn.get("risk", ""),
        "spend_365d": (view.get("aggregates") or {}).get("spend_365d", ""),
        "evaluated_at": view.get("evaluated_at", ""),
        "ruleset_version": view.get("ruleset_version", ""),
        "reasons": " | ".join(f"{t}: {r}" for t, r in sorted(reasons.items())),
    }


async def views(client: Any, prefix: str, batch: int = 500) -> AsyncIterator[dict[str, Any]]:
    """Every customer view under ``prefix``, in SCAN order."""
    cursor: int = 0
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=f"{prefix}:c:*", count=batch)
        if keys:
            for raw in await client.mget(keys):
                if raw:
                    yield orjson.loads(raw)
        if int(cursor) == 0:
            return


async def export(client: Any, prefix: str, out: TextIO, fmt: str, *,
                 tags: frozenset[str] = frozenset(), tiers: frozenset[str] = frozenset()) -> int:
    """Write matching views to ``out`` (``csv`` or ``jsonl``); the number written."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    written = 0
    async for view in views(client, prefix):
        if tags and not tags & set(view.get("tags") or []):
            continue
        if tiers and view.get("tier") not in tiers:
            continue
        if writer is not None:
            writer.writerow(csv_row(view))
        else:
            out.write(orjson.dumps(view, option=orjson.OPT_SORT_KEYS).decode() + "\n")
        written += 1
    return written
