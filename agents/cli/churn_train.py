"""``tagger churn train``: learn the churn model from a history and write it as a rules file.

History files are read as ``tagger replay`` reads them (:func:`agents.cli.replay.read_rows`,
:func:`stream.domain.history.to_event`, then the worker's own event parser), folded into
the worker's state at each cut (:mod:`agents.engine.history_facts`), labelled with "no paid
order within the horizon", fitted (:mod:`rules.churn_fit`), back-tested on held-out
examples, and written as a ``churn_model:`` section the worker loads with the ruleset.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from agents.cli.replay import detect_format, read_rows
from agents.engine.evaluate import Evaluator
from agents.engine.history_facts import labelled, snapshots
from rules import Ruleset
from rules.bgnbd import fit_bgnbd
from rules.churn import assess_churn
from rules.churn_fit import Backtest, Example, backtest, fit_churn_model
from rules.churn_model import ChurnModel
from stream.domain.events import Event, parse_event, parse_ts
from stream.domain.history import ColumnMap, RowError, to_event
from stream.domain.state import DAY_MS
from stream.exceptions import InvalidEvent

HOLDOUT_SHARE = 0.2  # with a single cut, this share of the customers (by a hash of the id) is held out
_PARSER_KIND = {"orders": "order", "logins": "login", "tickets": "ticket"}


def read_events(path: Path, mapping: ColumnMap, *, fmt: str = "auto", delimiter: str = ",",
                columns: list[str] | None = None, currency: str = "USD",
                max_bytes: int = 1 << 20) -> tuple[list[Event], list[str]]:
    """The events of one history file, as the worker would parse them, and 'file:line: reason' per bad row."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    events: list[Event] = []
    bad: list[str] = []
    with path.open(newline="" if fmt == "csv" else None, encoding="utf-8", errors="replace") as handle:
        for number, row in read_rows(handle, fmt, delimiter=delimiter, columns=columns):
            try:
                if isinstance(row, RowError):
                    raise row
                raw = orjson.dumps(to_event(row, mapping, number))
                events.append(parse_event(_PARSER_KIND[mapping.kind], raw, currency=currency, max_bytes=max_bytes))
            except (RowError, InvalidEvent) as exc:
                bad.append(f"{path}:{number}: {exc}")
    return events, bad


def cut_ms(text: str) -> int:
    """A cut date: YYYY-MM-DD or YYYYMMDD is the end of that UTC day; else RFC 3339 or epoch ms."""
    digits = text.replace("-", "")
    if len(digits) == 8 and digits.isdigit():
        return parse_ts(f"{digits[:4]}-{digits[4:6]}-{digits[6:]}T00:00:00Z") + DAY_MS - 1
    return parse_ts(int(text) if text.isdigit() else text)


def bgnbd_at(facts: Iterable[dict[str, Any]]) -> tuple[float, float, float, float] | None:
    """BG/NBD fitted on the customers with a paid order (None with fewer than 10 of them)."""
    buyers = [f for f in facts if f["orders_total"] and f["days_since_first_order"] is not None]
    if len(buyers) < 10:
        return None
    Ts = [float(f["days_since_first_order"]) for f in buyers]
    fitted = fit_bgnbd([float(f["orders_total"] - 1) for f in buyers],
                       [T - float(f["days_since_last_order"]) for T, f in zip(Ts, buyers, strict=True)], Ts)
    return fitted.r, fitted.alpha, fitted.a, fitted.b


def _held_out(customer_id: str) -> bool:
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < HOLDOUT_SHARE


@dataclass(frozen=True)
class Trained:
    """What training produced: the model (fitted on every example), and the back-test of its twin."""

    model: ChurnModel
    backtest: Backtest
    method: str  # how the back-test held examples out
    examples: int
    cuts: tuple[int, ...]
    last_facts: tuple[Any, ...]  # every customer's facts at the last cut (for the scoring cost)


def assess_all(ruleset: Ruleset, model: ChurnModel, facts: Sequence[Any]) -> tuple[list[float], list[str]]:
    """Risk and level of each customer, as the worker gives them with ``model`` loaded."""
    policy = replace(ruleset.churn, model=model)
    assessed = [assess_churn(policy, f) for f in facts]
    return [a.risk for a in assessed], [a.level for a in assessed]


