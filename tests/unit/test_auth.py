"""Bearer tokens: hashing, configuration, authentication and the role each API action needs (no broker)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.access.auth import (
    ACTION_ROLES,
    MIN_TOKEN_CHARS,
    ROLES,
    Principal,
    TokenConfigError,
    TokenRegistry,
    authorize,
    bearer_token,
    hash_token,
    load_registry,
    new_token,
    parse_entries,
)


def entry(name: str, role: str, token: str, teams: list[str] | None = None) -> dict[str, object]:
    return {"name": name, "role": role, "sha256": hash_token(token), "teams": teams or []}


TOKENS = {role: new_token() for role in ROLES}
REGISTRY = TokenRegistry(parse_entries([entry(r, r, t) for r, t in TOKENS.items()], "test"))


def test_new_tokens_are_long_random_and_hash_to_sha256_hex() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("tgr_") and len(a) >= MIN_TOKEN_CHARS + 4
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None and bearer_token("") is None and bearer_token(None) is None


def test_each_configured_token_authenticates_as_its_principal() -> None:
    for role, token in TOKENS.items():
        assert REGISTRY.authenticate(token) == Principal(role, role)  # type: ignore[arg-type]
    assert REGISTRY.authenticate(new_token()) is None
    assert REGISTRY.authenticate(TOKENS["admin"][:-1]) is None
    assert REGISTRY.authenticate(None) is None
    assert REGISTRY.roles() == dict.fromkeys(ROLES, 1)


def test_short_tokens_are_refused_even_if_configured() -> None:
    registry = TokenRegistry(parse_entries([entry("weak", "admin", "short")], "test"))
    assert registry.authenticate("short") is None


def test_configuration_holds_no_plaintext_and_rejects_bad_entries() -> None:
    token = new_token()
    with pytest.raises(TokenConfigError, match="store the hash, never the token"):
        parse_entries([{"name": "x", "role": "admin", "token": token}], "test")
    with pytest.raises(TokenConfigError, match="'role' must be one of"):
        parse_entries([{"name": "x", "role": "root", "sha256": hash_token(token)}], "test")
    with pytest.raises(TokenConfigError, match="'sha256' must be 64"):
        parse_entries([{"name": "x", "role": "admin", "sha256": token}], "test")
    with pytest.raises(TokenConfigError, match="'teams' must be a list"):
        parse_entries([{"name": "x", "role": "admin", "sha256": hash_token(token), "teams": "support"}], "test")
    with pytest.raises(TokenConfigError, match="configured twice"):
        TokenRegistry(parse_entries([entry("a", "admin", token), entry("b", "viewer", token)], "test"))


def test_tokens_from_environment_json_and_yaml_file(tmp_path: Path) -> None:
    sales, support = new_token(), new_token()
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - name: sue\n    role: sales\n    teams: [support]\n"
                    f"    sha256: {hash_token(support)}\n", encoding="utf-8")
    registry = load_registry(orjson.dumps([entry("sam", "sales", sales)]).decode(), path)
    assert registry.authenticate(sales) == Principal("sam", "sales")
    assert registry.authenticate(support) == Principal("sue", "sales", frozenset({"support"}))
    with pytest.raises(TokenConfigError, match="TAGGER_API_TOKENS is not valid JSON"):
        load_registry("[{", None)
    with pytest.raises(TokenConfigError, match="TAGGER_API_TOKENS_FILE"):
        load_registry("", tmp_path / "missing.yaml")
    assert len(load_registry("", None)) == 0


@pytest.mark.parametrize("action", sorted(ACTION_ROLES))
@pytest.mark.parametrize("role", ROLES)
def test_every_role_against_every_action(role: str, action: str) -> None:
    allowed = {"customer.read": set(ROLES), "tag.list": set(ROLES), "manual.command": {"sales", "admin"},
               "privacy.request": {"admin"}, "dashboard.feed": set(ROLES),
               "trends.read": set(ROLES), "customer.list": set(ROLES), "customer.history": set(ROLES)}[action]
    decision = authorize(REGISTRY, f"Bearer {TOKENS[role]}", action)
    assert decision.principal is not None and decision.principal.role == role
    assert decision.status == (200 if role in allowed else 403), decision.reason


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 40])
def test_without_a_valid_token_every_action_is_401(header: str | None) -> None:
    for action in ACTION_ROLES:
        decision = authorize(REGISTRY, header, action)
        assert decision.status == 401 and decision.principal is None


def test_no_tokens_configured_means_401_not_open() -> None:
    decision = authorize(TokenRegistry([]), f"Bearer {TOKENS['admin']}", "customer.read")
    assert decision.status == 401 and "no API tokens are configured" in decision.reason


def test_token_new_prints_the_token_once_and_an_entry_with_only_its_hash() -> None:
    from click.testing import CliRunner

    from agents.cli.main import main

    result = CliRunner().invoke(main, ["token", "new", "--name", "jane", "--role", "sales", "--team", "support"])
    assert result.exit_code == 0, result.output
    token = next(line for line in result.output.splitlines() if line.startswith("tgr_"))
    entry = orjson.loads(result.output.strip().splitlines()[-1])
    assert entry == {"name": "jane", "role": "sales", "teams": ["support"], "sha256": hash_token(token)}
    registry = TokenRegistry(parse_entries([entry], "cli"))
    assert registry.authenticate(token) == Principal("jane", "sales", frozenset({"support"}))
    assert result.output.count(token) == 1
