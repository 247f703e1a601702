"""Exceptions raised by the audit client. Imports nothing from the package."""

from __future__ import annotations

from typing import Any


class AuditClientError(Exception):
    """Base class of every error raised by audit_client."""


class InvalidEventError(AuditClientError):
    """The event breaks the contract and was not sent.

    Attributes:
        field: dotted path of the offending field, e.g. "actor.type" ("" for the whole event).
        reason: machine-readable reason, also used as the dead-letter subject token by the service.
        detail: human-readable explanation.
    """

    def __init__(self, field: str, reason: str, detail: str) -> None:
        self.field = field
        self.reason = reason
        self.detail = detail
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{detail}")


class EventTooLargeError(InvalidEventError):
    """The encoded event is larger than the configured limit.

    Attributes:
        size: encoded size in bytes.
        limit: the limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("", "too_large", f"encoded event is {size} bytes, the limit is {limit} bytes")


class PublishError(AuditClientError):
    """JetStream did not acknowledge the event (no stream for the subject, timeout, connection lost).

    Attributes:
        event_id: id of the event that may not have been stored; publishing it again is safe.
    """

    def __init__(self, event_id: str, detail: str) -> None:
        self.event_id = event_id
        super().__init__(f"event {event_id} was not acknowledged: {detail}")


class PublishBatchError(PublishError):
    """Some events of a `publish_many()` were not acknowledged; all the others were stored.

    Publishing the whole batch again is safe (the service stores each event_id once); so is publishing only
    `unacknowledged_events`.

    Attributes:
        acks: one entry per event, in the order given: its PublishAck, or None when it was not acknowledged.
        errors: the PublishError of each event that was not acknowledged, by its index in the batch.
        event_id: the first event that was not acknowledged.
    """

    def __init__(self, acks: list[Any], errors: dict[int, PublishError], events: list[Any]) -> None:
        self.acks = acks
        self.errors = dict(sorted(errors.items()))
        self._events = events
        first = next(iter(self.errors))
        self.event_id = self.errors[first].event_id
        AuditClientError.__init__(
            self, f"{len(self.errors)} of {len(acks)} events were not acknowledged; events[{first}]: {errors[first]}"
        )

    @property
    def unacknowledged_events(self) -> list[Any]:
        """The events (completed: with their event_id) that were not acknowledged, in batch order."""
        return [self._events[index] for index in self.errors]
