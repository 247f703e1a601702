"""ChainVerifier: recomputes per-tenant hash chains from stored rows and names the first break."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from audit.v1 import event_pb2
from audit_service.core.chain import ChainBreak, ChainVerifier
from audit_service.core.records import GENESIS_HASH, LOG_COLUMNS, content_from_event, seal

Row = dict[str, Any]
RECORDED_AT = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)

# Global positions are shared by every tenant: each tenant's chain sees increasing, not consecutive, positions.
LAYOUT = [("acme", 1), ("globex", 2), ("acme", 3), ("globex", 4), ("acme", 5), ("acme", 6), ("globex", 7)]


def make_event(tenant: str, position: int) -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        event_id=f"0190b2a0-7c3e-7def-8abc-{position:012x}",
        tenant=tenant,
        action="deployment.create",
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(id=f"user-{position}", type=event_pb2.SUBJECT_TYPE_USER),
        resource=event_pb2.Resource(type="deployment", id=f"dep-{position}"),
        message=f"event {position}",
    )
    event.metadata.update({"position": position, "replicas": 2})
    event.occurred_at.FromSeconds(1_748_779_200 + position)
    return event


def build_log() -> tuple[list[Row], dict[str, tuple[int, bytes]]]:
    """Rows in (tenant, position) order and each tenant's chain head (last position, last hash)."""
    heads: dict[str, tuple[int, bytes]] = {}
    rows: list[Row] = []
    for tenant, position in LAYOUT:
        prev_hash = heads.get(tenant, (0, GENESIS_HASH))[1]
        recorded_at = RECORDED_AT + dt.timedelta(milliseconds=position)
        digest, row = seal(position, recorded_at, content_from_event(make_event(tenant, position)), prev_hash)
        rows.append(dict(zip(LOG_COLUMNS, row, strict=True)))
        heads[tenant] = (position, digest)
    rows.sort(key=lambda row: (row["tenant"], row["position"]))
    return rows, heads


def verify(rows: Iterable[Row], heads: dict[str, tuple[int, bytes]] | None = None) -> ChainBreak | None:
    """Feeds the rows like store.verify does, checking each tenant's head when its rows end."""
    verifier = ChainVerifier()
    current: str | None = None
    for row in rows:
        if heads is not None and current is not None and row["tenant"] != current:
            broken = verifier.check_head(current, *heads[current])
            if broken:
                return broken
        current = row["tenant"]
        broken = verifier.check(row)
        if broken:
            return broken
    if heads is not None and current is not None:
        return verifier.check_head(current, *heads[current])
    return None


def find(rows: list[Row], position: int) -> Row:
    return next(row for row in rows if row["position"] == position)


def test_intact_log_has_no_break() -> None:
    rows, heads = build_log()
    verifier = ChainVerifier()
    assert [verifier.check(row) for row in rows] == [None] * len(LAYOUT)
    assert verifier.checked == len(LAYOUT)
    assert verifier.check_head("globex", *heads["globex"]) is None
    assert verify(rows, heads) is None


def test_each_tenant_chain_starts_at_genesis_and_links() -> None:
    rows, _ = build_log()
    acme = [row for row in rows if row["tenant"] == "acme"]
    assert acme[0]["prev_hash"] == GENESIS_HASH
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(acme))
    assert find(rows, 2)["prev_hash"] == GENESIS_HASH  # globex's first event starts its own chain


ALTERATIONS: dict[str, Any] = {
    "message": lambda row: "rewritten",
    "actor_id": lambda row: "mallory",
    "actor_type": lambda row: event_pb2.SUBJECT_TYPE_SYSTEM,
    "outcome": lambda row: event_pb2.OUTCOME_FAILURE,
    "resource_id": lambda row: None,
    "request_route": lambda row: "/api/other",
    "metadata": lambda row: json.dumps({"position": 3, "replicas": 3}),
    "change_after": lambda row: json.dumps({"x": 1}),
    "occurred_at": lambda row: row["occurred_at"] + dt.timedelta(microseconds=1),
    "recorded_at": lambda row: row["recorded_at"] + dt.timedelta(seconds=1),
    "hash": lambda row: bytes(32),
}


