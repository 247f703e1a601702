"""Which failures of an append are the events' own fault, and what a dead letter says about them.

An error that the content of an event causes while it is stored (a value PostgreSQL cannot take, an index
entry over its size limit, a check constraint of its own row) will happen again on every retry: the worker
finds the event by splitting the batch and dead-letters it (reason `rejected_by_storage`), so one event can
never stop the log. Anything else (the connection lost, the server shutting down, a serialization failure, a
full disk, missing privileges, a key of the log itself colliding) is not the events' fault: the batch is kept
and retried, and nothing is dead-lettered for it.
"""

from __future__ import annotations

import asyncpg

from ..store.pool import CONNECTION_FAILURES

_EVENT_SQLSTATE_CLASSES = frozenset(
    {
        "22",  # data exception: a value the column or a function cannot take
        "23",  # integrity constraint violation of the event's own row (check, not-null)...
        "54",  # program limit exceeded: e.g. an index row larger than a btree page allows
    }
)
_NOT_THE_EVENTS_FAULT = frozenset(
    {
        "23505",  # ...except a unique violation: only the log's own keys are unique (position, event id), and
        # appends are serialized and de-duplicated first, so a collision means the log's state is wrong
    }
)
_CLIENT_SIDE_ERRORS = (ValueError, TypeError, UnicodeError, OverflowError)
"""Raised while encoding an event's values for PostgreSQL (asyncpg's client-side DataError is a ValueError)."""


def caused_by_the_events(error: BaseException) -> bool:
    """True when storing the events failed because of what they hold, so retrying them cannot help."""
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = error.sqlstate or ""
        return sqlstate[:2] in _EVENT_SQLSTATE_CLASSES and sqlstate not in _NOT_THE_EVENTS_FAULT
    if isinstance(error, CONNECTION_FAILURES) and not isinstance(error, ValueError):
        return False  # the connection, not the data
    return isinstance(error, _CLIENT_SIDE_ERRORS)


def storage_refusal_detail(error: BaseException) -> str:
    """One line for the dead letter: the database's own message, its detail and SQLSTATE."""
    if isinstance(error, asyncpg.PostgresError):
        parts = [f"{type(error).__name__}: {error}"]
        if detail := getattr(error, "detail", None):
            parts.append(f"detail: {detail}")
        parts.append(f"SQLSTATE {error.sqlstate}")
        return "; ".join(parts)
    return f"{type(error).__name__}: {error}"


def timed_out(error: BaseException) -> bool:
    """True when a statement ran past its time limit: PostgreSQL's statement_timeout (SQLSTATE 57014) or the
    client's command timeout. Not the events' fault, but the same batch would time out again: it is halved."""
    return isinstance(error, asyncpg.QueryCanceledError | TimeoutError)
