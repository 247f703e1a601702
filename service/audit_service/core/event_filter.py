"""Compiles an EventFilter (proto) and the caller's scope into one filters.Expr, checking every field. Pure.

Every malformed value raises InvalidArgumentError naming its field (`filter.actions[2]`,
`filter.conditions[0].values`...), so a client always learns what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_client.validation import ACTION_PATTERN, TENANT_PATTERN, TRACE_ID_PATTERN
from google.protobuf import timestamp_pb2

from ..errors import InvalidArgumentError
from .filters import (
    INT_COLUMNS,
    MAX_TIME_SECONDS,
    MIN_TIME_SECONDS,
    AnyOf,
    Expr,
    Not,
    OccurredBetween,
    Search,
    UnknownEnumValue,
    all_of,
    any_of,
    enum_number,
    has_control_characters,
)
from .query_string import compile_query

MAX_VALUES = 100
"""Most values in one repeated filter field or condition."""
MAX_CONDITIONS = 50
MAX_TEXT_CHARS = 1024
MAX_SEARCH_CHARS = 256

_OUTCOMES = frozenset(event_pb2.Outcome.values()) - {event_pb2.OUTCOME_UNSPECIFIED}
_SUBJECT_TYPES = frozenset(event_pb2.SubjectType.values()) - {event_pb2.SUBJECT_TYPE_UNSPECIFIED}

_CONDITION_COLUMNS: dict[int, str] = {
    pb.CONDITION_FIELD_ACTION: "action",
    pb.CONDITION_FIELD_ACTOR_ID: "actor_id",
    pb.CONDITION_FIELD_ACTOR_SLUG: "actor_slug",
    pb.CONDITION_FIELD_ACTOR_EMAIL: "actor_email",
    pb.CONDITION_FIELD_ACTOR_TYPE: "actor_type",
    pb.CONDITION_FIELD_RESOURCE_TYPE: "resource_type",
    pb.CONDITION_FIELD_RESOURCE_ID: "resource_id",
    pb.CONDITION_FIELD_RESOURCE_NAME: "resource_name",
    pb.CONDITION_FIELD_RESOURCE_FQN: "resource_fqn",
    pb.CONDITION_FIELD_PARENT_RESOURCE_TYPE: "parent_resource_type",
    pb.CONDITION_FIELD_PARENT_RESOURCE_ID: "parent_resource_id",
    pb.CONDITION_FIELD_CLUSTER_ID: "cluster_id",
    pb.CONDITION_FIELD_WORKSPACE_ID: "workspace_id",
    pb.CONDITION_FIELD_OUTCOME: "outcome",
    pb.CONDITION_FIELD_TRACE_ID: "trace_id",
    pb.CONDITION_FIELD_REQUEST_METHOD: "request_method",
    pb.CONDITION_FIELD_REQUEST_ROUTE: "request_route",
    pb.CONDITION_FIELD_IP_ADDRESS: "ip_address",
}


@dataclass(frozen=True, slots=True)
class Scope:
    """What the caller may see: one tenant (None: every tenant) and, unless an admin, only its own actions."""

    tenant: str | None
    actor_id: str | None = None
    """When set, only events whose actor.id is this."""

    def expr(self) -> Expr:
        parts: list[Expr] = []
        if self.tenant is not None:
            parts.append(AnyOf("tenant", (self.tenant,)))
        if self.actor_id is not None:
            parts.append(AnyOf("actor_id", (self.actor_id,)))
        return all_of(parts)


UNRESTRICTED = Scope(tenant=None)


def checked_text(value: str, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    """The value of a text field of a request, refused (naming the field) when too long or holding a NUL."""
    if len(value) > limit:
        raise InvalidArgumentError(field, f"longer than {limit} characters")
    if "\x00" in value:
        raise InvalidArgumentError(field, "contains a NUL character")
    return value


def _count(values: object, field: str) -> None:
    if len(values) > MAX_VALUES:  # type: ignore[arg-type]
        raise InvalidArgumentError(field, f"more than {MAX_VALUES} values")


def timestamp_micros(timestamp: timestamp_pb2.Timestamp, field: str) -> int:
    """A valid Timestamp in microseconds since the epoch (truncated, as PostgreSQL stores it)."""
    if not MIN_TIME_SECONDS <= timestamp.seconds <= MAX_TIME_SECONDS:
        raise InvalidArgumentError(field, "is outside 0001-01-01..9999-12-31")
    if not 0 <= timestamp.nanos < 1_000_000_000:
        raise InvalidArgumentError(field, "nanos must be in [0, 1e9)")
    return timestamp.seconds * 1_000_000 + timestamp.nanos // 1000


def _action(value: str, field: str) -> AnyOf:
    checked_text(value, field)
    if value.endswith("*"):
        prefix = value[:-1]
        if not prefix or "*" in prefix:
            raise InvalidArgumentError(field, "an action prefix needs text before a single trailing *")
        return AnyOf("action", prefixes=(prefix,))
    if not ACTION_PATTERN.fullmatch(value):
        raise InvalidArgumentError(field, f"must match {ACTION_PATTERN.pattern} (or end with * for a prefix)")
    return AnyOf("action", (value,))


def _enum_name(value: str, column: str, field: str) -> int:
    try:
        return enum_number(column, value)
    except UnknownEnumValue as error:
        raise InvalidArgumentError(field, f"{error} (one of {error.choices})") from None


def _condition(condition: pb.Condition, field: str) -> Expr:
    column = _CONDITION_COLUMNS.get(condition.field)
    if column is None:
        raise InvalidArgumentError(f"{field}.field", f"unknown or unset field {condition.field}")
    operator = condition.operator
    values = list(condition.values)
    if operator in (pb.CONDITION_OPERATOR_EQUAL, pb.CONDITION_OPERATOR_NOT_EQUAL):
        if len(values) != 1:
            raise InvalidArgumentError(
                f"{field}.values", f"EQUAL and NOT_EQUAL take exactly one value, got {len(values)}"
            )
    elif operator in (pb.CONDITION_OPERATOR_IN, pb.CONDITION_OPERATOR_NOT_IN):
        if not values:
            raise InvalidArgumentError(f"{field}.values", "IN and NOT_IN take at least one value")
        _count(values, f"{field}.values")
    else:
        raise InvalidArgumentError(f"{field}.operator", f"unknown or unset operator {operator}")
    parsed: list[str | int] = []
    for index, value in enumerate(values):
        value_field = f"{field}.values[{index}]"
        checked_text(value, value_field)
        parsed.append(_enum_name(value, column, value_field) if column in INT_COLUMNS else value)
    expr = AnyOf(column, tuple(parsed))
    negated = operator in (pb.CONDITION_OPERATOR_NOT_EQUAL, pb.CONDITION_OPERATOR_NOT_IN)
    return Not(expr) if negated else expr


def _time_range(event_filter: pb.EventFilter) -> Expr | None:
    start = end = None
    if event_filter.HasField("start_time"):
        start = timestamp_micros(event_filter.start_time, "filter.start_time")
    if event_filter.HasField("end_time"):
        end = timestamp_micros(event_filter.end_time, "filter.end_time")
    if start is not None and end is not None and end <= start:
        raise InvalidArgumentError("filter.end_time", "must be after filter.start_time")
    if start is None and end is None:
        return None
    return OccurredBetween(start, end)


def filter_tenant(event_filter: pb.EventFilter) -> str | None:
    """The filter's tenant, checked (None when empty)."""
    tenant = event_filter.tenant
    if not tenant:
        return None
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidArgumentError("filter.tenant", f"must match {TENANT_PATTERN.pattern}")
    return tenant


