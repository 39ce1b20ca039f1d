"""Checks the output sequences of a run (pure): after dropping repeats by ``change_id``, is each customer's
``seq`` exactly 1..n in each output topic?

Give :func:`check_sequences` the ``tag-changes`` and ``churn-alerts`` records as a
``read_committed`` consumer sees them, in the order it saw them: dicts with ``key`` (the
customer id, bytes or text), ``value`` (the parsed message) and, if known, ``topic``
(else the topic is told from the message: churn alerts have a ``level``). Per customer
and topic it reports the raw repeats (records whose ``change_id`` came before), the gaps
(numbers missing from 1..max), the repeats whose content differs from the first copy
(``emitted_at`` aside, which each publication sets anew) and records without ``seq`` or
``change_id``. An erase message (``trigger.kind = "erase"``) ends a customer's
sequences: after it they start again at 1 (for churn alerts, the erase messages seen
before them in the list decide which generation they belong to).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CustomerSequence", "SequenceReport", "check_sequences"]

IGNORED = ("emitted_at",)  # set at each publication: a repeat differs there and nowhere else


@dataclass
class CustomerSequence:
    """One customer's messages on one topic (one generation, between erasures)."""

    customer_id: str
    topic: str
    generation: int = 0
    records: int = 0
    repeats: int = 0  # records whose change_id was seen before
    conflicts: list[str] = field(default_factory=list)  # change_ids repeated with other content
    unnumbered: int = 0  # records without an integer seq or a change_id
    seqs: list[int] = field(default_factory=list)  # the distinct seqs, in the order first seen
    seq_clash: list[int] = field(default_factory=list)  # seqs carried by two different change_ids

    @property
    def gaps(self) -> list[int]:
        """The numbers of 1..max(seq) that no message carried."""
        have = set(self.seqs)
        return [n for n in range(1, max(have, default=0) + 1) if n not in have]

    @property
    def ok(self) -> bool:
        """After dedupe by change_id, the seqs are exactly 1..n (each once) and every record is numbered."""
        return (not self.unnumbered and not self.seq_clash
                and sorted(self.seqs) == list(range(1, len(self.seqs) + 1)))


@dataclass
class SequenceReport:
    """Every customer's sequences, and the totals."""

    sequences: dict[tuple[str, str, int], CustomerSequence] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sequences.values())

    @property
    def bad(self) -> list[CustomerSequence]:
        return [s for s in self.sequences.values() if not s.ok]

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sequences.values())

    @property
    def repeats(self) -> int:
        return sum(s.repeats for s in self.sequences.values())

    @property
    def gaps(self) -> int:
        return sum(len(s.gaps) for s in self.sequences.values())

    @property
    def conflicts(self) -> int:
        return sum(len(s.conflicts) for s in self.sequences.values())

    @property
    def unnumbered(self) -> int:
        return sum(s.unnumbered for s in self.sequences.values())

    def summary(self, examples: int = 5) -> str:
        """One line of totals and a few of the customers that are not 1..n."""
        text = (f"{len(self.sequences)} sequences, {self.records} records: {self.repeats} repeats, "
                f"{self.gaps} gaps, {self.conflicts} repeats with other content, {self.unnumbered} unnumbered")
        for s in self.bad[:examples]:
            text += (f"; {s.customer_id} on {s.topic}: seqs {sorted(s.seqs)[:10]} gaps {s.gaps[:10]} "
                     f"clashes {s.seq_clash[:5]} unnumbered {s.unnumbered}")
        return text


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)


def _topic_of(record: Mapping[str, Any], value: Mapping[str, Any]) -> str:
    topic = record.get("topic")
    if topic:
        return str(topic)
    return "churn-alerts" if "level" in value else "tag-changes"


def _is_erase(value: Mapping[str, Any]) -> bool:
    trigger = value.get("trigger")
    return value.get("erased") is True or (isinstance(trigger, Mapping) and trigger.get("kind") == "erase")


def _content(value: Mapping[str, Any], ignored: Iterable[str]) -> dict[str, Any]:
    skip = set(ignored)
    return {k: v for k, v in value.items() if k not in skip}


def check_sequences(records: Iterable[Mapping[str, Any]], ignored: Iterable[str] = IGNORED) -> SequenceReport:
    """The report of :mod:`tests.fault.sequences` for ``records`` (see the module docstring)."""
    ignored = tuple(ignored)
    report = SequenceReport()
    generation: dict[str, int] = {}  # customer -> erase messages seen so far
    erases: set[str] = set()
    first: dict[tuple[str, str, int], dict[str, tuple[int | None, dict[str, Any]]]] = {}
    for record in records:
        value = record.get("value")
        if not isinstance(value, Mapping):
            continue
        cid = _text(value.get("customer_id", record.get("key")))
        topic = _topic_of(record, value)
        if _is_erase(value):  # not numbered: ends the customer's sequences (a repeat ends nothing new)
            ident = value.get("change_id")
            if ident not in erases:
                if isinstance(ident, str):
                    erases.add(ident)
                generation[cid] = generation.get(cid, 0) + 1
            continue
        key = (cid, topic, generation.get(cid, 0))
        seq = report.sequences.get(key)
        if seq is None:
            seq = report.sequences[key] = CustomerSequence(cid, topic, key[2])
        seq.records += 1
        number, ident = value.get("seq"), value.get("change_id")
        if not isinstance(number, int) or isinstance(number, bool) or not isinstance(ident, str):
            seq.unnumbered += 1
            continue
        seen = first.setdefault(key, {})
        content = _content(value, ignored)
        if ident in seen:
            seq.repeats += 1
            was_number, was_content = seen[ident]
            if was_content != content and ident not in seq.conflicts:
                seq.conflicts.append(ident)
            if was_number != number and number not in seq.seq_clash:
                seq.seq_clash.append(number)
            continue
        if number in seq.seqs:  # another change_id with a seq already taken
            seq.seq_clash.append(number)
        else:
            seq.seqs.append(number)
        seen[ident] = (number, content)
    return report
