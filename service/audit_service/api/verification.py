"""VerifyChain: recomputes a tenant's (or the whole log's) hash chains and checks the signed checkpoints."""

from __future__ import annotations

import asyncpg
from audit.v1 import audit_service_pb2 as pb
from opentelemetry import trace

from ..auth.tokens import Principal
from ..core.signing import Verifier
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..store.pool import acquire
from ..store.verify import verify_log
from .read_budget import ReadBudget

tracer = trace.get_tracer("audit_service.api.verification")

CheckpointKeys = tuple[Verifier, ...]
"""The public keys signed checkpoints are verified with (store/checkpoints.checkpoint_verifiers)."""


def _tenant_of(request: pb.VerifyChainRequest, caller: Principal | None) -> str | None:
    if caller is None:
        return request.tenant or None
    if not caller.admin:
        raise PermissionDeniedError("VerifyChain is for tenant admins; the caller's token is not an admin's")
    if request.tenant and request.tenant != caller.tenant:
        raise PermissionDeniedError(f"tenant: the caller's token is for tenant {caller.tenant!r}")
    return caller.tenant


async def verify_chain(
    pool: asyncpg.Pool,
    request: pb.VerifyChainRequest,
    caller: Principal | None,
    keys: CheckpointKeys | None,
    *,
    read_budget: ReadBudget,
) -> pb.VerifyChainResponse:
    """With authentication on, only a tenant admin may verify, and only its own tenant's chain. Each page of
    events it checks holds its bytes of the process's read budget, like every other read."""
    tenant = _tenant_of(request, caller)
    if request.start_position < 0:
        raise InvalidArgumentError("start_position", f"must not be negative, got {request.start_position}")
    if request.end_position < 0:
        raise InvalidArgumentError("end_position", f"must not be negative, got {request.end_position}")
    if request.end_position and request.start_position > request.end_position:
        raise InvalidArgumentError(
            "start_position", f"{request.start_position} is after end_position {request.end_position}"
        )
    with tracer.start_as_current_span("audit.verify", attributes={"audit.tenant": tenant or ""}) as span:
        async with acquire(pool) as conn:
            report = await verify_log(
                conn,
                tenant=tenant,
                from_position=request.start_position,
                to_position=request.end_position,
                verifiers=keys or (),
                reserve=read_budget.reserve,
            )
        span.set_attributes({"audit.verify.ok": report.ok, "audit.verify.events_checked": report.checked})
    response = pb.VerifyChainResponse(
        ok=report.ok,
        events_checked=report.checked,
        tenants=report.tenants,
        checkpoint_heads_checked=report.checkpoint_heads_checked,
    )
    if report.first_break is not None:
        broken = report.first_break
        response.first_break.CopyFrom(
            pb.ChainBreak(tenant=broken.tenant, position=broken.position, reason=broken.reason)
        )
    return response
