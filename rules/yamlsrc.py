"""Reading rule files: ``yaml.safe_load`` for the data, node marks for line numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rules.check import suggest
from rules.exceptions import RulesetError


@dataclass(frozen=True)
class Located:
    """A parsed YAML value with the node it came from (for line numbers)."""

    value: Any
    node: yaml.Node | None
    file: str

    @property
    def line(self) -> int | None:
        """1-based line of the value, if known."""
        return None if self.node is None else self.node.start_mark.line + 1

    def child(self, key: str) -> Located:
        """The value under ``key`` of a mapping."""
        node = None
        if isinstance(self.node, yaml.MappingNode):
            node = next((v for k, v in self.node.value if k.value == key), None)
        return Located(self.value.get(key), node, self.file)

    def items(self) -> list[Located]:
        """The elements of a sequence."""
        nodes = self.node.value if isinstance(self.node, yaml.SequenceNode) else []
        return [
            Located(v, nodes[i] if i < len(nodes) else None, self.file)
            for i, v in enumerate(self.value)
        ]

    def key_line(self, key: str) -> int | None:
        """1-based line of ``key`` in a mapping, else the mapping's own line."""
        if isinstance(self.node, yaml.MappingNode):
            for k, _ in self.node.value:
                if k.value == key:
                    return int(k.start_mark.line) + 1
        return self.line

    def error(
        self,
        problem: str,
        *,
        rule: str | None = None,
        hint: str | None = None,
        key: str | None = None,
    ) -> RulesetError:
        """A :class:`RulesetError` located at this value (or at one of its keys)."""
        line = self.line if key is None else self.key_line(key)
        return RulesetError(problem, file=self.file, line=line, rule=rule, hint=hint)

    def mapping(self, what: str, allowed: tuple[str, ...], *, rule: str | None = None) -> None:
        """Require a mapping with only ``allowed`` keys, each at most once."""
        if not isinstance(self.value, dict):
            raise self.error(
                f"{what} must be a mapping, got {type(self.value).__name__}", rule=rule
            )
        seen: set[str] = set()
        keys = (
            [k.value for k, _ in self.node.value]
            if isinstance(self.node, yaml.MappingNode)
            else list(self.value)
        )
        for key in keys:
            if key in seen:
                raise self.error(f"duplicate key '{key}' in {what}", rule=rule, key=key)
            seen.add(key)
            if key not in allowed:
                close = suggest(str(key), frozenset(allowed))
                hint = f"did you mean '{close}'?" if close else "valid keys: " + ", ".join(allowed)
                raise self.error(
                    f"unknown key '{key}' in {what}", rule=rule, hint=hint, key=str(key)
                )


def read_yaml(path: Path) -> Located:
    """Parse one file with the safe loader, keeping its node tree for line numbers."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise RulesetError(f"invalid YAML: {exc}", file=file, line=line) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesetError(f"cannot read file: {exc}", file=file) from exc
    return Located({} if data is None else data, node, file)
