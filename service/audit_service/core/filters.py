"""Event filters as a small boolean expression over the log's columns. Pure: no I/O, no SQL.

An `EventFilter` (proto), its `query` string and the caller's access scope all compile to one `Expr`; the
store turns it into SQL (store/filter_sql.py) for the log or for the count projection.

Columns are those of audit_events. A text column's empty value ("") stands for NULL in the database; the
two integer columns (outcome, actor_type) hold enum numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from audit.v1 import event_pb2

TEXT_COLUMNS = frozenset(
    {
        "tenant",
        "action",
        "actor_id",
        "actor_slug",
        "actor_email",
        "resource_type",
        "resource_id",
        "resource_name",
        "resource_fqn",
        "parent_resource_type",
        "parent_resource_id",
        "cluster_id",
        "workspace_id",
        "trace_id",
        "request_method",
        "request_route",
        "ip_address",
    }
)
INT_COLUMNS = frozenset({"outcome", "actor_type"})
_ENUMS = {
    "outcome": (event_pb2.Outcome.DESCRIPTOR, "OUTCOME_"),
    "actor_type": (event_pb2.SubjectType.DESCRIPTOR, "SUBJECT_TYPE_"),
}


class UnknownEnumValue(ValueError):
    """A value name that is not one of the column's enum values; `choices` lists them."""

    def __init__(self, value: str, choices: str) -> None:
        self.choices = choices
        super().__init__(f"unknown value {value[:80]!r}")


def enum_number(column: str, value: str) -> int:
    """The number of an enum column's value given by name, case-insensitive, with or without its prefix
    ("system", "SUBJECT_TYPE_SYSTEM"). Raises UnknownEnumValue (also for the UNSPECIFIED value)."""
    descriptor, prefix = _ENUMS[column]
    name = value.upper()
    found = descriptor.values_by_name.get(name if name.startswith(prefix) else prefix + name)
    if found is None or found.number == 0:
        raise UnknownEnumValue(value, ", ".join(v.name.removeprefix(prefix) for v in descriptor.values if v.number))
    return found.number


SEARCHED_COLUMNS = (
    "message",
    "action",
    "resource_name",
    "resource_fqn",
    "actor_slug",
    "actor_email",
    "actor_display_name",
)
"""What free-text search looks into."""


@dataclass(frozen=True, slots=True)
class AnyOf:
    """The column equals one of `values`, or (text columns) starts with one of `prefixes`."""

    column: str
    values: tuple[str | int, ...] = ()
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Search:
    """`term`, as typed, appears in one of SEARCHED_COLUMNS, ignoring case. Both sides are case-folded by the
    database, with one function (migration 0004), never here: Python's str.lower() and PostgreSQL's folding
    disagree on some letters (a final capital sigma)."""

    term: str


def has_control_characters(text: str) -> bool:
    """Search terms may not hold control characters (the searched columns are joined with one)."""
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


MIN_TIME_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z: the earliest time bound (google.protobuf.Timestamp's range)."""
MAX_TIME_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest whole second of a time bound."""


@dataclass(frozen=True, slots=True)
class OccurredBetween:
    """start <= occurred_at < end, in microseconds since the epoch; None is unbounded."""

    start: int | None
    end: int | None


@dataclass(frozen=True, slots=True)
class Not:
    child: Expr


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Expr, ...]


Expr = AnyOf | Search | OccurredBetween | Not | And | Or

MATCH_ALL = And(())


def all_of(parts: Iterable[Expr]) -> Expr:
    """AND of the parts, flattened; MATCH_ALL when there are none."""
    children: list[Expr] = []
    for part in parts:
        children.extend(part.children if isinstance(part, And) else (part,))
    return children[0] if len(children) == 1 else And(tuple(children))


def any_of(parts: Iterable[Expr]) -> Expr:
    """OR of the parts, flattened (at least one part)."""
    children: list[Expr] = []
    for part in parts:
        children.extend(part.children if isinstance(part, Or) else (part,))
    if not children:
        raise ValueError("any_of() needs at least one part")
    return children[0] if len(children) == 1 else Or(tuple(children))


def columns_of(expr: Expr) -> frozenset[str]:
    """The columns an expression reads (SEARCHED_COLUMNS for a search, occurred_at for a time range)."""
    if isinstance(expr, AnyOf):
        return frozenset({expr.column})
    if isinstance(expr, Search):
        return frozenset(SEARCHED_COLUMNS)
    if isinstance(expr, OccurredBetween):
        return frozenset({"occurred_at"})
    if isinstance(expr, Not):
        return columns_of(expr.child)
    return frozenset().union(*(columns_of(child) for child in expr.children))


def time_ranges_of(expr: Expr) -> list[OccurredBetween]:
    """Every time range in the expression."""
    if isinstance(expr, OccurredBetween):
        return [expr]
    if isinstance(expr, Not):
        return time_ranges_of(expr.child)
    if isinstance(expr, And | Or):
        return [found for child in expr.children for found in time_ranges_of(child)]
    return []
