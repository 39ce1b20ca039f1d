"""``tagger replay`` and ``tagger export``: history files in, current customers out."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from agents.cli.shared import check_kafka, load_settings
from stream.domain.history import ColumnMap, MappingError, load_mapping
from stream.settings import Settings

_TOPICS = {"orders": "orders_topic", "logins": "logins_topic", "tickets": "tickets_topic"}


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, column = value.partition("=")
        if not sep or not name or not column:
            raise click.BadParameter(f"{value!r}: expected FIELD=VALUE", param_hint=what)
        out[name.strip()] = column.strip()
    return out


def column_map(kind: str | None, mapping_file: Path | None, maps: tuple[str, ...], consts: tuple[str, ...],
               ts_format: str | None, id_prefix: str | None) -> ColumnMap:
    """The column mapping of ``--kind``/``--mapping``/``--map``/``--const``/``--ts-format`` (tagger replay,
    tagger churn train): a mapping file with these as overrides, else the options alone; a usage error else."""
    columns, constants = _pairs(maps, "--map"), _pairs(consts, "--const")
    try:
        if mapping_file is not None:
            return load_mapping(mapping_file, kind=kind, ts_format=ts_format, id_prefix=id_prefix,
                                columns=columns, constants=constants)
        if kind is None:
            raise click.UsageError("give --kind or a --mapping file with `kind:`")
        return ColumnMap(kind=kind, columns=columns, constants=constants, ts_format=ts_format,
                         id_prefix=id_prefix or ColumnMap.id_prefix)
    except (MappingError, TypeError) as exc:
        raise click.UsageError(f"mapping: {exc}") from exc


@click.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(list(_TOPICS)), help="Which input the rows are (or `kind:` in --mapping).")
@click.option("--mapping", "mapping_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML mapping file: kind, columns {field: column}, constants, ts_format, id_prefix.")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN",
              help="Contract field from a source column, e.g. --map amount=dollar_value (repeatable).")
@click.option("--const", "consts", multiple=True, metavar="FIELD=VALUE",
              help="Contract field with a fixed value, e.g. --const currency=USD (repeatable).")
@click.option("--ts-format", help="strptime format of the time column, read as UTC (e.g. %Y%m%d). "
              "Default: RFC 3339 with offset, or epoch milliseconds.")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "ws", "jsonl"]), default="auto",
              show_default=True, help="csv, ws (whitespace-separated columns) or jsonl; auto by file suffix.")
@click.option("--delimiter", default=",", show_default=True, help="CSV delimiter.")
@click.option("--columns", help="Comma-separated column names when the file has no header line.")
@click.option("--id-prefix", help="event_id = PREFIX-<line> when no column gives one (default: the file name).")
@click.option("--rate", default=0.0, show_default=True, help="Events per second; 0 = as fast as possible.")
@click.option("--stop-on-error/--skip-errors", default=False, show_default=True,
              help="Stop at the first bad row, or report it and go on.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def replay_command(file: Path, kind: str | None, mapping_file: Path | None, maps: tuple[str, ...],
                   consts: tuple[str, ...], ts_format: str | None, fmt: str, delimiter: str, columns: str | None,
                   id_prefix: str | None, rate: float, stop_on_error: bool, progress: bool) -> None:
    """Replay an order, login or ticket history FILE into its input topic, keyed by customer id.

    Every bad row is reported on stderr with its line number (skipped, or the run
    stops with --stop-on-error); the summary gives rows read, sent, rejected and
    failed. Exit status 1 if the run stopped on a bad row or a send failed.
    """
    from agents.cli.replay import replay

    mapping = column_map(kind, mapping_file, maps, consts, ts_format,
                         id_prefix if mapping_file is not None else id_prefix or file.stem)
    if mapping_file is not None and not id_prefix and mapping.id_prefix == "replay":
        mapping = ColumnMap(kind=mapping.kind, columns=mapping.columns, constants=mapping.constants,
                            ts_format=mapping.ts_format, id_prefix=file.stem)
    settings: Settings = load_settings()
    check_kafka(settings)  # a wrong password or CA: a clear error now, not 60 s of failed sends
    names = [c.strip() for c in columns.split(",")] if columns else None
    summary = replay(file, mapping, settings, topic=getattr(settings, _TOPICS[mapping.kind]), fmt=fmt,
                     delimiter=delimiter, columns=names, rate=rate, stop_on_error=stop_on_error, progress=progress)
    click.echo(summary.line())
    if summary.failed or (stop_on_error and summary.rejected):
        sys.exit(1)


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="File to write (default: standard output).")
@click.option("--tag", "tags", multiple=True, help="Only customers holding this tag (repeatable).")
@click.option("--tier", "tiers", multiple=True, help="Only customers in this tier (repeatable).")
def export_command(fmt: str, output: Path | None, tags: tuple[str, ...], tiers: tuple[str, ...]) -> None:
    """Write the current customers with tiers, tags, scores and churn levels from Redis.

    CSV has one flat row per customer (tags joined with ';'); JSON Lines has each
    full customer view. The count goes to stderr.
    """
    from stream.security import redis_client
    from stream.view.export import export

    settings = load_settings()

    async def run() -> int:
        client = redis_client(settings)
        try:
            if output is None:
                return await export(client, settings.redis_prefix, sys.stdout, fmt,
                                    tags=frozenset(tags), tiers=frozenset(tiers))
            with output.open("w", newline="", encoding="utf-8") as out:
                return await export(client, settings.redis_prefix, out, fmt,
                                    tags=frozenset(tags), tiers=frozenset(tiers))
        finally:
            await client.aclose()

    written = asyncio.run(run())
    click.echo(f"exported {written} customers", err=True)