def train(events: Sequence[Event], cuts: Sequence[int], horizon_days: float, ruleset: Ruleset,
          provenance: dict[str, Any] | None = None) -> Trained:
    """Fit on every cut; back-test a twin fitted without the held-out examples (the last cut, or 20% of customers)."""
    cut_list = tuple(sorted(set(cuts)))
    end = cut_list[-1] + int(horizon_days * DAY_MS)
    snaps = snapshots(events, cut_list, Evaluator(ruleset), end_ms=end)
    latest = max((e.ts for e in events), default=0)
    if latest // DAY_MS < end // DAY_MS:  # a history that ends on a day covers that day
        raise ValueError(f"the history ends before the last cut plus {horizon_days:g} days; "
                         "choose an earlier cut or a shorter horizon")
    examples = labelled(snaps, horizon_days)
    bgnbd = bgnbd_at(snaps.facts[cut_list[-1]].values())
    if len(cut_list) > 1:
        test = [e for e in examples if e.cut_ms == cut_list[-1]]
        fit_on: list[Example] = [e for e in examples if e.cut_ms != cut_list[-1]]
        method = "fitted on the earlier cuts, tested on the last cut"
    else:
        test = [e for e in examples if _held_out(e.customer_id)]
        fit_on = [e for e in examples if not _held_out(e.customer_id)]
        method = f"fitted on {100 - 100 * HOLDOUT_SHARE:.0f}% of the customers, tested on the other " \
                 f"{100 * HOLDOUT_SHARE:.0f}% (by a hash of the id)"
    twin = fit_churn_model(fit_on, horizon_days, bgnbd=bgnbd)
    risks, levels = assess_all(ruleset, twin, [e.facts for e in test])
    result = backtest(risks, levels, [e.no_purchase for e in test])
    info = {**(provenance or {}), "cuts": [_iso(c) for c in cut_list], "examples": len(examples),
            "backtest": {"method": method, "examples": result.examples, "roc_auc": round(result.auc, 4),
                         "max_calibration_gap": round(result.max_calibration_gap, 4)}}
    model = fit_churn_model(examples, horizon_days, bgnbd=bgnbd, trained=info)
    return Trained(model, result, method, len(examples), cut_list, tuple(snaps.facts[cut_list[-1]].values()))


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def model_yaml(model: ChurnModel) -> str:
    """The rules file: a header saying what it is, then the ``churn_model:`` section."""
    header = ("# Learned churn model, written by `tagger churn train` (see rules/README.md, \"Churn risk\").\n"
              "# The worker loads it with the ruleset (hot reload included); delete the file to go back\n"
              "# to the weighted mix. risk = P(no paid order within horizon_days).\n")
    body = yaml.safe_dump({"churn_model": model.document()}, sort_keys=False, default_flow_style=None, width=110)
    return header + body


def scoring_cost_us(ruleset: Ruleset, model: ChurnModel | None, facts: Sequence[Any], rounds: int = 5) -> float:
    """µs per customer of ``assess_churn`` with ``model`` (None: the ruleset's mix), best of ``rounds``."""
    policy = replace(ruleset.churn, model=model)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for f in facts:
            assess_churn(policy, f)
        best = min(best, time.perf_counter() - started)
    return best / max(len(facts), 1) * 1e6


def scoring_line(ruleset: Ruleset, model: ChurnModel, facts: Sequence[Any]) -> str:
    """The measured scoring cost, beside the weighted mix's on the same customers."""
    learned, mixed = scoring_cost_us(ruleset, model, facts), scoring_cost_us(ruleset, None, facts)
    return (f"scoring with the model: {learned:.2f} µs per customer (assess_churn over {len(facts)} customers, "
            f"best of 5 rounds; the weighted mix: {mixed:.2f} µs)")


