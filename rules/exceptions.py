"""Exceptions raised by the ruleset package.

Every problem found while loading rules is a :class:`RulesetError`. The service
refuses to start on one: fix the rule named in the message (file, line, rule,
problem and a suggestion) and restart. Nothing here is raised while tags are
evaluated; runtime problems in a single rule are reported, not raised.
"""

from __future__ import annotations


class RulesetError(Exception):
    """A rule file is invalid: the message says where, what, and how to fix it.

    Operators: open the file at the line given, apply the suggestion after the
    dash, and restart. The attributes carry the same information for tooling.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        rule: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.rule = rule
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.rule is not None:
            where = f"{where} rule '{self.rule}'".strip()
        text = f"{where}: {self.problem}" if where else self.problem
        return f"{text} — {self.hint}" if self.hint else text

    def located(
        self, *, file: str | None, line: int | None = None, rule: str | None = None
    ) -> RulesetError:
        """Return a copy that fills in location fields this error does not have yet."""
        return RulesetError(
            self.problem,
            file=self.file or file,
            line=self.line if self.line is not None else line,
            rule=self.rule or rule,
            hint=self.hint,
        )
