"""A destination's subscription that fails because the database is away is resumed with a warning; only an error
nobody expected is logged with its traceback ("failed; resuming"), which the fault tests look for."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from audit_service.config import DeliveryConfig
from audit_service.delivery.destinations import DestinationSupervisor
from audit_service.errors import UnavailableError


class _FailingSubscription:
    tenant, name = "acme", "siem"

    def __init__(self, error: Exception) -> None:
        self.error, self.runs, self.resumed = error, 0, asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 2:
            self.resumed.set()
        raise self.error


async def _guard_twice(error: Exception) -> _FailingSubscription:
    supervisor = DestinationSupervisor(None, DeliveryConfig(poll_seconds=0.001), None)  # type: ignore[arg-type]
    subscription = _FailingSubscription(error)
    guarded = asyncio.create_task(supervisor._guarded(subscription))  # type: ignore[arg-type]
    await asyncio.wait_for(subscription.resumed.wait(), timeout=10)
    guarded.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guarded
    return subscription


@pytest.mark.parametrize(
    "error",
    [
        UnavailableError("cannot connect to PostgreSQL: the database is not accepting connections"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=type,
)
async def test_a_database_that_is_away_is_a_warning_and_the_subscription_resumes(error, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="audit_service.delivery.destinations"):
        subscription = await _guard_twice(error)
    assert subscription.runs >= 2
    assert [record.levelno for record in caplog.records] == [logging.WARNING] * len(caplog.records)
    assert "failed; resuming" not in caplog.text and "; resuming" in caplog.text


async def test_an_error_nobody_expected_is_logged_with_its_traceback_and_the_subscription_resumes(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="audit_service.delivery.destinations"):
        subscription = await _guard_twice(KeyError("a bug"))
    assert subscription.runs >= 2
    assert "failed; resuming" in caplog.text and caplog.records[0].exc_info is not None
