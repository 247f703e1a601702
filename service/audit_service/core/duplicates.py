"""Duplicates of stored events: an identical redelivery is harmless, a different event under the same event_id
is a conflict that must be seen. Pure: store/append.py reads the stored events and asks here."""

from __future__ import annotations

from .records import CHANGE_BEFORE_INDEX, CONTENT_COLUMNS, Content


def conflicting_fields(incoming: Content, stored: Content) -> tuple[str, ...]:
    """The columns in which an event sent again under a stored event's id differs from the stored event; empty
    when it is the same event (a redelivery or a producer's retry).

    Both contents are canonical and masked. The stored change.before may have been filled by the service from
    the resource's previous state, so it is compared only when the incoming event has one of its own.
    """
    if incoming == stored:
        return ()
    return tuple(
        name
        for index, (name, mine, theirs) in enumerate(zip(CONTENT_COLUMNS, incoming, stored, strict=True))
        if mine != theirs and not (index == CHANGE_BEFORE_INDEX and mine is None)
    )
