"""Resource streams: every event with a resource id belongs to the stream (tenant, resource type, resource id)
and gets the next revision of it. The stream's head keeps the resource's latest state, so an event whose
producer sent only change.after gets change.before filled from it. Pure: store/append.py reads and writes the
heads around it, and the rebuild (store/projections.py) applies the same rule in SQL.

The rule, per event of a stream:
  * revision = the head's revision + 1 (1 for a new stream);
  * change.before, when the event has change.after but no change.before, is the head's state (if it has one),
    masked: a state stored before masking existed, or under a narrower rule, is never copied in clear;
  * the state becomes change.after when the event has one, NULL when it has only change.before (a deletion),
    and stays as it was when it has neither (e.g. a read or a failed attempt).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .masking import DEFAULT_MASK, SecretMask
from .records import CHANGE_AFTER_INDEX, CHANGE_BEFORE_INDEX, CONTENT_COLUMNS, Content

_TENANT = CONTENT_COLUMNS.index("tenant")
_RESOURCE_TYPE = CONTENT_COLUMNS.index("resource_type")
_RESOURCE_ID = CONTENT_COLUMNS.index("resource_id")

StreamKey = tuple[str, str, str]
"""(tenant, resource type or "", resource id)."""


class StreamHead(NamedTuple):
    """A stream's head (a named tuple: the append makes one per event, in its serialized section)."""

    revision: int
    last_position: int
    state: dict[str, Any] | None


def stream_key(content: Content) -> StreamKey | None:
    """The stream an event belongs to, or None when it names no resource id."""
    resource_id = content[_RESOURCE_ID]
    if not resource_id:
        return None
    return content[_TENANT], content[_RESOURCE_TYPE], resource_id


def advance(
    head: StreamHead | None, content: Content, position: int, mask: SecretMask = DEFAULT_MASK
) -> tuple[Content, StreamHead]:
    """The event as stored (change.before filled when the rule says so) and the stream's head after it."""
    before = content[CHANGE_BEFORE_INDEX]
    after = content[CHANGE_AFTER_INDEX]
    state = head.state if head is not None else None
    if after is not None and before is None and state is not None:
        content = (*content[:CHANGE_BEFORE_INDEX], mask.mask(state), *content[CHANGE_BEFORE_INDEX + 1 :])
    if after is not None:
        state = after
    elif before is not None:
        state = None
    revision = head.revision + 1 if head is not None else 1
    return content, StreamHead(revision, position, state)
