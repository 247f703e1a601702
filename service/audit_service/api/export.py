"""ExportEvents. Placeholder: being written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from audit.v1 import audit_service_pb2 as pb

from ..core.filters import Expr


async def export_events(
    pool: asyncpg.Pool, request: pb.ExportEventsRequest, where: Expr, *, max_response_bytes: int
) -> AsyncIterator[pb.ExportEventsResponse]:
    raise NotImplementedError
    yield
