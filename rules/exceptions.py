"""Exceptions of the rules package, under one root, :class:`RulesError`.

* :class:`RulesetError`: a problem found while loading rules. The service refuses
  to start on one (and a running worker keeps its current rules): fix the rule named
  in the message (file, line, rule, problem and a suggestion) and restart.
  ``rules.testing.CaseFileError`` is one in a rule test file.
* :class:`RuleEvaluationError`: one rule's condition failed on one customer's facts
  while tags were evaluated. It is never raised out of the evaluation: the rule counts
  as not fired, the others go on, and the error is handed to the caller's
  :class:`RuleErrors` (counted in ``tagger_rule_errors_total`` and logged by a worker,
  listed by ``tagger rules dry-run`` and ``tagger rules test``).
"""

from __future__ import annotations


class RulesError(Exception):
    """Root of every error the rules package reports; catch it to catch them all.

    Operators: the message names the file, line and rule (or tier condition) concerned;
    fix that rule. Nothing of this family means Kafka or Redis is at fault.
    """


class RulesetError(RulesError):
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


class RuleEvaluationError(RulesError):
    """One condition of a rule (or a tier's ``b_when`` / ``c_when``) failed on one customer's facts.

    Operators: the rule passed its load-time checks, so the facts held a value the samples
    did not (a list or map far larger than usual, an unexpected null); the message gives the
    rule and the runtime's error. Guard the condition (``field != null && ...``) or simplify
    it. Meanwhile the rule counts as not fired for that customer; the other rules go on.

    ``str()`` is ``"rule '<tag>': <Error>: <message>"`` or ``"tiers.<key>: <Error>: <message>"``.
    """

    def __init__(self, condition: str, cause: BaseException, *, rule: str | None = None,
                 file: str | None = None, line: int | None = None) -> None:
        self.condition = condition  # "when" or "exit" of a rule; "tiers.b_when" or "tiers.c_when"
        self.cause = cause
        self.rule = rule  # the tag; None for a tier condition
        self.file = file
        self.line = line
        super().__init__(f"{self.where}: {self.detail}")

    @property
    def where(self) -> str:
        """``rule '<tag>'`` or ``tiers.<key>``: what failed (``tagger rules dry-run`` groups by it)."""
        return self.condition if self.rule is None else f"rule '{self.rule}'"

    @property
    def detail(self) -> str:
        """The runtime's error: ``<Error>: <message>``."""
        return f"{type(self.cause).__name__}: {self.cause}"


class RuleErrors(list[RuleEvaluationError]):
    """Where :func:`rules.evaluate_tags` and :func:`rules.assign_tier` put the errors of one evaluation.

    The older form, a plain ``list[str]``, still works (``agents/engine/evaluate.py`` passes one): it gets
    each error's ``str()``, the same text as before.
    """


def record(errors: RuleErrors | list[str] | None, error: RuleEvaluationError) -> None:
    """Hand ``error`` to the caller's collector, if it gave one (as text to a plain list of str)."""
    if isinstance(errors, RuleErrors):
        errors.append(error)
    elif errors is not None:
        errors.append(str(error))
