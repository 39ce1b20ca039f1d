"""``tagger token new``: make an API bearer token and the configuration entry holding only its hash."""

from __future__ import annotations

import click
import orjson

from stream.access.auth import ROLES, hash_token, new_token


@click.group("token")
def token_group() -> None:
    """API bearer tokens (see README, "Access control, audit and erasure")."""


@token_group.command("new")
@click.option("--name", required=True, help="Who or what holds the token; shown in the audit log.")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the token may see and do.")
@click.option("--team", "teams", multiple=True, help="Rule owner team (restricted tags of its rules); repeatable.")
def token_new(name: str, role: str, teams: tuple[str, ...]) -> None:
    """Print a new token once, and the entry to add to TAGGER_API_TOKENS or the tokens file."""
    token = new_token()
    entry = {"name": name, "role": role, "teams": list(teams), "sha256": hash_token(token)}
    click.echo(f"token for {name} (shown only now; store it in the client's secret store):")
    click.echo(token)
    click.echo("configuration entry (the hash only; add it to the TAGGER_API_TOKENS list or the tokens file):")
    click.echo(orjson.dumps(entry).decode())
