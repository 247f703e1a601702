"""Verification of the per-tenant hash chains, fed stored rows in (tenant, position) order. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .records import GENESIS_HASH, chain_hash, row_canonical_bytes


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first event whose stored hashes do not match its content and predecessor."""

    tenant: str
    position: int
    reason: str

    def __str__(self) -> str:
        return f"tenant {self.tenant!r}: chain broken at position {self.position}: {self.reason}"


class ChainVerifier:
    """Recomputes each tenant's chain; rows must arrive grouped by tenant, in position order.

    A tenant with an anchor (the position and hash of its last event archived and dropped by retention) starts
    from it instead of the genesis hash.
    """

    def __init__(self, anchors: Mapping[str, tuple[int, bytes]] | None = None) -> None:
        self._anchors = anchors or {}
        self._tenant: str | None = None
        self._expected_prev = GENESIS_HASH
        self._last_position = 0
        self.checked = 0

    def check(self, row: Mapping[str, Any]) -> ChainBreak | None:
        """Checks one row; returns the break it shows, if any."""
        tenant = row["tenant"]
        position = row["position"]
        if tenant != self._tenant:
            self._tenant = tenant
            self._last_position, self._expected_prev = self._anchors.get(tenant, (0, GENESIS_HASH))
        self.checked += 1
        if position <= self._last_position:
            return ChainBreak(tenant, position, f"position does not follow {self._last_position}")
        prev_hash = bytes(row["prev_hash"])
        if prev_hash != self._expected_prev:
            return ChainBreak(
                tenant, position, "prev_hash is not the hash of the previous event (an event is missing or moved)"
            )
        digest = chain_hash(prev_hash, row_canonical_bytes(row))
        if digest != bytes(row["hash"]):
            return ChainBreak(tenant, position, "hash does not match the event's content (the event was altered)")
        self._expected_prev = digest
        self._last_position = position
        return None

    def check_head(self, tenant: str, last_position: int, last_hash: bytes) -> ChainBreak | None:
        """Checks the recorded chain head of the tenant whose rows were just fed."""
        if tenant != self._tenant:
            return ChainBreak(tenant, last_position, "the chain head names events that are not in the log")
        if last_position != self._last_position or bytes(last_hash) != self._expected_prev:
            return ChainBreak(
                tenant, self._last_position, "the chain head does not match the last event (the tail was cut)"
            )
        return None
