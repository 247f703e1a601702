"""DestinationService: tenant admins manage their tenant's destinations (each change recorded in the log without
its secret, see store/destinations.py) and their subscriptions (pause, resume, replay, status, attempts).
Failures are raised as domain errors and mapped to statuses by api/errors.py."""

from __future__ import annotations

import asyncpg
from audit.v1 import destinations_pb2 as pb
from audit.v1 import destinations_pb2_grpc as pb_grpc
from grpc import aio

from ..core.delivery_formats import new_webhook_secret
from ..core.destination_urls import AddressPolicy
from ..core.destinations import ALERT_KINDS, check_name, kind_of, validate_destination
from ..core.event_filter import timestamp_micros
from ..core.page_token import (
    PageToken,
    decode_name_token,
    decode_page_token,
    encode_name_token,
    encode_page_token,
    query_digest,
)
from ..core.records import micros_to_datetime
from ..delivery.policy import check_destination_address
from ..errors import InvalidArgumentError, NotFoundError
from ..store import delivery_state
from ..store import destinations as store
from ..store.append import LogAppender
from .alert_rules import actor_of, rule_tenant
from .auth import current_caller
from .paging import caller_identity, page_size_of

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DestinationService"].full_name
OTHER_CALLER = "belongs to a different tenant, destination or caller"
_NO_SEQ = 2**63 - 1


async def destination_status(pool: asyncpg.Pool, tenant: str, name: str) -> pb.DestinationStatus:
    """Where the tenant's destination's subscription stands."""
    destination = await store.get_destination(pool, tenant, name)
    state = await delivery_state.state_of(pool, tenant, name)
    if state is None:
        raise NotFoundError(f"destination {name!r} not found")
    head, age = await delivery_state.lag_of(
        pool, tenant, alerts=kind_of(destination) in ALERT_KINDS, checkpoint=state.checkpoint
    )
    status = pb.DestinationStatus(
        name=name,
        state=delivery_state.delivery_state(destination.paused, state),
        checkpoint=state.checkpoint,
        head=head,
        lag=max(0, head - state.checkpoint),
        lag_seconds=age,
        consecutive_failures=state.consecutive_failures,
        last_error=state.last_error,
    )
    if state.last_success_at is not None:
        status.last_success_time.FromDatetime(state.last_success_at)
    if state.last_attempt_at is not None:
        status.last_attempt_time.FromDatetime(state.last_attempt_at)
    return status