@pytest.mark.parametrize("column", list(ALTERATIONS))
def test_altered_row_breaks_at_its_position(column: str) -> None:
    rows, heads = build_log()
    row = find(rows, 3)
    row[column] = ALTERATIONS[column](row)
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 3)
    assert "altered" in broken.reason


def test_altered_row_of_second_tenant_breaks_there() -> None:
    rows, heads = build_log()
    find(rows, 4)["message"] = "rewritten"
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("globex", 4)


def test_changes_that_keep_the_content_do_not_break() -> None:
    """What PostgreSQL does to a row (jsonb reprinting, NULL for "", time zones) is not an alteration."""
    rows, heads = build_log()
    row = find(rows, 3)
    row["metadata"] = '{"replicas": 2, "position": 3}'  # ints, other key order
    row["cluster_id"] = ""  # "" and NULL are the same content
    row["occurred_at"] = row["occurred_at"].astimezone(dt.timezone(dt.timedelta(hours=-5)))
    row["prev_hash"] = memoryview(row["prev_hash"])
    assert verify(rows, heads) is None


def test_dropped_middle_row_breaks_at_the_next_position() -> None:
    rows, heads = build_log()
    rows.remove(find(rows, 3))
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 5)
    assert "missing" in broken.reason


def test_dropped_first_row_breaks_at_the_next_position() -> None:
    rows, heads = build_log()
    rows.remove(find(rows, 1))
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 3)


def test_rows_fed_out_of_order_break() -> None:
    rows, heads = build_log()
    first, second = rows.index(find(rows, 3)), rows.index(find(rows, 5))
    rows[first], rows[second] = rows[second], rows[first]
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 5)


def test_swapped_positions_break() -> None:
    """Two events exchanging their positions (so the rows still come in position order) is a break."""
    rows, heads = build_log()
    third, fifth = find(rows, 3), find(rows, 5)
    third["position"], fifth["position"] = 5, 3
    rows.sort(key=lambda row: (row["tenant"], row["position"]))
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 3)


def test_swapped_rows_between_tenants_break() -> None:
    rows, heads = build_log()
    acme_row, globex_row = find(rows, 3), find(rows, 4)
    acme_row["tenant"], globex_row["tenant"] = "globex", "acme"
    rows.sort(key=lambda row: (row["tenant"], row["position"]))
    assert verify(rows, heads) is not None


def test_repeated_row_breaks() -> None:
    rows, heads = build_log()
    rows.insert(rows.index(find(rows, 3)) + 1, dict(find(rows, 3)))
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 3)
    assert "does not follow" in broken.reason


def test_head_with_wrong_last_position_breaks() -> None:
    rows, heads = build_log()
    verifier = ChainVerifier()
    for row in rows:
        if row["tenant"] == "acme":
            assert verifier.check(row) is None
    last_position, last_hash = heads["acme"]
    assert verifier.check_head("acme", last_position, last_hash) is None

    broken = verifier.check_head("acme", last_position + 1, last_hash)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 6)
    assert "tail was cut" in broken.reason


def test_head_with_wrong_hash_breaks() -> None:
    rows, _ = build_log()
    verifier = ChainVerifier()
    for row in rows[:4]:
        verifier.check(row)
    assert verifier.check_head("acme", 6, bytes(32)) is not None


def test_cut_tail_breaks_at_the_head() -> None:
    rows, heads = build_log()
    rows.remove(find(rows, 6))
    broken = verify(rows, heads)
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 5)


def test_head_of_a_tenant_whose_rows_were_not_fed_breaks() -> None:
    rows, heads = build_log()
    verifier = ChainVerifier()
    for row in rows:
        if row["tenant"] == "acme":
            verifier.check(row)
    broken = verifier.check_head("globex", *heads["globex"])
    assert broken is not None
    assert (broken.tenant, broken.position) == ("globex", 7)


def test_chain_break_describes_itself() -> None:
    text = str(ChainBreak("acme", 5, "hash does not match"))
    assert "'acme'" in text and "position 5" in text and "hash does not match" in text


def test_a_break_in_an_archive_record_names_the_archive() -> None:
    broken = ChainBreak(
        "", 41, "the record of archived partition audit_events_2025_01 in audit_archives: x", "audit_events_2025_01"
    )
    assert str(broken) == f"archive record at position 41: {broken.reason}"
    assert str(ChainBreak("", 13, "forged")) == "checkpoint at log position 13: forged"
