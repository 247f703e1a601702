"""The status a client gets for a failure (api/errors.status_for): a database that is away is UNAVAILABLE, which
clients retry, however the driver reports it; only what nobody expected is INTERNAL, with a reference."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from audit_service.api.errors import status_for


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    ],
    ids=type,
)
def test_a_database_that_is_away_is_unavailable(error: BaseException) -> None:
    code, message = status_for(error)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == "the audit log database is unavailable; retry later"  # nothing of the driver's internals


def test_an_error_nobody_expected_is_internal_with_a_reference_and_no_detail() -> None:
    code, message = status_for(KeyError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL
    assert message.startswith("internal error (ref ") and "secret" not in message
