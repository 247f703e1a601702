"""ListResourceHistory, and the diff of a stored event's states (also GetEvent's): one resource stream's events
in revision order, each with the fields it changed and a YAML diff, scoped like ListEvents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from audit.v1 import audit_service_pb2 as pb
from google.protobuf import json_format, struct_pb2

from ..auth.tokens import Principal
from ..core.diff import ChangeKind, changed_fields, yaml_diff
from ..core.event_filter import checked_text
from ..core.page_token import PageToken, decode_page_token, encode_page_token, query_digest
from ..core.stored_event import row_to_event
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..store import history
from .paging import caller_identity, page_size_of
from .read_budget import ReadBudget

_PAGE_RESERVE_BYTES = 1024
"""Room left in a page for next_page_token and framing."""
_REVISION_FRAMING_BYTES = 6
"""Field tag and length prefix of one revision in a page."""
_REVISION_SIZE_FACTOR = 3
"""About how many times a revision's message holds its event's states."""

_KINDS = {
    ChangeKind.ADDED: pb.CHANGE_KIND_ADDED,
    ChangeKind.REMOVED: pb.CHANGE_KIND_REMOVED,
    ChangeKind.MODIFIED: pb.CHANGE_KIND_MODIFIED,
}


def _state(text: str | None) -> dict[str, Any] | None:
    return None if text is None else orjson.loads(text)


def _value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def fill_diff(target: pb.GetEventResponse | pb.ResourceRevision, row: Mapping[str, Any]) -> None:
    """Sets target.changes and target.yaml_diff from the stored event's change.before and change.after."""
    before, after = _state(row["change_before"]), _state(row["change_after"])
    for change in changed_fields(before, after):
        message = target.changes.add(path=change.path, kind=_KINDS[change.kind])
        if change.kind is not ChangeKind.ADDED:
            message.old_value.CopyFrom(_value(change.old))
        if change.kind is not ChangeKind.REMOVED:
            message.new_value.CopyFrom(_value(change.new))
    target.yaml_diff = yaml_diff(before, after)


def _tenant_of(request: pb.ListResourceHistoryRequest, caller: Principal | None) -> str:
    if caller is None:
        if not request.tenant:
            raise InvalidArgumentError("tenant", "is required")
        return checked_text(request.tenant, "tenant")
    if request.tenant and request.tenant != caller.tenant:
        raise PermissionDeniedError(f"tenant: the caller's token is for tenant {caller.tenant!r}")
    return caller.tenant


async def list_resource_history(
    pool: asyncpg.Pool,
    request: pb.ListResourceHistoryRequest,
    caller: Principal | None,
    *,
    max_response_bytes: int,
    read_budget: ReadBudget,
) -> pb.ListResourceHistoryResponse:
    """One page of a resource stream's events the caller may see, each with what it changed.

    Raises:
        InvalidArgumentError: no resource_id (or no tenant with authentication off), a bad page size, order or
            page token.
        PermissionDeniedError: another tenant than the caller's.
    """
    if request.order not in pb.Order.values():
        raise InvalidArgumentError("order", f"unknown value {request.order}")
    tenant = _tenant_of(request, caller)
    if not request.resource_id:
        raise InvalidArgumentError("resource_id", "is required")
    resource_id = checked_text(request.resource_id, "resource_id")
    resource_type = checked_text(request.resource_type, "resource_type")
    limit = page_size_of(request)
    newest_first = request.order == pb.ORDER_NEWEST_FIRST
    # The token is bound to the stream, the order and the caller: reusing it elsewhere is refused.
    digest = query_digest(
        tenant.encode(), resource_type.encode(), resource_id.encode(), bytes([newest_first]), caller_identity(caller)
    )
    after = decode_page_token(request.page_token, digest).after_position if request.page_token else None
    # Each revision carries its states about three times (the event's before and after, the changed values and
    # the YAML diff), so a page reads at most a third of the response limit of events.
    page_bytes = max_response_bytes // _REVISION_SIZE_FACTOR
    query = history.StreamPageQuery(
        tenant=tenant,
        resource_type=resource_type,
        resource_id=resource_id,
        actor_id=None if caller is None or caller.admin else caller.subject,
        newest_first=newest_first,
        after_position=after,
        limit=limit + 1,
        max_bytes=page_bytes,
    )
    response = pb.ListResourceHistoryResponse()
    async with read_budget.reserve(page_bytes) as reservation:
        page = await history.stream_page(pool, query)
        reservation.keep(page.size)
        # A page also ends before it outgrows the response limit. One revision always fits.
        room = max_response_bytes - _PAGE_RESERVE_BYTES
        last_position = None
        for row in page.rows[:limit]:
            revision = pb.ResourceRevision(event=row_to_event(row))
            fill_diff(revision, row)
            room -= revision.ByteSize() + _REVISION_FRAMING_BYTES
            if room < 0 and response.revisions:
                break
            response.revisions.append(revision)
            last_position = row["position"]
    if page.found > len(response.revisions):
        response.next_page_token = encode_page_token(PageToken(last_position, digest))
    return response
