"""The ``tagger`` command line: worker, reevaluate, demo, tail and the embedded dev mode."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from agents.cli.churn_cli import churn_group
from agents.cli.io_cli import export_command, replay_command
from agents.cli.rules_cli import rules_group
from agents.cli.shared import check_kafka, load_settings, prepare_kafka
from agents.cli.token_cli import token_group


@click.group()
def main() -> None:
    """Real-time customer tagger. Settings come from environment variables (see README)."""


@main.command()
def worker() -> None:
    """Run one tagger worker (several may run in one consumer group)."""
    from faust.worker import Worker

    from agents.tagger import build
    from rules import RulesetError
    from stream.access.auth import TokenConfigError
    from stream.faust.app import tune_gc
    from stream.webhook_delivery import WebhookConfigError

    settings = load_settings()
    try:
        app, _ = build(settings)
    except RulesetError as exc:
        raise click.ClickException(f"invalid ruleset: {exc}") from exc
    except TokenConfigError as exc:
        raise click.ClickException(f"invalid API tokens: {exc}") from exc
    except WebhookConfigError as exc:
        raise click.ClickException(f"invalid webhooks file: {exc}") from exc
    prepare_kafka(settings)
    tune_gc()
    Worker(app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


@main.command("baseline-worker", hidden=True)
def baseline_worker() -> None:
    """A do-nothing Faust agent on the tagger's topics (the benchmark's yardstick)."""
    from faust.worker import Worker

    from agents.bench.baseline import build_baseline
    from stream.faust.app import tune_gc

    settings = load_settings()
    prepare_kafka(settings)
    app = build_baseline(settings)
    tune_gc()
    Worker(app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


@main.command()
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for each phase.")
@click.option("--customer", help="Re-evaluate only this customer (at the current cut-offs).")
def reevaluate(timeout: float, customer: str | None) -> None:
    """Re-evaluate every customer now (e.g. after a bulk replay), or one with --customer.

    Phase 1 refreshes every customer's spend in the global rank; phase 2
    re-reads the tier cut-offs and re-evaluates everyone, so tiers match the
    rank definition exactly. With --customer only phase 2 runs, for that customer.
    """
    from agents.reevaluate import request_reevaluation

    settings = load_settings()
    check_kafka(settings)
    timings = asyncio.run(request_reevaluation(settings, timeout, customer))
    what = f"customer {customer}" if customer else f"all {settings.partitions} partitions"
    click.echo(f"re-evaluated {what}: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


@main.command()
@click.option("--customers", default=200, show_default=True)
@click.option("--rate", default=50.0, show_default=True, help="Events per second (0 = max).")
@click.option("--limit", default=None, type=int, help="Stop after this many events.")
@click.option("--seed", default=7, show_default=True)
def demo(customers: int, rate: float, limit: int | None, seed: int) -> None:
    """Produce realistic demo events to the input topics."""
    from stream.devtools.demo import DemoConfig, run_demo
    from stream.security import librdkafka_config

    settings = load_settings()
    config = DemoConfig(customers=customers, rate=rate, seed=seed, currency=settings.currency)
    sent = asyncio.run(run_demo(librdkafka_config(settings), config, limit=limit))
    click.echo(f"produced {sent} events")


@main.command()
@click.option("--tag", "tags", multiple=True, help="Only changes that add or remove this tag.")
@click.option("--tier", "tiers", multiple=True, help="Only changes into or out of this tier.")
@click.option("--level", "levels", multiple=True, type=click.Choice(["none", "low", "medium", "high"]),
              help="Only churn alerts into or out of this level.")
@click.option("--churn/--no-churn", default=True, show_default=True, help="Also print churn alerts.")
def tail(tags: tuple[str, ...], tiers: tuple[str, ...], levels: tuple[str, ...], churn: bool) -> None:
    """Print tag changes and churn alerts as they happen, coloured (tiers, added/removed tags, levels)."""
    from agents.cli.console import tail_tag_changes

    settings = load_settings()
    check_kafka(settings)
    asyncio.run(tail_tag_changes(settings, tags=set(tags), tiers=set(tiers), alerts=churn, levels=set(levels)))


@main.command()
@click.option("--customers", default=200, show_default=True)
@click.option("--rate", default=20.0, show_default=True, help="Demo events per second.")
@click.option("--web-port", default=6066, show_default=True)
def dev(customers: int, rate: float, web_port: int) -> None:
    """Run everything embedded: broker, Redis, one worker, demo events; show tag changes."""
    from agents.cli.devmode import run_dev

    sys.exit(run_dev(customers=customers, rate=rate, web_port=web_port))


@main.command()
@click.option("--events", default=20_000, show_default=True, help="Demo events per run.")
@click.option("--customers", default=200, show_default=True, help="Demo customers.")
@click.option("--seed", default=7, show_default=True, help="Demo seed.")
@click.option("--time-step-ms", type=float, default=1000.0, show_default=True,
              help="Event time per event (20: the demo's real time at 50 events/s).")
@click.option("--rules", "rules_dir", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="Rules directory (default: TAGGER_RULES_DIR, else the shipped rules).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def flapping(events: int, customers: int, seed: int, time_step_ms: float, rules_dir: Path | None,
             as_json: bool) -> None:
    """Count tier changes, churn alerts and reversals on the demo stream, with the bands off and on.

    Runs the events in process through the worker's own evaluation path on an embedded
    redis-server (no broker); the reversals are tagger_reversals_total's.
    """
    import json

    from agents.bench.flapping import measure, render
    from agents.engine.evaluate import facts_schema
    from rules import RulesetError, default_rules_dir, load_ruleset
    from stream.devtools.embedded import RedisServer

    settings = load_settings()
    directory = rules_dir or settings.rules_dir or default_rules_dir()
    try:
        ruleset = load_ruleset(directory, facts_schema())
    except RulesetError as exc:
        raise click.ClickException(f"invalid ruleset: {exc}") from exc
    with RedisServer() as redis:
        rows = asyncio.run(measure(settings, ruleset, redis.url, events, customers, seed, time_step_ms))
    click.echo(json.dumps([r.row() for r in rows], indent=2) if as_json else render(rows))


@main.command("bench-sweep")
@click.option("--customers", default=20_000, show_default=True)
def bench_sweep(customers: int) -> None:
    """Measure the CPU cost per customer of a sweep (no broker needed)."""
    import json

    from agents.bench.harness import sweep_cost

    click.echo(json.dumps(sweep_cost(customers), indent=2))


def _rates(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    from agents.bench.harness import parse_rates

    return parse_rates(value)


@main.command()
@click.option("--events", default=50_000, show_default=True, help="demo events in the backlog")
@click.option("--customers", default=5_000, show_default=True)
@click.option("--partitions", default=8, show_default=True)
@click.option("--batch", default=0, show_default=True,
              help="produce batch envelopes of this many events per topic partition (0: one event per message)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="workers in one consumer group; with N > 1 the run also measures 1 worker (scaling_ratio)")
@click.option("--rates", default="0.25,0.5,0.8", show_default=True, callback=_rates,
              help="offered rates of the latency phase, as fractions of one worker's measured capacity")
@click.option("--latency-seconds", default=10.0, show_default=True,
              help="length of each fixed-rate phase (each rate, 1,000 ev/s, immediate path, re-evaluation)")
@click.option("--latency-capacity", default=400.0, show_default=True,
              help="with --batch: cap of the capacity --rates are fractions of (single events cost more than "
                   "batched ones; take it from a run without --batch)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the JSON here")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write a PNG of p50/p95/p99 against offered rate here")
@click.option("--broker", type=click.Choice(["kafka", "tansu"]), default=None,
              help="local broker: Apache Kafka (default when Java and Maven are on PATH) or embedded Tansu")
def bench(events: int, customers: int, partitions: int, batch: int, workers: int, rates: list[float],
          latency_seconds: float, latency_capacity: float, out: Path | None, plot: Path | None,
          broker: str | None) -> None:
    """Benchmark the tagger on a local broker (real Kafka, else Tansu) and Redis (issues 7 and 27).

    Each measured group of workers starts on empty topics and is timed only once
    all its workers hold partitions. In one run: a raw aiokafka getmany baseline; a
    do-nothing Faust agent; the spend job written with Quix Streams
    (agents/bench/quix.py); and the tagger draining the same backlog with --workers N
    (and 1, for the scaling ratio); p50/p95/p99 at each --rates fraction of one
    worker's capacity and at 1,000 events/s; big orders and complaints among traffic
    at the highest rate, end to end; RSS, state and Redis bytes per customer; a
    whole-base `tagger reevaluate` under 50% load (its duration, customers/s, intake
    and p99 before and during); time for a restarted worker to be ready. Every JSON key is
    explained in the docstring of agents/bench/harness.py.
    """
    import json

    from agents.bench.harness import plot_latency, render_table, run_bench

    result = run_bench(events, customers, partitions, batch, latency_seconds, workers, rates, latency_capacity,
                       broker)
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        plot_latency(result, plot)
    click.echo(render_table(result))


main.add_command(replay_command)
main.add_command(export_command)
main.add_command(rules_group)
main.add_command(churn_group)
main.add_command(token_group)
