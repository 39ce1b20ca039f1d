"""The shape of the facts that rules are written against.

The stream code owns the real schema and passes it in as plain data; this module
only defines the field type and the sample values used to type-check rules by
trial evaluation at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

FieldKind = Literal["int", "float", "bool", "string", "list", "map"]

TAGS_FIELD = "tags"
"""Always present in the facts: the customer's current tags (list of strings)."""


@dataclass(frozen=True, slots=True)
class FieldType:
    """Type of one fact field; ``nullable`` fields may hold ``None``."""

    kind: FieldKind
    nullable: bool = False


# Typical values per kind. Index 0 and -1 form the two base samples; every
# value is also tried for each referenced field on its own.
_SAMPLES: Mapping[str, tuple[Any, ...]] = {
    "int": (0, 5, 100_000),
    "float": (0.0, 12.5, 1_000_000.0),
    "bool": (True, False),
    "string": ("x",),
    "list": ([], ["x"]),
    "map": ({},),
}


def with_tags(schema: Mapping[str, FieldType]) -> dict[str, FieldType]:
    """Return the schema plus the implicit non-null ``tags`` list field."""
    return {**schema, TAGS_FIELD: FieldType("list")}


def sample_values(field: FieldType) -> tuple[Any, ...]:
    """Typical non-null values for a field type."""
    return _SAMPLES[field.kind]
