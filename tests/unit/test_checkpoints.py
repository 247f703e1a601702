"""Signed checkpoints: the statement's canonical bytes, signatures, the JSON-lines form, and chains checked
against the heads they sign (core/checkpoints.py, core/chain.py). No server."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_service.config import CheckpointConfig
from audit_service.core.chain import ChainVerifier, CheckpointHeads
from audit_service.core.checkpoints import (
    CHECKPOINT_VERSION,
    ChainHead,
    Checkpoint,
    checkpoint_statement,
    parse_json_line,
    parse_json_lines,
    parse_statement,
    sign_checkpoint,
    signature_problem,
    to_json_line,
)
from audit_service.core.records import LOG_COLUMNS, content_from_event, seal
from audit_service.core.signing import Signer, load_signer
from audit_service.errors import ConfigError
from audit_service.store.checkpoints import checkpoint_verifiers
from cryptography.hazmat.primitives import serialization

from .test_chain import RECORDED_AT, build_log, find, make_event

CREATED_AT = dt.datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    from audit_service.core.signing import generate_private_key_pem

    path = tmp_path_factory.mktemp("keys") / "checkpoint.pem"
    path.write_bytes(generate_private_key_pem())
    return load_signer(str(path))


@pytest.fixture(scope="module")
def other_signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    from audit_service.core.signing import generate_private_key_pem

    path = tmp_path_factory.mktemp("keys") / "other.pem"
    path.write_bytes(generate_private_key_pem())
    return load_signer(str(path))


def heads_of(log_heads: dict[str, tuple[int, bytes]]) -> dict[str, ChainHead]:
    return {tenant: ChainHead(position, digest) for tenant, (position, digest) in log_heads.items()}


def test_statement_is_canonical_json_with_sorted_keys() -> None:
    heads = {"globex": ChainHead(7, bytes(range(32))), "acme": ChainHead(6, b"\xff" * 32)}
    statement = checkpoint_statement(7, CREATED_AT, heads)
    assert statement == (
        b'{"created_at":"2025-06-01T12:00:00.123456+00:00","heads":{"acme":{"hash":"' + b"ff" * 32 + b'","position":6},'
        b'"globex":{"hash":"' + bytes(range(32)).hex().encode() + b'","position":7}},"log_position":7,'
        b'"version":"audit.checkpoint/1"}'
    )
    # The same heads in another order, or the time in another zone, sign the same bytes.
    reordered = checkpoint_statement(
        7, CREATED_AT.astimezone(dt.timezone(dt.timedelta(hours=2))), dict(reversed(heads.items()))
    )
    assert reordered == statement


def test_statement_round_trips() -> None:
    heads = {"acme": ChainHead(6, b"\x01" * 32)}
    parsed = parse_statement(checkpoint_statement(9, CREATED_AT, heads))
    assert (parsed.log_position, parsed.created_at, dict(parsed.heads)) == (9, CREATED_AT, heads)
    assert parse_statement(checkpoint_statement(0, CREATED_AT, {})).heads == {}


@pytest.mark.parametrize(
    "document",
    [
        {"version": "audit.checkpoint/2", "log_position": 1, "created_at": CREATED_AT.isoformat(), "heads": {}},
        {"version": CHECKPOINT_VERSION, "log_position": -1, "created_at": CREATED_AT.isoformat(), "heads": {}},
        {"version": CHECKPOINT_VERSION, "log_position": 1, "created_at": "yesterday", "heads": {}},
        {"version": CHECKPOINT_VERSION, "log_position": 1, "created_at": CREATED_AT.isoformat(), "heads": []},
        {
            "version": CHECKPOINT_VERSION,
            "log_position": 1,
            "created_at": CREATED_AT.isoformat(),
            "heads": {"acme": {"position": 1, "hash": "abcd"}},
        },
        [1, 2],
    ],
)
def test_malformed_statements_are_refused(document: Any) -> None:
    with pytest.raises(ValueError, match="not a checkpoint statement"):
        parse_statement(orjson.dumps(document))


def test_signature_verifies_with_the_signing_key_only(signer: Signer, other_signer: Signer) -> None:
    checkpoint = sign_checkpoint(signer, 7, CREATED_AT, {"acme": ChainHead(6, b"\x02" * 32)})
    assert checkpoint.key_id == signer.key_id and len(checkpoint.key_id) == 16
    assert signature_problem(checkpoint, [signer.verifier]) is None
    assert signature_problem(checkpoint, [other_signer.verifier, signer.verifier]) is None  # after a rotation

    unknown = signature_problem(checkpoint, [other_signer.verifier])
    assert unknown is not None and signer.key_id in unknown and "not a configured key" in unknown


def public_key_file(path: Path, signer: Signer) -> str:
    path.write_bytes(
        signer.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def test_verifiers_are_every_configured_key_and_the_signing_keys_public_half(
    tmp_path: Path, signer: Signer, other_signer: Signer
) -> None:
    # After a rotation: `other_signer` signed the older checkpoints, `signer` signs from now on.
    retired = public_key_file(tmp_path / "retired.pub.pem", other_signer)
    current = public_key_file(tmp_path / "current.pub.pem", signer)
    signing_key_file = tmp_path / "signing.pem"
    signing_key_file.write_bytes(
        signer.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    def key_ids(**fields: Any) -> list[str]:
        return [verifier.key_id for verifier in checkpoint_verifiers(CheckpointConfig(**fields))]

    assert key_ids(verify_key_files=(retired,), signing_key_file=str(signing_key_file)) == [
        other_signer.key_id,
        signer.key_id,
    ]
    # The signing key's public half configured again counts once.
    assert key_ids(verify_key_files=(retired, current), signing_key_file=str(signing_key_file)) == [
        other_signer.key_id,
        signer.key_id,
    ]
    assert key_ids(verify_key_files=(retired, current)) == [other_signer.key_id, signer.key_id]
    assert key_ids(signing_key_file=str(signing_key_file)) == [signer.key_id]
    assert key_ids() == []

    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("nope")
    with pytest.raises(ConfigError) as caught:
        checkpoint_verifiers(CheckpointConfig(verify_key_files=(retired, str(not_a_key))))
    assert caught.value.setting == "AUDIT_CHECKPOINT_VERIFY_KEY_FILE"
    assert "not-a-key.pem" in str(caught.value) and "\n" not in str(caught.value)


def test_an_altered_statement_or_signature_does_not_verify(signer: Signer) -> None:
    checkpoint = sign_checkpoint(signer, 7, CREATED_AT, {"acme": ChainHead(6, b"\x02" * 32)})
    forged_statement = checkpoint_statement(7, CREATED_AT, {"acme": ChainHead(6, b"\x03" * 32)})
    forged = Checkpoint(forged_statement, checkpoint.key_id, checkpoint.signature)
    assert "does not verify" in signature_problem(forged, [signer.verifier])
    flipped = bytes([checkpoint.signature[0] ^ 1]) + checkpoint.signature[1:]
    assert "does not verify" in signature_problem(
        Checkpoint(checkpoint.statement, checkpoint.key_id, flipped), [signer.verifier]
    )


def test_json_line_round_trips_the_signed_bytes(signer: Signer) -> None:
    checkpoint = sign_checkpoint(signer, 7, CREATED_AT, {"acme": ChainHead(6, b"\x02" * 32)})
    line = to_json_line(checkpoint)
    assert "\n" not in line
    document = orjson.loads(line)
    assert set(document) == {"statement", "key_id", "signature"}
    assert base64.b64decode(document["statement"]) == checkpoint.statement
    assert bytes.fromhex(document["signature"]) == checkpoint.signature
    assert parse_json_line(line) == checkpoint
    assert parse_json_lines(f"{line}\n\n{line}\n") == [checkpoint, checkpoint]


@pytest.mark.parametrize("line", ["", "{}", "[]", '{"statement": "!!", "key_id": "k", "signature": "00"}', "not json"])
def test_malformed_json_lines_are_refused(line: str) -> None:
    with pytest.raises(ValueError, match="not a signed checkpoint line"):
        parse_json_line(line)


def test_a_bad_line_is_named_by_number(signer: Signer) -> None:
    good = to_json_line(sign_checkpoint(signer, 1, CREATED_AT, {}))
    with pytest.raises(ValueError, match="line 2"):
        parse_json_lines(f"{good}\nnot json\n")


# Chains checked against signed heads. build_log's layout: acme at 1, 3, 5, 6; globex at 2, 4, 7.


def checkpoint_heads(*statements: tuple[int, dict[str, tuple[int, bytes]]]) -> CheckpointHeads:
    heads = CheckpointHeads()
    for log_position, tenant_heads in statements:
        heads.add(parse_statement(checkpoint_statement(log_position, CREATED_AT, heads_of(tenant_heads))))
    return heads


def run(rows: list[dict[str, Any]], verifier: ChainVerifier):
    current = None
    for row in rows:
        if current is not None and row["tenant"] != current:
            broken = verifier.finish_tenant()
            if broken:
                return broken
        current = row["tenant"]
        broken = verifier.check(row)
        if broken:
            return broken
    return verifier.finish_tenant() or verifier.check_unseen({row["tenant"] for row in rows})


def hashes_at(rows: list[dict[str, Any]], *positions: int) -> dict[int, bytes]:
    return {position: find(rows, position)["hash"] for position in positions}


def test_an_intact_chain_passes_through_every_signed_head() -> None:
    rows, _ = build_log()
    at = hashes_at(rows, 3, 4, 6, 7)
    verifier = ChainVerifier(
        checkpoints=checkpoint_heads(
            (4, {"acme": (3, at[3]), "globex": (4, at[4])}), (7, {"acme": (6, at[6]), "globex": (7, at[7])})
        )
    )
    assert run(rows, verifier) is None
    assert verifier.checkpoint_heads_checked == 4


def rewrite_acme_from(rows: list[dict[str, Any]], position: int) -> None:
    """Alters acme's event at `position` and recomputes every later hash of acme's chain (an attacker's rewrite)."""
    acme = [row for row in rows if row["tenant"] == "acme"]
    prev_hash = next((row["hash"] for row in reversed(acme) if row["position"] < position), bytes(32))
    for row in acme:
        if row["position"] < position:
            continue
        event = make_event("acme", row["position"])
        if row["position"] == position:
            event.message = "nothing happened"
        recorded_at = RECORDED_AT + dt.timedelta(milliseconds=row["position"])
        digest, sealed = seal(row["position"], recorded_at, content_from_event(event), prev_hash)
        row.update(dict(zip(LOG_COLUMNS, sealed, strict=True)))
        prev_hash = digest


def test_a_rewritten_history_that_links_up_fails_at_the_signed_head() -> None:
    rows, _ = build_log()
    at = hashes_at(rows, 5, 4)
    heads = checkpoint_heads((5, {"acme": (5, at[5]), "globex": (4, at[4])}))
    rewrite_acme_from(rows, 3)
    assert run(rows, ChainVerifier()) is None  # the chain alone still checks out

    broken = run(rows, ChainVerifier(checkpoints=heads))
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 5)
    assert "rewritten after" in broken.reason and "log position 5" in broken.reason


