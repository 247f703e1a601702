"""Verification of the per-tenant hash chains, fed stored rows in (tenant, position) order. Pure.

Besides each event's own hashes, the recomputed chains are compared with the chain heads of signed checkpoints
(core/checkpoints.py): a history rewritten with every later hash recomputed still links up, but no longer passes
through the hash a checkpoint signed before the rewrite.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .checkpoints import CheckpointStatement
from .records import GENESIS_HASH, chain_hash, row_canonical_bytes


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first event whose stored hashes do not match its content and predecessor (or a signed checkpoint).

    A break in no tenant's chain (a checkpoint whose signature does not verify) has tenant "" and the
    checkpoint's log position; one in the record of an archived partition (audit_archives) names it in `archive`
    (and in the reason, which is what the API returns); one in the log's positions (a position held by two
    events, or by none) is marked `positions`, with the tenant only when one tenant's events were verified.
    """

    tenant: str
    position: int
    reason: str
    archive: str = ""
    """The archived partition whose record in audit_archives is at fault."""
    positions: bool = False
    """The log's positions do not run one event per position from the first to the head, at `position`."""

    def __str__(self) -> str:
        if self.archive:
            return f"archive record at position {self.position}: {self.reason}"
        if self.positions:
            of_tenant = f"tenant {self.tenant!r}: " if self.tenant else ""
            return f"{of_tenant}log positions broken at position {self.position}: {self.reason}"
        if not self.tenant:
            return f"checkpoint at log position {self.position}: {self.reason}"
        return f"tenant {self.tenant!r}: chain broken at position {self.position}: {self.reason}"


class CheckpointHeads:
    """The chain heads that signed checkpoints name, per tenant and position: the hashes the recomputed chains
    must pass through. Memory grows with the distinct heads, not with the events."""

    def __init__(self) -> None:
        # tenant -> position -> hash -> [log position of the first checkpoint naming it, checkpoints naming it]
        self._heads: dict[str, dict[int, dict[bytes, list[int]]]] = {}

    def add(
        self,
        statement: CheckpointStatement,
        *,
        tenant: str | None = None,
        from_position: int = 0,
        to_position: int = 0,
    ) -> None:
        """Adds a (verified) checkpoint's heads of `tenant` (every tenant: None) within the position range."""
        for head_tenant, head in statement.heads.items():
            if tenant is not None and head_tenant != tenant:
                continue
            if head.position < from_position or (to_position and head.position > to_position):
                continue
            by_hash = self._heads.setdefault(head_tenant, {}).setdefault(head.position, {})
            seen = by_hash.setdefault(head.hash, [statement.log_position, 0])
            seen[0] = min(seen[0], statement.log_position)
            seen[1] += 1

    def tenants(self) -> list[str]:
        return sorted(self._heads)

    def positions(self, tenant: str) -> list[int]:
        """The tenant's positions named by checkpoints, ascending."""
        return sorted(self._heads.get(tenant, ()))

    def at(self, tenant: str, position: int) -> Mapping[bytes, list[int]]:
        """hash -> [first log position, count] of the checkpoints naming the tenant's head at `position`."""
        return self._heads.get(tenant, {}).get(position, {})


def _rewritten(position: int, log_position: int) -> str:
    return (
        f"the hash differs from the chain head signed in the checkpoint at log position {log_position}: the "
        f"history up to position {position} was rewritten after that checkpoint was signed"
    )


