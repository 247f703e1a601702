"""Turns a filters.Expr into a SQL condition with numbered parameters, for the log or the count projection.

NULL-safety: a text column stores "" as NULL, so `col = $1` is NULL (not false) on an empty column. In a
WHERE clause and under AND/OR that is the same as false; under NOT it is not, so a negation is written
`NOT coalesce(<condition>, false)`.
"""

from __future__ import annotations

import datetime as dt

from ..core.filters import (
    INT_COLUMNS,
    SEARCHED_COLUMNS,
    TEXT_COLUMNS,
    And,
    AnyOf,
    Expr,
    Not,
    OccurredBetween,
    Or,
    Search,
)
from ..core.records import micros_to_datetime

SEARCH_TEXT_SQL = "audit_search_text({columns})"
"""The indexed expression free-text search looks into (migration 0002)."""


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Parameters:
    """Positional parameters of one statement ($1, $2...)."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def add(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


OCCURRED_AFTER_RECORDED_SQL = "(SELECT max_occurred_after_recorded FROM audit_log_head)"
"""The most by which a stored event's occurred_at exceeds its recorded_at (migration 0015)."""


class FilterSql:
    """Writes conditions on the columns of one table alias.

    Args:
        alias: the table alias, e.g. "e".
        time_column: the column a time range applies to ("occurred_at" on the log, "hour" on the projection).
    """

    def __init__(self, params: Parameters, alias: str, time_column: str = "occurred_at") -> None:
        self._params = params
        self._alias = alias
        self._time_column = time_column

    def condition(self, expr: Expr) -> str:
        """A SQL boolean for `expr` ("true" when it matches everything)."""
        if isinstance(expr, AnyOf):
            return self._any_of(expr)
        if isinstance(expr, Search):
            columns = ", ".join(f"{self._alias}.{name}" for name in SEARCHED_COLUMNS)
            pattern = self._params.add(f"%{like_escape(expr.term)}%")
            return f"{SEARCH_TEXT_SQL.format(columns=columns)} LIKE audit_search_fold({pattern}::text)"
        if isinstance(expr, OccurredBetween):
            column = f"{self._alias}.{self._time_column}"
            bounds = []
            if expr.start is not None:
                start = timestamp_sql(self._params, expr.start)
                bounds.append(f"{column} >= {start}")
                if self._time_column == "occurred_at":
                    # Implied by the line above for every stored event (migration 0015), and on the partition
                    # key: the partitions recorded before it are pruned instead of scanned.
                    bounds.append(f"{self._alias}.recorded_at >= {start} - {OCCURRED_AFTER_RECORDED_SQL}")
            if expr.end is not None:
                bounds.append(f"{column} < {timestamp_sql(self._params, expr.end)}")
            return " AND ".join(bounds) or "true"
        if isinstance(expr, Not):
            return f"NOT coalesce(({self.condition(expr.child)}), false)"
        if isinstance(expr, And):
            if not expr.children:
                return "true"
            return " AND ".join(f"({self.condition(child)})" for child in expr.children)
        if isinstance(expr, Or):
            return " OR ".join(f"({self.condition(child)})" for child in expr.children)
        raise TypeError(f"not a filter expression: {expr!r}")

    def _any_of(self, expr: AnyOf) -> str:
        column = f"{self._alias}.{expr.column}"
        if expr.column in INT_COLUMNS:
            if len(expr.values) == 1:
                return f"{column} = {self._params.add(expr.values[0])}::smallint"
            return f"{column} = ANY({self._params.add(list(expr.values))}::smallint[])"
        if expr.column not in TEXT_COLUMNS:
            raise ValueError(f"cannot filter on column {expr.column!r}")
        alternatives = []
        present = [value for value in expr.values if value != ""]
        if len(present) == 1:
            alternatives.append(f"{column} = {self._params.add(present[0])}::text")
        elif present:
            alternatives.append(f"{column} = ANY({self._params.add(present)}::text[])")
        if len(present) != len(expr.values):
            alternatives.append(f"{column} IS NULL")
        for prefix in expr.prefixes:
            alternatives.append(f"{column} LIKE {self._params.add(like_escape(prefix) + '%')}::text")
        if not alternatives:
            return "false"
        return " OR ".join(alternatives)


def timestamp_sql(params: Parameters, micros: int) -> str:
    """A timestamptz parameter of exactly `micros` (µs since the epoch).

    asyncpg sends the datetimes 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999, the ends of the range of a
    time bound, as -infinity and infinity (and reads them back so): those two go as text for PostgreSQL to parse.
    """
    moment = micros_to_datetime(micros)
    if moment.replace(tzinfo=None) in (dt.datetime.min, dt.datetime.max):
        return f"{params.add(moment.isoformat())}::text::timestamptz"
    return f"{params.add(moment)}::timestamptz"