def test_a_signed_head_with_no_event_is_a_break() -> None:
    rows, _ = build_log()
    heads = checkpoint_heads((6, {"acme": (6, find(rows, 6)["hash"])}))
    rows.remove(find(rows, 6))  # the tail cut, with the head moved back by the attacker
    broken = run(rows, ChainVerifier(checkpoints=heads))
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 6)
    assert "no such event" in broken.reason


def test_a_signed_head_skipped_by_a_renumbered_chain_is_a_break() -> None:
    rows, _ = build_log()
    heads = checkpoint_heads((3, {"acme": (3, find(rows, 3)["hash"])}))
    rows.remove(find(rows, 3))
    rewrite_acme_from(rows, 5)  # acme's chain goes 1 -> 5 -> 6, all hashes recomputed
    broken = run(rows, ChainVerifier(checkpoints=heads))
    assert broken is not None
    assert (broken.tenant, broken.position) == ("acme", 3)
    assert "goes on at position 5" in broken.reason


def test_a_tenant_gone_entirely_breaks_at_its_signed_head() -> None:
    rows, _ = build_log()
    heads = checkpoint_heads((7, {"globex": (7, find(rows, 7)["hash"])}))
    rows = [row for row in rows if row["tenant"] != "globex"]
    broken = run(rows, ChainVerifier(checkpoints=heads))
    assert broken is not None
    assert (broken.tenant, broken.position) == ("globex", 7)


