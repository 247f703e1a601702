"""The resource stream rule (pure): revisions, change.before filled from the head's state, the state kept."""

from __future__ import annotations

from audit.v1 import event_pb2
from audit_service.core.records import CHANGE_AFTER_INDEX, CHANGE_BEFORE_INDEX, normalize_json
from audit_service.core.streams import StreamHead, advance, stream_key
from hypothesis import given
from hypothesis import strategies as st

from ..factories import content_of, make_event, stamp


def content(resource_id: str = "key-1", *, before: dict | None = None, after: dict | None = None, **fields):
    event = make_event(resource=event_pb2.Resource(type="api_key", id=resource_id), **fields)
    event.ClearField("change")
    if before is not None:
        event.change.before.update(before)
    if after is not None:
        event.change.after.update(after)
    return content_of(stamp(event))


def test_the_stream_is_tenant_resource_type_and_id() -> None:
    assert stream_key(content("key-9", tenant="globex")) == ("globex", "api_key", "key-9")
    no_resource = make_event()
    no_resource.ClearField("resource")
    assert stream_key(content_of(stamp(no_resource))) is None


def test_a_new_stream_starts_at_revision_one_with_the_event_as_sent() -> None:
    created = content(after={"name": "ci"})
    stored, head = advance(None, created, position=7)
    assert stored == created
    assert head == StreamHead(revision=1, last_position=7, state={"name": "ci"})


def test_only_after_gets_before_from_the_head() -> None:
    head = StreamHead(3, 10, {"name": "ci", "size": 1.0})
    stored, new_head = advance(head, content(after={"name": "ci", "size": 2}), position=12)
    assert stored[CHANGE_BEFORE_INDEX] == {"name": "ci", "size": 1.0}
    assert stored[CHANGE_AFTER_INDEX] == normalize_json({"name": "ci", "size": 2})
    assert new_head == StreamHead(4, 12, stored[CHANGE_AFTER_INDEX])


def test_a_before_sent_by_the_producer_is_kept() -> None:
    head = StreamHead(1, 1, {"name": "ci"})
    sent = content(before={"name": "producer's view"}, after={"name": "cd"})
    stored, new_head = advance(head, sent, position=2)
    assert stored == sent and new_head.state == {"name": "cd"}


def test_a_deletion_clears_the_state_and_the_next_creation_starts_from_none() -> None:
    deletion = content(before={"name": "ci"})
    stored, head = advance(StreamHead(2, 5, {"name": "ci"}), deletion, position=6)
    assert stored == deletion and head == StreamHead(3, 6, None)
    recreated, head = advance(head, content(after={"name": "new"}), position=8)
    assert recreated[CHANGE_BEFORE_INDEX] is None
    assert head == StreamHead(4, 8, {"name": "new"})


def test_an_event_without_a_change_keeps_the_state() -> None:
    read = content()
    stored, head = advance(StreamHead(2, 5, {"name": "ci"}), read, position=9)
    assert stored == read
    assert head == StreamHead(3, 9, {"name": "ci"})


@given(st.lists(st.sampled_from(["create", "update", "delete", "read"]), min_size=1, max_size=20))
def test_every_after_only_event_gets_the_previous_state_as_before(kinds: list[str]) -> None:
    head, state = None, None
    for position, kind in enumerate(kinds, start=1):
        after = {"name": f"v{position}", "seq": position}
        sent = {
            "create": content(after=after),
            "update": content(after=after),
            "delete": content(before=state or {"gone": True}),
            "read": content(),
        }[kind]
        stored, head = advance(head, sent, position)
        if kind in ("create", "update"):
            assert stored[CHANGE_BEFORE_INDEX] == state
            state = stored[CHANGE_AFTER_INDEX]
        elif kind == "delete":
            state = None
        assert head == StreamHead(position, position, state)