def compile_filter(event_filter: pb.EventFilter, scope: Scope) -> Expr:
    """The expression selecting what `event_filter` asks for, within what `scope` allows.

    The scope's tenant is checked against filter.tenant by the caller (a mismatch is a permission matter);
    here the scope is simply ANDed in.
    """
    parts: list[Expr] = [scope.expr()]
    tenant = filter_tenant(event_filter)
    if tenant is not None:
        parts.append(AnyOf("tenant", (tenant,)))

    if event_filter.actions:
        _count(event_filter.actions, "filter.actions")
        parts.append(any_of(_action(value, f"filter.actions[{i}]") for i, value in enumerate(event_filter.actions)))
    if event_filter.search:
        search = checked_text(event_filter.search, "filter.search", MAX_SEARCH_CHARS)
        words = search.split()
        if not words:
            raise InvalidArgumentError("filter.search", "has no words")
        if any(has_control_characters(word) for word in words):
            raise InvalidArgumentError("filter.search", "contains control characters")
        parts.extend(Search(word) for word in words)
    for name, column in (
        ("resource_id", "resource_id"),
        ("resource_type", "resource_type"),
        ("resource_name", "resource_name"),
        ("resource_fqn", "resource_fqn"),
        ("cluster_id", "cluster_id"),
        ("workspace_id", "workspace_id"),
    ):
        value = getattr(event_filter, name)
        if value:
            parts.append(AnyOf(column, (checked_text(value, f"filter.{name}"),)))
    for name, column in (("actor_slugs", "actor_slug"), ("actor_ids", "actor_id")):
        values = getattr(event_filter, name)
        if values:
            _count(values, f"filter.{name}")
            for index, value in enumerate(values):
                if not value:
                    raise InvalidArgumentError(f"filter.{name}[{index}]", "is empty")
                checked_text(value, f"filter.{name}[{index}]")
            parts.append(AnyOf(column, tuple(values)))
    for name, column, known in (("actor_types", "actor_type", _SUBJECT_TYPES), ("outcomes", "outcome", _OUTCOMES)):
        values = getattr(event_filter, name)
        if values:
            _count(values, f"filter.{name}")
            for index, value in enumerate(values):
                if value not in known:
                    raise InvalidArgumentError(f"filter.{name}[{index}]", f"unknown or unset value {value}")
            parts.append(AnyOf(column, tuple(values)))
    time_range = _time_range(event_filter)
    if time_range is not None:
        parts.append(time_range)
    if event_filter.trace_id:
        if not TRACE_ID_PATTERN.fullmatch(event_filter.trace_id):
            raise InvalidArgumentError("filter.trace_id", "must be 32 lowercase hex digits")
        parts.append(AnyOf("trace_id", (event_filter.trace_id,)))

    if event_filter.conditions:
        if len(event_filter.conditions) > MAX_CONDITIONS:
            raise InvalidArgumentError("filter.conditions", f"more than {MAX_CONDITIONS} conditions")
        conditions = [_condition(c, f"filter.conditions[{i}]") for i, c in enumerate(event_filter.conditions)]
        join = event_filter.condition_join
        if join in (pb.CONDITION_JOIN_UNSPECIFIED, pb.CONDITION_JOIN_ALL):
            parts.append(all_of(conditions))
        elif join == pb.CONDITION_JOIN_ANY:
            parts.append(any_of(conditions))
        else:
            raise InvalidArgumentError("filter.condition_join", f"unknown value {join}")
    elif event_filter.condition_join not in pb.ConditionJoin.values():
        raise InvalidArgumentError("filter.condition_join", f"unknown value {event_filter.condition_join}")

    if event_filter.query:
        parts.append(compile_query(event_filter.query))
    return all_of(parts)