def test_heads_before_an_anchor_were_archived_and_are_not_compared() -> None:
    rows, _ = build_log()
    archived = [row for row in rows if row["tenant"] == "acme" and row["position"] <= 3]
    kept = [row for row in rows if row not in archived]
    heads = checkpoint_heads((1, {"acme": (1, find(rows, 1)["hash"])}), (3, {"acme": (3, find(rows, 3)["hash"])}))
    verifier = ChainVerifier(anchors={"acme": (3, find(rows, 3)["hash"])}, checkpoints=heads)
    assert run(kept, verifier) is None
    assert verifier.checkpoint_heads_checked == 1  # the head at the anchor itself

    wrong_anchor = ChainVerifier(anchors={"acme": (3, bytes(32))}, checkpoints=heads)
    broken = run(kept, wrong_anchor)
    assert broken is not None and broken.position == 3


def test_conflicting_signed_heads_at_one_position_name_the_checkpoint_that_disagrees() -> None:
    rows, _ = build_log()
    heads = checkpoint_heads((5, {"acme": (5, find(rows, 5)["hash"])}), (7, {"acme": (5, bytes(32))}))
    broken = run(rows, ChainVerifier(checkpoints=heads))
    assert broken is not None
    assert broken.position == 5 and "log position 7" in broken.reason


def test_range_limits_the_heads_kept() -> None:
    rows, _ = build_log()
    statement = parse_statement(
        checkpoint_statement(7, CREATED_AT, heads_of({"acme": (6, find(rows, 6)["hash"]), "globex": (7, b"\x00" * 32)}))
    )
    heads = CheckpointHeads()
    heads.add(statement, tenant="acme")
    assert heads.tenants() == ["acme"]
    ranged = CheckpointHeads()
    ranged.add(statement, from_position=1, to_position=6)
    assert (ranged.tenants(), ranged.positions("acme")) == (["acme"], [6])
