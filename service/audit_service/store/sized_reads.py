"""Reads bounded by bytes, not rows: a page stops once its events add up to a byte budget, decided in PostgreSQL
before any large value is sent.

A page query (`... ORDER BY position LIMIT n`) is wrapped: over its rows, in their order, a running sum of each
event's cost to read (its size, audit_events.event_bytes of migration 0006, plus ROW_BYTES) keeps the rows whose
predecessors stay under the budget,
so a page holds at least one event and at most the budget plus one event. The inner query keeps its plan (an
index scan or a top-N sort with its LIMIT); the wrapper only sees its n rows, and values it drops are never
detoasted nor sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..core.records import CONTENT_COLUMNS

ROW_BYTES = 2048
"""What a row costs beyond its event's bytes, once read: the asyncpg Record, the Python objects of its columns, the
StoredEvent and its protobuf message. Without it a budget of small events admits far more rows than it means to:
4 MiB of 300-byte events is 14,000 rows and about 100 MiB of Python objects."""

_TEXT_COLUMNS = [name for name in CONTENT_COLUMNS if name not in ("event_id", "outcome", "actor_type", "occurred_at")]


def read_bytes_sql(alias: str) -> str:
    """What reading the event in row `alias` costs: ROW_BYTES plus its stored event_bytes, or for events stored
    before that column existed, the length of its columns as text (which costs reading them)."""
    columns = ", ".join(
        f"{alias}.{name}::text" if name in ("metadata", "change_before", "change_after") else f"{alias}.{name}"
        for name in _TEXT_COLUMNS
    )
    return f"{ROW_BYTES} + coalesce({alias}.event_bytes, 256 + octet_length(concat({columns})))"


def byte_bounded(page_sql: str, *, descending: bool = False, max_bytes_parameter: str, order: str = "") -> str:
    """`page_sql` (a SELECT of a column `read_bytes` and the columns it is ordered by, with its LIMIT) cut where
    its events add up to the budget; also returns `page_rows`, the rows of the whole page.

    Args:
        descending: the page is in descending position order (when `order` is not given).
        order: the page's order as columns of its output, e.g. "tenant, position" (default: by position).
    """
    order = order or f"position {'DESC' if descending else 'ASC'}"
    return (
        "SELECT * FROM ("
        f"SELECT page.*, sum(page.read_bytes) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS bytes_through, "
        "count(*) OVER () AS page_rows "
        f"FROM ({page_sql}) AS page"
        f") AS sized WHERE bytes_through - read_bytes < {max_bytes_parameter} ORDER BY {order}"
    )


@dataclass(frozen=True, slots=True)
class SizedRows:
    """Rows of a byte-bounded page."""

    rows: list[asyncpg.Record]
    found: int
    """Rows the page query found (up to its LIMIT) before the byte budget cut it."""

    @property
    def cut(self) -> bool:
        """True when the budget left out rows the query found."""
        return self.found > len(self.rows)

    @property
    def size(self) -> int:
        """What the rows returned cost to read (read_bytes)."""
        return sum(row["read_bytes"] for row in self.rows)


def sized_rows(rows: list[asyncpg.Record]) -> SizedRows:
    return SizedRows(rows, rows[0]["page_rows"] if rows else 0)
