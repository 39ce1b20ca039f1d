"""The fault suite's sequence checker (tests/fault/sequences.py): repeats, gaps, other content, erasures."""

from __future__ import annotations

from typing import Any

from stream.domain.sequence import change_id
from tests.fault.sequences import check_sequences


def change(cid: str, seq: int | None, *, tags: tuple[str, ...] = ("a",), emitted: str = "t0",
           topic: str | None = "tag-changes") -> dict[str, Any]:
    value: dict[str, Any] = {"customer_id": cid, "tags": list(tags), "trigger": {"kind": "event"},
                             "emitted_at": emitted}
    if seq is not None:
        value.update(seq=seq, change_id=change_id(cid, "tag", seq))
    record: dict[str, Any] = {"key": cid.encode(), "value": value}
    if topic is not None:
        record["topic"] = topic
    return record


def alert(cid: str, seq: int, level: str = "high") -> dict[str, Any]:
    return {"key": cid, "value": {"customer_id": cid, "level": level, "seq": seq,
                                  "change_id": change_id(cid, "churn", seq), "emitted_at": "t"}}


def erase(cid: str, request_id: str = "dsr-1") -> dict[str, Any]:
    return {"key": cid, "topic": "tag-changes",
            "value": {"customer_id": cid, "tags": [], "erased": True, "seq": None,
                      "change_id": f"{cid}:erase:{request_id}", "trigger": {"kind": "erase"}}}


def test_clean_sequences_are_ok() -> None:
    report = check_sequences([change("c1", 1), change("c2", 1), change("c1", 2), alert("c1", 1)])
    assert report.ok and report.repeats == report.gaps == report.conflicts == 0 and report.records == 4
    assert {(s.customer_id, s.topic) for s in report.sequences.values()} == {
        ("c1", "tag-changes"), ("c2", "tag-changes"), ("c1", "churn-alerts")}


def test_repeats_after_a_crash_are_dropped_by_change_id_and_counted() -> None:
    records = [change("c1", 1), change("c1", 2), change("c1", 3),
               change("c1", 2, emitted="t1"), change("c1", 3, emitted="t1"), change("c1", 4)]
    report = check_sequences(records)
    assert report.ok, report.summary()
    assert report.repeats == 2 and report.conflicts == 0  # emitted_at is set anew at each publication
    [seq] = report.sequences.values()
    assert seq.seqs == [1, 2, 3, 4]


def test_gaps_fail_and_are_listed() -> None:
    report = check_sequences([change("c1", 1), change("c1", 3), change("c1", 6)])
    assert not report.ok and report.gaps == 3
    [seq] = report.bad
    assert seq.gaps == [2, 4, 5]
    assert "gaps [2, 4, 5]" in report.summary()


def test_a_sequence_not_starting_at_one_fails() -> None:
    report = check_sequences([change("c1", 2)])
    assert not report.ok and report.gaps == 1


def test_repeats_with_other_content_are_reported() -> None:
    report = check_sequences([change("c1", 1, tags=("a",)), change("c1", 1, tags=("b",))])
    assert report.repeats == 1 and report.conflicts == 1
    assert report.ok  # after dedupe by change_id the numbers are still 1..n
    [seq] = report.sequences.values()
    assert seq.conflicts == ["c1:tag:1"]


def test_two_change_ids_with_one_seq_and_unnumbered_records_fail() -> None:
    clash = change("c1", 1)
    clash["value"]["change_id"] = "c1:tag:other"
    report = check_sequences([change("c1", 1), clash])
    assert not report.ok and report.bad[0].seq_clash == [1]
    report = check_sequences([change("c1", 1), change("c1", None)])
    assert not report.ok and report.unnumbered == 1


def test_topics_have_their_own_sequences_and_topic_is_told_from_the_message() -> None:
    records = [change("c1", 1, topic=None), alert("c1", 1), alert("c1", 2), change("c1", 2, topic=None)]
    report = check_sequences(records)
    assert report.ok and len(report.sequences) == 2


def test_an_erasure_starts_new_sequences_and_its_repeat_is_ignored() -> None:
    records = [change("c1", 1), change("c1", 2), alert("c1", 1), erase("c1"), change("c1", 1, tags=("z",)),
               erase("c1"), alert("c1", 1), change("c1", 2)]
    report = check_sequences(records)
    assert report.ok, report.summary()
    assert report.repeats == 0 and report.conflicts == 0
    generations = sorted((s.topic, s.generation, tuple(s.seqs)) for s in report.sequences.values())
    assert generations == [("churn-alerts", 0, (1,)), ("churn-alerts", 1, (1,)),
                           ("tag-changes", 0, (1, 2)), ("tag-changes", 1, (1, 2))]


def test_values_that_are_not_objects_are_skipped() -> None:
    assert check_sequences([{"key": "c1", "value": None}, {"key": "c1", "value": "x"}]).sequences == {}
