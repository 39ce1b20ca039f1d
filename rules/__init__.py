"""Declarative customer-tagging rules: YAML + CEL, checked at load time.

Pure: the caller passes the facts schema and the facts as plain data.
"""

from rules.evaluate import evaluate_tags
from rules.exceptions import RulesetError
from rules.loader import default_rules_dir, load_ruleset
from rules.model import Rule, Ruleset, ScoreWeights, TierPolicy
from rules.schema import FieldType
from rules.score import weighted_score
from rules.tiers import assign_tier, tier_cutoffs

__all__ = [
    "FieldType",
    "Rule",
    "Ruleset",
    "RulesetError",
    "ScoreWeights",
    "TierPolicy",
    "assign_tier",
    "default_rules_dir",
    "evaluate_tags",
    "load_ruleset",
    "tier_cutoffs",
    "weighted_score",
]
