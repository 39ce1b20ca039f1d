"""``tagger replay``: read a history file (CSV, whitespace columns or JSON Lines) into an input topic.

Rows become contract events through :mod:`stream.domain.history` and are checked by the
worker's own parser before they are sent, so a row the worker would dead-letter
is rejected here instead, with its line number. Every row ends in exactly one
count: sent, rejected or failed (the broker did not acknowledge it).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stream.domain.history import ColumnMap, RowError, encode, to_event
from stream.settings import Settings

FORMATS = ("auto", "csv", "ws", "jsonl")


@dataclass
class Summary:
    """What happened to the rows of one replay."""

    read: int = 0
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # "line N: reason", every one

    def line(self) -> str:
        return f"rows read {self.read}, sent {self.sent}, rejected {self.rejected}, failed {self.failed}"


def detect_format(path: Path) -> str:
    """``jsonl`` for .jsonl/.ndjson/.json, ``csv`` for .csv, else ``ws`` (whitespace-separated columns)."""
    suffix = path.suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".ndjson", ".json") else "csv" if suffix == ".csv" else "ws"


def read_rows(handle: TextIO, fmt: str, *, delimiter: str = ",",
              columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """(line number, row) pairs; a line that is not a row at all comes back as a RowError."""
    if fmt == "jsonl":
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                yield number, RowError(f"not valid JSON: {exc}")
                continue
            yield number, value if isinstance(value, dict) else RowError("not a JSON object")
        return
    if fmt == "ws":
        lines = ((n, text.split()) for n, text in enumerate(handle, start=1) if text.strip())
    else:
        reader = csv.reader(handle, delimiter=delimiter)
        lines = ((reader.line_num, cells) for cells in reader if cells)
    names = columns
    for number, cells in lines:
        if names is None:
            names = [c.strip() for c in cells]
            continue
        if len(cells) != len(names):
            yield number, RowError(f"{len(cells)} columns, expected {len(names)} ({', '.join(names)})")
            continue
        yield number, dict(zip(names, cells, strict=True))


def count_lines(path: Path) -> int:
    """Lines in the file, for the progress bar."""
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


class Pacer:
    """Spaces sends to at most ``rate`` per second (0: as fast as possible)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start: float | None = None
        self.count = 0

    def wait(self) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        if self.start is None:
            self.start = now
        due = self.start + self.count / self.rate
        if due > now:
            self.sleep(due - now)
        self.count += 1


def replay(path: Path, mapping: ColumnMap, settings: Settings, *, topic: str, fmt: str = "auto",
           delimiter: str = ",", columns: list[str] | None = None, rate: float = 0.0,
           stop_on_error: bool = False, progress: bool = True, console: Console | None = None) -> Summary:
    """Send every good row of ``path`` to ``topic`` keyed by customer id; report every bad one."""
    from stream.kafka.kafka_admin import make_producer
    from stream.security import librdkafka_config

    console = console or Console(stderr=True, highlight=False)
    fmt = detect_format(path) if fmt == "auto" else fmt
    summary = Summary()
    pacer = Pacer(rate)

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            summary.sent += 1
        else:
            summary.failed += 1
            summary.errors.append(f"send failed: {err}")

    producer = make_producer(librdkafka_config(settings), on_delivery=delivered)
    columns_bar = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns_bar, console=console, disable=not progress, transient=True) as bar, \
            path.open(newline="" if fmt == "csv" else None, encoding="utf-8", errors="replace") as handle:
        task = bar.add_task(f"replay {path.name}", total=count_lines(path) if progress else None)
        for number, row in read_rows(handle, fmt, delimiter=delimiter, columns=columns):
            summary.read += 1
            try:
                if isinstance(row, RowError):
                    raise row
                event = to_event(row, mapping, number)
                value = encode(event, mapping, currency=settings.currency, max_bytes=settings.max_event_bytes)
            except RowError as exc:
                summary.rejected += 1
                summary.errors.append(f"line {number}: {exc}")
                console.print(f"{path.name}: line {number}: rejected: {exc}", markup=False, soft_wrap=True)
                if stop_on_error:
                    break
                continue
            pacer.wait()
            _produce(producer, topic, event["customer_id"].encode(), value)
            bar.update(task, completed=number)
        producer.flush(60)
    summary.failed += len(producer)  # still queued after the flush timeout: not acknowledged
    return summary


def _produce(producer: Any, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            break
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.1)
    producer.poll(0)
