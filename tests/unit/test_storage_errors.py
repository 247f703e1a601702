"""Which append failures are the events' fault (dead-lettered) and which are retried."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base
import pytest
from audit_service.errors import UnavailableError
from audit_service.ingest.storage_errors import caused_by_the_events, storage_refusal_detail


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ProgramLimitExceededError("index row size 4128 exceeds btree version 4 maximum 2704"),
        asyncpg.StringDataRightTruncationError("value too long"),
        asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        asyncpg.InvalidTextRepresentationError("invalid input syntax for type json"),
        asyncpg.NumericValueOutOfRangeError("numeric field overflow"),
        asyncpg.CheckViolationError('new row violates check constraint "no_evil"'),
        asyncpg.NotNullViolationError("null value in column"),
        asyncpg.exceptions._base.DataError("invalid input for query argument $3"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        OverflowError("date value out of range"),
    ],
    ids=type,
)
def test_errors_the_content_causes_are_the_events_fault(error: BaseException) -> None:
    assert caused_by_the_events(error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError('duplicate key value violates unique constraint "audit_event_ids_pkey"'),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.InsufficientPrivilegeError("permission denied for table audit_events"),
        asyncpg.DiskFullError("could not extend file"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        asyncpg.UndefinedTableError('relation "audit_events" does not exist'),
        UnavailableError("no partition for recorded_at"),
        ConnectionResetError(),
        TimeoutError(),
    ],
    ids=type,
)
def test_errors_of_the_database_or_the_connection_are_retried(error: BaseException) -> None:
    assert not caused_by_the_events(error)


def test_the_detail_carries_the_database_message_and_sqlstate() -> None:
    error = asyncpg.ProgramLimitExceededError("index row size 4128 exceeds btree version 4 maximum 2704")
    detail = storage_refusal_detail(error)
    assert "index row size 4128 exceeds btree version 4 maximum 2704" in detail
    assert detail.endswith("SQLSTATE 54000")
