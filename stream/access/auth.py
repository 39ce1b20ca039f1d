"""API bearer tokens and roles, pure: hashing, loading the configured hashes, authenticating a request.

Tokens are random strings made by :func:`new_token` (256 bits from ``secrets``);
configuration holds only their SHA-256. A slow salted KDF (PBKDF2, scrypt)
protects *low-entropy* secrets such as passwords from guessing once the hashes
leak; against a 256-bit random token guessing is hopeless anyway, so the KDF
would only cost CPU on every API request. SHA-256 keeps verification to one
hash and constant-time comparisons. To keep that reasoning true, presented
tokens shorter than :data:`MIN_TOKEN_CHARS` are refused before hashing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import yaml

from stream.exceptions import TaggerError

Role = Literal["viewer", "sales", "finance", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "sales", "finance", "admin")
MIN_TOKEN_CHARS = 32
TOKEN_PREFIX = "tgr_"  # noqa: S105 - a marker that helps secret scanners, not a secret
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")

#: which roles may call each API action (field filtering then narrows what they see)
ACTION_ROLES: dict[str, frozenset[Role]] = {
    "customer.read": frozenset(ROLES),
    "tag.list": frozenset(ROLES),
    "dashboard.feed": frozenset(ROLES),  # the dashboard's live feed and tier counts (agents/dashboard.py)
    "trends.read": frozenset(ROLES),
    # GET /customers and /customers/{id}/history: rows and entries narrowed by role (stream/access/visibility.py)
    "customer.list": frozenset(ROLES),
    "customer.history": frozenset(ROLES),  # GET /trends; churn and tags narrowed by role (stream/view/trend_store.py)
    "manual.command": frozenset({"sales", "admin"}),
    "privacy.request": frozenset({"admin"}),
}


class TokenConfigError(TaggerError, ValueError):
    """The API token configuration is invalid; the worker does not start.

    Operators: the message names the source (TAGGER_API_TOKENS or the file) and
    the entry. Each entry needs ``name``, ``role`` (viewer, sales, finance,
    admin), ``sha256`` (64 hex digits, from ``tagger token new``) and optionally
    ``teams`` (a list of rule owner teams).
    """


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, its role, and the rule-owner teams it belongs to."""

    name: str
    role: Role
    teams: frozenset[str] = frozenset()


def new_token() -> str:
    """A fresh API token (43 URL-safe characters of randomness after the ``tgr_`` prefix)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest that configuration stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, None if absent or another scheme."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _entry(raw: object, where: str) -> tuple[str, Principal]:
    if not isinstance(raw, Mapping):
        raise TokenConfigError(f"{where}: must be an object with name, role and sha256")
    unknown = set(raw) - {"name", "role", "teams", "sha256"}
    if unknown:
        hint = " (store the hash, never the token)" if "token" in unknown else ""
        raise TokenConfigError(f"{where}: unknown keys {sorted(unknown)}{hint}")
    name, role, digest, teams = raw.get("name"), raw.get("role"), raw.get("sha256"), raw.get("teams", [])
    if not (isinstance(name, str) and _NAME.match(name)):
        raise TokenConfigError(f"{where}: 'name' must be 1-128 characters of letters, digits and _.@+-")
    if role not in ROLES:
        raise TokenConfigError(f"{where}: 'role' must be one of {', '.join(ROLES)}")
    if not (isinstance(digest, str) and _HEX64.match(digest)):
        raise TokenConfigError(f"{where}: 'sha256' must be 64 lower-case hex digits (see `tagger token new`)")
    if not (isinstance(teams, list) and all(isinstance(t, str) and t for t in teams)):
        raise TokenConfigError(f"{where}: 'teams' must be a list of team names")
    return digest, Principal(name=name, role=cast(Role, role), teams=frozenset(teams))


def parse_entries(data: object, source: str) -> list[tuple[str, Principal]]:
    """Validate a list of token entries (or ``{tokens: [...]}``) from ``source``."""
    if isinstance(data, Mapping) and set(data) == {"tokens"}:
        data = data["tokens"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise TokenConfigError(f"{source}: expected a list of token entries")
    return [_entry(raw, f"{source} entry {i + 1}") for i, raw in enumerate(data)]


class TokenRegistry:
    """The configured token hashes; authenticates presented tokens."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        seen: set[str] = set()
        for digest, principal in entries:
            if digest in seen:
                raise TokenConfigError(f"token of {principal.name!r} is configured twice")
            seen.add(digest)
            self._entries.append((bytes.fromhex(digest), principal))

    def __len__(self) -> int:
        return len(self._entries)

    def roles(self) -> dict[str, int]:
        """How many tokens each role has (for the start-up log; no names, no hashes)."""
        return {role: sum(p.role == role for _, p in self._entries) for role in ROLES}

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of ``token``; None for no token, a short one or an unknown one."""
        if token is None or len(token) < MIN_TOKEN_CHARS:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for stored, principal in self._entries:  # every entry, constant time each: no early exit to time
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def load_registry(inline: str, path: Path | None) -> TokenRegistry:
    """Tokens from ``TAGGER_API_TOKENS`` (JSON) and ``TAGGER_API_TOKENS_FILE`` (YAML or JSON)."""
    entries: list[tuple[str, Principal]] = []
    if inline.strip():
        try:
            data: Any = orjson.loads(inline)
        except orjson.JSONDecodeError as exc:
            raise TokenConfigError(f"TAGGER_API_TOKENS is not valid JSON: {exc}") from None
        entries += parse_entries(data, "TAGGER_API_TOKENS")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenConfigError(f"TAGGER_API_TOKENS_FILE {str(path)!r}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TokenConfigError(f"TAGGER_API_TOKENS_FILE {str(path)!r} is not YAML/JSON: {exc}") from None
        entries += parse_entries(data, f"TAGGER_API_TOKENS_FILE {str(path)!r}")
    return TokenRegistry(entries)


@dataclass(frozen=True)
class Decision:
    """The outcome of checking a request: a principal, or the HTTP status and reason of a refusal."""

    principal: Principal | None
    status: int  # 200 (go on), 401 or 403
    reason: str


def authorize(registry: TokenRegistry, header: str | None, action: str) -> Decision:
    """Authenticate the ``Authorization`` header and check the role may perform ``action``."""
    if not len(registry):
        return Decision(None, 401, "no API tokens are configured (TAGGER_API_TOKENS / TAGGER_API_TOKENS_FILE)")
    token = bearer_token(header)
    if token is None:
        return Decision(None, 401, "missing bearer token")
    principal = registry.authenticate(token)
    if principal is None:
        return Decision(None, 401, "invalid bearer token")
    if principal.role not in ACTION_ROLES[action]:
        return Decision(principal, 403, f"role {principal.role!r} may not {action}")
    return Decision(principal, 200, "ok")
