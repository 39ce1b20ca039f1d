"""Dead-letter records: the original message, where it came from, and why it failed."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson


def _text_or_base64(data: bytes, limit: int) -> tuple[str, bool, bool]:
    """Return (text, is_base64, truncated) for ``data`` cut to ``limit`` bytes."""
    truncated = len(data) > limit
    cut = data[:limit]
    try:
        return cut.decode("utf-8"), False, truncated
    except UnicodeDecodeError:
        if truncated:  # the cut may have split a multi-byte character
            try:
                data.decode("utf-8")
                return cut.decode("utf-8", errors="ignore"), False, True
            except UnicodeDecodeError:
                pass  # not text at all: base64 below
        return base64.b64encode(cut).decode("ascii"), True, truncated


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: str,
    max_value_bytes: int,
) -> bytes:
    """Build the JSON value of a ``dead-letters`` record (contract v1)."""
    record: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "error": error,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
    }
    if key is None:
        record["key"] = None
    else:
        record["key"], key_b64, _ = _text_or_base64(key, 1024)
        if key_b64:
            record["key_base64"] = True
    if value is None:
        record["value"] = None
    else:
        record["value"], value_b64, truncated = _text_or_base64(value, max_value_bytes)
        if value_b64:
            record["value_base64"] = True
        if truncated:
            record["value_truncated"] = True
            record["value_size"] = len(value)
    return orjson.dumps(record)
