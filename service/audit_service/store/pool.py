"""Connections to PostgreSQL."""

from __future__ import annotations

import asyncpg


async def create_pool(url: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A connection pool; jsonb columns come back as text (parsed where needed)."""
    return await asyncpg.create_pool(
        url, min_size=1, max_size=max_size, command_timeout=60, server_settings={"application_name": "audit-service"}
    )
