"""ListResourceHistory. Placeholder: being written."""

from __future__ import annotations

import asyncpg
from audit.v1 import audit_service_pb2 as pb

from ..auth.tokens import Principal


async def list_resource_history(
    pool: asyncpg.Pool, request: pb.ListResourceHistoryRequest, caller: Principal | None, *, max_response_bytes: int
) -> pb.ListResourceHistoryResponse:
    raise NotImplementedError