def backtest_lines(result: Backtest, high: float) -> list[str]:
    """The back-test as printed: AUC, precision/recall of high, the calibration table."""
    lines = [f"held out: {result.examples} examples, {result.no_purchase} without a paid order in the horizon",
             f"ROC AUC {result.auc:.3f}; level high (risk >= {high:g}): precision {result.precision_high:.3f}, "
             f"recall {result.recall_high:.3f}",
             "calibration (deciles of the predicted risk):",
             f"  {'decile':>6} {'count':>7} {'predicted':>10} {'observed':>9} {'gap':>7}"]
    for row in result.calibration:
        lines.append(f"  {row.decile:>6} {row.count:>7} {row.predicted:>10.3f} {row.observed:>9.3f} "
                     f"{row.predicted - row.observed:>+7.3f}")
    lines.append(f"  largest gap {result.max_calibration_gap:.3f}")
    return lines


_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)


@click.command("train")
@click.argument("history", nargs=-1, required=True, type=_FILE)
@click.option("--kind", type=click.Choice(list(_PARSER_KIND)), default="orders", show_default=True,
              help="What the HISTORY rows are (as for tagger replay).")
@click.option("--mapping", "mapping_file", type=_FILE, help="YAML column mapping, as for tagger replay.")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN", help="Contract field from a column.")
@click.option("--const", "consts", multiple=True, metavar="FIELD=VALUE", help="Contract field with a fixed value.")
@click.option("--ts-format", help="strptime format of the time column (UTC), e.g. %Y%m%d.")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "ws", "jsonl"]), default="auto", show_default=True)
@click.option("--delimiter", default=",", show_default=True)
@click.option("--columns", help="Comma-separated column names when the file has no header line.")
@click.option("--with", "extra", multiple=True, metavar="KIND:FILE",
              help="Another history with contract column names, e.g. logins:logins.jsonl (repeatable).")
@click.option("--cut", "cuts", multiple=True, help="Cut date (YYYY-MM-DD: end of that UTC day), repeatable; "
              "default: the last event minus the horizon.")
@click.option("--horizon-days", default=90.0, show_default=True, type=click.FloatRange(1, 3650))
@click.option("--rules", "rules_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Ruleset whose churn levels the back-test uses (default: TAGGER_RULES_DIR, else the shipped rules).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("churn_model.yaml"),
              show_default=True, help="Where to write the model; put it in the worker's rules directory.")