class DestinationServicer(pb_grpc.DestinationServiceServicer):
    def __init__(
        self, pool: asyncpg.Pool, appender: LogAppender | None = None, policy: AddressPolicy | None = None
    ) -> None:
        """
        Args:
            pool: connections of the service role.
            appender: appends the change events (one per process, shared).
            policy: which addresses destinations may point at (delivery/policy.address_policy).
        """
        self._pool = pool
        self._appender = appender or LogAppender()
        self._policy = policy or AddressPolicy()

    async def CreateDestination(
        self, request: pb.CreateDestinationRequest, context: aio.ServicerContext
    ) -> pb.CreateDestinationResponse:
        caller = current_caller()
        destination = pb.Destination()
        destination.CopyFrom(request.destination)
        destination.tenant = rule_tenant(caller, destination.tenant, "destination.tenant")
        generated = "" if destination.secret else new_webhook_secret()
        validate_destination(destination)
        await check_destination_address(destination, self._policy)
        async with self._pool.acquire() as conn:
            change = await store.create_destination(conn, self._appender, destination, actor_of(caller), generated)
        used = generated if change.destination.has_secret and not request.destination.secret else ""
        return pb.CreateDestinationResponse(destination=change.destination, generated_secret=used)

    async def GetDestination(
        self, request: pb.GetDestinationRequest, context: aio.ServicerContext
    ) -> pb.GetDestinationResponse:
        tenant = rule_tenant(current_caller(), request.tenant, "tenant")
        return pb.GetDestinationResponse(destination=await store.get_destination(self._pool, tenant, request.name))

    async def ListDestinations(
        self, request: pb.ListDestinationsRequest, context: aio.ServicerContext
    ) -> pb.ListDestinationsResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        limit = page_size_of(request)
        digest = query_digest(b"destinations", tenant.encode(), caller_identity(caller))
        after = decode_name_token(request.page_token, digest, mismatch=OTHER_CALLER) if request.page_token else ""
        found = await store.list_destinations(self._pool, tenant, after, limit + 1)
        next_token = encode_name_token(found[limit - 1].name, digest) if len(found) > limit else ""
        return pb.ListDestinationsResponse(destinations=found[:limit], next_page_token=next_token)

    async def UpdateDestination(
        self, request: pb.UpdateDestinationRequest, context: aio.ServicerContext
    ) -> pb.UpdateDestinationResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.destination.tenant, "destination.tenant")
        paths = list(request.update_mask.paths)
        async with self._pool.acquire() as conn:
            change = await store.update_destination(
                conn,
                self._appender,
                tenant,
                request.destination,
                paths,
                actor_of(caller),
                check=lambda updated: check_destination_address(updated, self._policy),
            )
        return pb.UpdateDestinationResponse(destination=change.destination)

    async def DeleteDestination(
        self, request: pb.DeleteDestinationRequest, context: aio.ServicerContext
    ) -> pb.DeleteDestinationResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        async with self._pool.acquire() as conn:
            change = await store.delete_destination(
                conn, self._appender, tenant, request.name, request.revision, actor_of(caller)
            )
        return pb.DeleteDestinationResponse(destination=change.destination)

    async def PauseDestination(
        self, request: pb.PauseDestinationRequest, context: aio.ServicerContext
    ) -> pb.PauseDestinationResponse:
        return pb.PauseDestinationResponse(destination=await self._set_paused(request, paused=True))

    async def ResumeDestination(
        self, request: pb.ResumeDestinationRequest, context: aio.ServicerContext
    ) -> pb.ResumeDestinationResponse:
        return pb.ResumeDestinationResponse(destination=await self._set_paused(request, paused=False))

    async def _set_paused(
        self, request: pb.PauseDestinationRequest | pb.ResumeDestinationRequest, *, paused: bool
    ) -> pb.Destination:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        async with self._pool.acquire() as conn:
            change = await store.set_paused(conn, self._appender, tenant, request.name, paused, actor_of(caller))
        return change.destination

    async def ReplayDestination(
        self, request: pb.ReplayDestinationRequest, context: aio.ServicerContext
    ) -> pb.ReplayDestinationResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        start = request.WhichOneof("start")
        if start is None:
            raise InvalidArgumentError("after_position", "one of after_position or since is required")
        since = None
        if start == "since":
            since = micros_to_datetime(timestamp_micros(request.since, "since"))
        async with self._pool.acquire() as conn:
            await store.replay_destination(
                conn,
                self._appender,
                tenant,
                request.name,
                after_position=request.after_position if start == "after_position" else None,
                since=since,
                actor=actor_of(caller),
            )
        return pb.ReplayDestinationResponse(status=await destination_status(self._pool, tenant, request.name))

    async def GetDestinationStatus(
        self, request: pb.GetDestinationStatusRequest, context: aio.ServicerContext
    ) -> pb.GetDestinationStatusResponse:
        tenant = rule_tenant(current_caller(), request.tenant, "tenant")
        name = check_name(request.name, "name")
        return pb.GetDestinationStatusResponse(status=await destination_status(self._pool, tenant, name))

    async def ListDeliveryAttempts(
        self, request: pb.ListDeliveryAttemptsRequest, context: aio.ServicerContext
    ) -> pb.ListDeliveryAttemptsResponse:
        caller = current_caller()
        tenant = rule_tenant(caller, request.tenant, "tenant")
        name = check_name(request.name, "name")
        await store.get_destination(self._pool, tenant, name)  # NOT_FOUND for another tenant's
        limit = page_size_of(request)
        digest = query_digest(b"delivery_attempts", tenant.encode(), name.encode(), caller_identity(caller))
        before = (
            decode_page_token(request.page_token, digest, mismatch=OTHER_CALLER).after_position
            if request.page_token
            else _NO_SEQ
        )
        rows = await delivery_state.list_attempts(self._pool, tenant, name, before, limit + 1)
        attempts = []
        for row in rows[:limit]:
            attempt = pb.DeliveryAttempt(
                delivery_id=row["delivery_id"],
                attempt=row["attempt"],
                outcome=row["outcome"],
                http_status=row["http_status"],
                error=row["error"],
                duration_ms=row["duration_ms"],
                items=row["items"],
            )
            attempt.time.FromDatetime(row["attempted_at"])
            attempts.append(attempt)
        next_token = encode_page_token(PageToken(rows[limit - 1]["seq"], digest)) if len(rows) > limit else ""
        return pb.ListDeliveryAttemptsResponse(attempts=attempts, next_page_token=next_token)
