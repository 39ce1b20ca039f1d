"""Declarative customer-tagging rules: YAML + CEL, checked at load time.

Pure: the caller passes the facts schema and the facts as plain data.
"""

from rules.churn import BGNBDParams, ChurnAssessment, ChurnPolicy, ChurnWeights, assess_churn
from rules.dryrun import DryRunReport, dry_run
from rules.exceptions import RuleErrors, RuleEvaluationError, RulesError, RulesetError
from rules.loader import default_rules_dir, load_ruleset
from rules.model import Rule, Ruleset, ScoreWeights, TierPolicy
from rules.schema import FieldType
from rules.score import weighted_score
from rules.tagging import evaluate_tags
from rules.testing import CaseFileError, load_cases, run_cases
from rules.tiers import assign_tier, possible_tiers, tier_cutoffs, tier_ranks

__all__ = [
    "BGNBDParams",
    "ChurnAssessment",
    "ChurnPolicy",
    "ChurnWeights",
    "CaseFileError",
    "DryRunReport",
    "FieldType",
    "Rule",
    "RuleErrors",
    "RuleEvaluationError",
    "Ruleset",
    "RulesError",
    "RulesetError",
    "ScoreWeights",
    "TierPolicy",
    "assess_churn",
    "assign_tier",
    "default_rules_dir",
    "dry_run",
    "evaluate_tags",
    "load_cases",
    "load_ruleset",
    "possible_tiers",
    "run_cases",
    "tier_cutoffs",
    "tier_ranks",
    "weighted_score",
]