def train_command(history: tuple[Path, ...], kind: str, mapping_file: Path | None, maps: tuple[str, ...],
                  consts: tuple[str, ...], ts_format: str | None, fmt: str, delimiter: str, columns: str | None,
                  extra: tuple[str, ...], cuts: tuple[str, ...], horizon_days: float, rules_dir: Path | None,
                  out: Path) -> None:
    """Learn P(no paid order within the horizon) from HISTORY; print a back-test; write the model YAML."""
    from agents.cli.io_cli import column_map
    from agents.cli.shared import load_settings
    from agents.engine.evaluate import facts_schema
    from rules import RulesetError, default_rules_dir, load_ruleset

    settings = load_settings()
    try:
        ruleset = load_ruleset(rules_dir or settings.rules_dir or default_rules_dir(), facts_schema())
    except RulesetError as exc:
        raise click.ClickException(f"invalid ruleset: {exc}") from exc
    names = [c.strip() for c in columns.split(",")] if columns else None
    sources = [(path, column_map(kind, mapping_file, maps, consts, ts_format, path.stem), fmt, names)
               for path in history]
    for item in extra:
        other, sep, name = item.partition(":")
        if not sep or other not in _PARSER_KIND or not Path(name).is_file():
            raise click.BadParameter(f"{item!r}: expected KIND:FILE with KIND one of "
                                     f"{', '.join(_PARSER_KIND)} and an existing file", param_hint="--with")
        sources.append((Path(name), ColumnMap(kind=other, id_prefix=Path(name).stem), "auto", None))
    events: list[Event] = []
    for path, mapping, form, cols in sources:
        read, bad = read_events(path, mapping, fmt=form, delimiter=delimiter, columns=cols,
                                currency=settings.currency, max_bytes=settings.max_event_bytes)
        for line in bad[:10]:
            click.echo(f"rejected: {line}", err=True)
        click.echo(f"{path}: {len(read)} events, {len(bad)} rows rejected")
        events += read
    if not events:
        raise click.ClickException("no events in the history")
    try:
        cut_list = [cut_ms(c) for c in cuts] or [
            (max(e.ts for e in events) // DAY_MS - int(horizon_days) + 1) * DAY_MS - 1]
        trained = train(events, cut_list, horizon_days, ruleset, {"history": [str(p) for p, *_ in sources]})
    except (InvalidEvent, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    report_training(trained, ruleset)
    click.echo(scoring_line(ruleset, trained.model, trained.last_facts[:20_000]))
    out.write_text(model_yaml(trained.model), encoding="utf-8")
    click.echo(f"wrote {out}: copy it into the worker's rules directory (TAGGER_RULES_DIR) to use it")


def report_training(trained: Trained, ruleset: Ruleset) -> None:
    """Print what was fitted and its back-test."""
    model = trained.model
    click.echo(f"cuts {', '.join(_iso(c) for c in trained.cuts)}, horizon {model.horizon_days:g} days: "
               f"{trained.examples} examples; back-test {trained.method}")
    for line in backtest_lines(trained.backtest, ruleset.churn.high):
        click.echo(line)
    if trained.backtest.max_calibration_gap > 0.05:
        click.echo(f"warning: a decile's predicted and observed rates differ by "
                   f"{trained.backtest.max_calibration_gap:.3f} (> 0.05): the risk is not well calibrated here; "
                   "more history or more cuts may help", err=True)
    click.echo("features (coefficient per standard deviation; + raises the risk): " + ", ".join(
        f"{n} {c:+.3f}" for n, c in zip(model.names, model.coefs, strict=True)))


@dataclass(frozen=True)
class CdnowLearned:
    """The learned model on CDNOW: its AUC at the calibration end, and the lines to print."""

    model: ChurnModel
    auc: float
    lines: list[str]


def cdnow_learned(path: Path, calibration_end: str, train_cut: str, horizon_days: float) -> CdnowLearned:
    """Train as ``tagger churn train`` does on the CDNOW log up to ``calibration_end``, then score every
    customer there against "buys again in the rest of the log" (and, for calibration, within the horizon)."""
    from agents.engine.evaluate import facts_schema
    from rules import default_rules_dir, load_ruleset
    from rules.churn_fit import roc_auc

    ruleset = load_ruleset(default_rules_dir(), facts_schema())
    mapping = ColumnMap(kind="orders", columns={"ts": "date", "amount": "dollar_value"}, ts_format="%Y%m%d",
                        id_prefix="cdnow")
    events, bad = read_events(path, mapping, fmt="ws")
    if bad:
        raise click.ClickException(f"{len(bad)} CDNOW rows rejected, the first: {bad[0]}")
    end = cut_ms(calibration_end)
    known = [e for e in events if e.ts <= end]  # nothing after the calibration end reaches training
    trained = train(known, [cut_ms(train_cut)], horizon_days, ruleset, {"history": "CDNOW_master.txt (lifetimes)"})
    facts = snapshots(known, [end], Evaluator(ruleset)).facts[end]
    later = snapshots(events, [end], Evaluator(ruleset), end_ms=max(e.ts for e in events)).paid_orders
    customers = sorted(facts)
    risks, levels = assess_all(ruleset, trained.model, [facts[c] for c in customers])
    no_buy = [not any(t > end for t in later.get(c, ())) for c in customers]
    horizon_end = end + int(horizon_days * DAY_MS)
    none_in_horizon = [not any(end < t <= horizon_end for t in later.get(c, ())) for c in customers]
    lines = [f"back-test at the cut ({trained.method}):", *backtest_lines(trained.backtest, ruleset.churn.high),
             f"out of time: every customer at {calibration_end} against no purchase within {horizon_days:g} days:",
             *backtest_lines(backtest(risks, levels, none_in_horizon), ruleset.churn.high)[1:],
             scoring_line(ruleset, trained.model, [facts[c] for c in customers])]
    return CdnowLearned(trained.model, roc_auc(risks, no_buy), lines)
