"""Verification of the stored hash chains against the log."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..core.chain import ChainBreak, ChainVerifier
from ..core.records import columns_sql


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    """Events whose hashes were recomputed."""
    tenants: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


async def verify_log(conn: asyncpg.Connection, *, tenant: str | None = None) -> VerifyReport:
    """Recomputes every tenant's chain (or one tenant's) and compares it with the stored hashes and heads.
    Chains whose oldest events were archived by retention start from their anchors (audit_chain_anchors).

    Reads in a REPEATABLE READ snapshot, streaming rows with a server-side cursor.
    """
    tenant_filter = "WHERE tenant = $1" if tenant is not None else ""
    args = [tenant] if tenant is not None else []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        anchors = {
            row["tenant"]: (row["position"], bytes(row["hash"]))
            for row in await conn.fetch(
                f"SELECT tenant, position, hash FROM audit_chain_anchors {tenant_filter}", *args
            )
        }
        verifier = ChainVerifier(anchors)
        heads = {
            row["tenant"]: row
            for row in await conn.fetch(
                f"SELECT tenant, last_position, last_hash FROM audit_chain_heads {tenant_filter}", *args
            )
        }
        current: str | None = None
        seen: set[str] = set()
        first_break: ChainBreak | None = None
        cursor = conn.cursor(
            f"SELECT {columns_sql()} FROM audit_events {tenant_filter} ORDER BY tenant, position",
            *args,
            prefetch=2000,
        )
        async for row in cursor:
            if row["tenant"] != current:
                if current is not None:
                    first_break = _check_head(verifier, current, heads)
                    if first_break:
                        break
                current = row["tenant"]
                seen.add(current)
            first_break = verifier.check(row)
            if first_break:
                break
        if first_break is None and current is not None:
            first_break = _check_head(verifier, current, heads)
        if first_break is None:
            for missing in sorted(set(heads) - seen):
                head = heads[missing]
                if anchors.get(missing) == (head["last_position"], bytes(head["last_hash"])):
                    continue  # every event of the chain was archived by retention
                first_break = ChainBreak(missing, head["last_position"], "every event of the chain is gone")
                break
    return VerifyReport(checked=verifier.checked, tenants=len(seen), first_break=first_break)


def _check_head(verifier: ChainVerifier, tenant: str, heads: dict[str, asyncpg.Record]) -> ChainBreak | None:
    head = heads.get(tenant)
    if head is None:
        return ChainBreak(tenant, 0, "the tenant has events but no chain head")
    return verifier.check_head(tenant, head["last_position"], head["last_hash"])


async def verify_command(config, args) -> int:
    """`audit-service verify`: prints one line, exit status 0 when the chains check out, 1 when not."""
    conn = await asyncpg.connect(config.database.url)
    try:
        report = await verify_log(conn, tenant=args.tenant)
    finally:
        await conn.close()
    if report.ok:
        print(f"ok: {report.checked} events in {report.tenants} tenant chains verified")
        return 0
    print(f"FAILED after {report.checked} events: {report.first_break}")
    return 1
