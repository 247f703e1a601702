"""VerifyChain. Placeholder: being written."""

from __future__ import annotations

from typing import Any

import asyncpg
from audit.v1 import audit_service_pb2 as pb

from ..auth.tokens import Principal

CheckpointKeys = Any


async def verify_chain(
    pool: asyncpg.Pool, request: pb.VerifyChainRequest, caller: Principal | None, keys: CheckpointKeys | None
) -> pb.VerifyChainResponse:
    raise NotImplementedError
