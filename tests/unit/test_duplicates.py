"""conflicting_fields: a redelivery is not a conflict; a different event under the same id is."""

from __future__ import annotations

from audit_service.core.duplicates import conflicting_fields
from audit_service.core.records import CHANGE_BEFORE_INDEX, CONTENT_COLUMNS

from ..factories import content_of, make_event, stamp


def _with(content: tuple, column: str, value: object) -> tuple:
    index = CONTENT_COLUMNS.index(column)
    return (*content[:index], value, *content[index + 1 :])


def test_the_same_event_is_no_conflict() -> None:
    content = content_of(stamp(make_event()))
    assert conflicting_fields(content, content) == ()


def test_a_change_before_the_service_filled_is_no_conflict() -> None:
    incoming = content_of(stamp(make_event()))
    assert incoming[CHANGE_BEFORE_INDEX] is None
    stored = _with(incoming, "change_before", {"name": "previous state"})
    assert conflicting_fields(incoming, stored) == ()


def test_every_differing_field_is_named() -> None:
    incoming = content_of(stamp(make_event()))
    stored = _with(_with(incoming, "message", "something else"), "tenant", "globex")
    assert conflicting_fields(incoming, stored) == ("tenant", "message")


def test_a_change_before_of_the_producers_own_that_differs_is_a_conflict() -> None:
    incoming = _with(content_of(stamp(make_event())), "change_before", {"name": "mine"})
    stored = _with(incoming, "change_before", {"name": "theirs"})
    assert conflicting_fields(incoming, stored) == ("change_before",)
