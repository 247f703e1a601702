"""Evaluates a filters.Expr on one event in memory, as the database would, for live tails. Pure.

Every condition is decided exactly as store/filter_sql.py's SQL decides it (an empty text value is NULL, a
negation of NULL is true), except free-text search outside ASCII: the database folds case with its own
Unicode tables, which Python's do not match letter for letter. Such a search is undecided here (None), and the
caller asks the database about those events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from audit.v1 import event_pb2

from .filters import SEARCHED_COLUMNS, And, AnyOf, Expr, Not, OccurredBetween, Or, Search
from .records import timestamp_micros

EventColumns = Mapping[str, object]
"""An event's filterable columns: TEXT_COLUMNS as str ("" for NULL), outcome and actor_type as int, occurred_at
in µs, and the SEARCHED_COLUMNS."""
Verdict = bool | None
"""True: it matches; False: it does not; None: only the database can tell (search outside ASCII)."""
Matcher = Callable[[EventColumns], Verdict]


def event_columns(event: event_pb2.AuditEvent) -> dict[str, object]:
    """The filterable columns of a stored event, as the log holds them."""
    actor, resource, parent, request = event.actor, event.resource, event.parent_resource, event.request
    occurred = event.occurred_at
    return {
        "tenant": event.tenant,
        "action": event.action,
        "outcome": event.outcome,
        "actor_id": actor.id,
        "actor_type": actor.type,
        "actor_slug": actor.slug,
        "actor_email": actor.email,
        "actor_display_name": actor.display_name,
        "resource_type": resource.type,
        "resource_id": resource.id,
        "resource_name": resource.name,
        "resource_fqn": resource.fqn,
        "parent_resource_type": parent.type,
        "parent_resource_id": parent.id,
        "cluster_id": event.cluster_id,
        "workspace_id": event.workspace_id,
        "trace_id": event.trace_id,
        "request_method": request.method,
        "request_route": request.route,
        "ip_address": request.ip_address,
        "message": event.message,
        "occurred_at": timestamp_micros(occurred.seconds, occurred.nanos),
    }


def compile_matcher(expr: Expr) -> Matcher:
    """A function deciding `expr` for one event's columns (see event_columns)."""
    if isinstance(expr, AnyOf):
        return _any_of(expr)
    if isinstance(expr, Search):
        return _search(expr.term)
    if isinstance(expr, OccurredBetween):
        start, end = expr.start, expr.end
        return lambda columns: (
            (start is None or columns["occurred_at"] >= start) and (end is None or columns["occurred_at"] < end)
        )
    if isinstance(expr, Not):
        child = compile_matcher(expr.child)

        def negation(columns: EventColumns) -> Verdict:
            verdict = child(columns)
            return None if verdict is None else not verdict

        return negation
    if isinstance(expr, And):
        return _connective(tuple(compile_matcher(child) for child in expr.children), decisive=False)
    if isinstance(expr, Or):
        return _connective(tuple(compile_matcher(child) for child in expr.children), decisive=True)
    raise TypeError(f"not a filter expression: {expr!r}")


def _connective(children: tuple[Matcher, ...], *, decisive: bool) -> Matcher:
    """AND (decisive False) or OR (decisive True) in three-valued logic: one decisive verdict settles it;
    otherwise an undecided child leaves it undecided."""

    def connective(columns: EventColumns) -> Verdict:
        undecided = False
        for child in children:
            verdict = child(columns)
            if verdict is decisive:
                return decisive
            undecided = undecided or verdict is None
        return None if undecided else not decisive

    return connective


def _any_of(expr: AnyOf) -> Matcher:
    column, values, prefixes = expr.column, frozenset(expr.values), expr.prefixes
    if not prefixes:
        return lambda columns: columns[column] in values
    # A prefix never matches NULL (""), as `NULL LIKE 'p%'` is not true.
    return lambda columns: (
        columns[column] in values
        or (
            columns[column] != "" and columns[column].startswith(prefixes)  # type: ignore[union-attr]
        )
    )


def _search(term: str) -> Matcher:
    if not term.isascii():
        return lambda columns: None
    folded = term.lower()

    def search(columns: EventColumns) -> Verdict:
        undecided = False
        for name in SEARCHED_COLUMNS:
            text: str = columns[name]  # type: ignore[assignment]
            if not text.isascii():
                undecided = True  # the database may fold some of its letters to ASCII ones (K, the Kelvin sign)
            elif folded in text.lower():
                return True
        return None if undecided else False

    return search