class ChainVerifier:
    """Recomputes each tenant's chain; rows must arrive grouped by tenant, in position order.

    A tenant with a start (the position and hash of its last event archived and dropped by retention, or of
    its last event before a verified range) starts from it instead of the genesis hash. With checkpoint heads,
    every head within the verified positions must be an event whose recomputed hash is the signed one.
    """

    def __init__(
        self,
        anchors: Mapping[str, tuple[int, bytes]] | None = None,
        checkpoints: CheckpointHeads | None = None,
    ) -> None:
        self._anchors = anchors or {}
        self._checkpoints = checkpoints or CheckpointHeads()
        self._tenant: str | None = None
        self._expected_prev = GENESIS_HASH
        self._last_position = 0
        self._pending: list[int] = []
        self._next_pending = 0
        self.checked = 0
        """Events whose hashes were recomputed."""
        self.checkpoint_heads_checked = 0
        """Checkpoint heads compared with the recomputed chains."""

    def check(self, row: Mapping[str, Any]) -> ChainBreak | None:
        """Checks one stored row; returns the break it shows, if any."""
        tenant, position, prev_hash = row["tenant"], row["position"], bytes(row["prev_hash"])
        if tenant != self._tenant:
            broken = self._start(tenant)
            if broken:
                return broken
        self.checked += 1
        if position <= self._last_position:
            return ChainBreak(tenant, position, f"position does not follow {self._last_position}")
        if prev_hash != self._expected_prev:
            return ChainBreak(
                tenant,
                position,
                f"prev_hash is not the hash of the tenant's previous event at position {self._last_position} "
                "(an event before it is missing or moved)",
            )
        digest = chain_hash(prev_hash, row_canonical_bytes(row))
        if digest != bytes(row["hash"]):
            return ChainBreak(tenant, position, "hash does not match the event's content (the event was altered)")
        self._expected_prev = digest
        self._last_position = position
        return self._check_checkpoints(tenant, position, digest)

    def finish_tenant(self) -> ChainBreak | None:
        """After the current tenant's last row: a checkpoint head beyond it names an event that is gone."""
        if self._tenant is None or self._next_pending >= len(self._pending):
            return None
        missing = self._pending[self._next_pending]
        return self._missing(self._tenant, missing, f"the tenant's chain ends at position {self._last_position}")

    def check_head(self, tenant: str, last_position: int, last_hash: bytes) -> ChainBreak | None:
        """Checks the recorded chain head of the tenant whose rows were just fed."""
        if tenant != self._tenant:
            return ChainBreak(tenant, last_position, "the chain head names events that are not in the log")
        if last_position != self._last_position or bytes(last_hash) != self._expected_prev:
            return ChainBreak(
                tenant, self._last_position, "the chain head does not match the last event (the tail was cut)"
            )
        return None

    def check_unseen(self, seen: Iterable[str]) -> ChainBreak | None:
        """For tenants that had no rows at all: a checkpoint head past their start names events that are gone."""
        seen = set(seen)
        for tenant in self._checkpoints.tenants():
            if tenant in seen:
                continue
            self._tenant = None
            broken = self._start(tenant) or self.finish_tenant()
            if broken:
                return broken
        return None

    def _start(self, tenant: str) -> ChainBreak | None:
        self._tenant = tenant
        self._last_position, self._expected_prev = self._anchors.get(tenant, (0, GENESIS_HASH))
        self._pending = self._checkpoints.positions(tenant)
        # Heads before the start were archived (or lie before the range): not in the log to compare with.
        self._next_pending = bisect.bisect_left(self._pending, self._last_position)
        if self._next_pending < len(self._pending) and self._pending[self._next_pending] == self._last_position:
            return self._check_checkpoints(tenant, self._last_position, self._expected_prev)
        return None

    def _check_checkpoints(self, tenant: str, position: int, digest: bytes) -> ChainBreak | None:
        pending = self._pending
        if self._next_pending >= len(pending):
            return None
        next_head = pending[self._next_pending]
        if next_head < position:
            return self._missing(tenant, next_head, f"the chain goes on at position {position}")
        if next_head > position:
            return None
        self._next_pending += 1
        for signed_hash, (log_position, count) in sorted(
            self._checkpoints.at(tenant, position).items(), key=lambda item: item[1][0]
        ):
            self.checkpoint_heads_checked += count
            if signed_hash != digest:
                return ChainBreak(tenant, position, _rewritten(position, log_position))
        return None

    def _missing(self, tenant: str, position: int, where: str) -> ChainBreak:
        log_position = min(seen[0] for seen in self._checkpoints.at(tenant, position).values())
        return ChainBreak(
            tenant,
            position,
            f"the checkpoint at log position {log_position} names the event at position {position} as the tenant's "
            f"chain head, but there is no such event ({where}): the history was rewritten after that checkpoint "
            "was signed",
        )
