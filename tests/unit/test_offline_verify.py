"""The offline verifier reads chains from files alone: archives against their manifests, exports line by line."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import hashlib
from pathlib import Path

import orjson
import pytest
from audit_service.config import CheckpointConfig, Config
from audit_service.core.checkpoints import ChainHead, sign_checkpoint, to_json_line
from audit_service.core.ndjson import event_line
from audit_service.core.records import GENESIS_HASH, LOG_COLUMNS, seal_canonical
from audit_service.core.signing import Signer, generate_private_key_pem
from audit_service.offline_verify import (
    MANIFEST_FORMAT,
    load_checkpoints,
    manifest_signing_bytes,
    verify_archive,
    verify_archive_sequence,
    verify_export,
    verify_file,
    verify_files_command,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..factories import content_of, make_event, stamp

RECORDED_AT = dt.datetime(2026, 7, 3, 10, 0, tzinfo=dt.UTC)
TENANTS = ("acme", "globex")


def chain_lines(count: int, *, first_position: int = 1, heads: dict[str, bytes] | None = None) -> list[bytes]:
    """`count` stored events alternating between two tenants, sealed onto their chains, as NDJSON lines."""
    heads = dict(heads or {})
    lines = []
    for position in range(first_position, first_position + count):
        tenant = TENANTS[position % 2]
        prev_hash = heads.get(tenant, GENESIS_HASH)
        _, digest, row = seal_canonical(
            position, RECORDED_AT + dt.timedelta(seconds=position), content_of(stamp(make_event(tenant))), prev_hash
        )
        heads[tenant] = digest
        lines.append(event_line(dict(zip(LOG_COLUMNS, row, strict=True))))
    return lines


def write_archive(directory: Path, lines: list[bytes], signer: Signer | None = None) -> Path:
    """An archive and its manifest as retention writes them; returns the manifest's path."""
    archive = directory / "audit_events_2026_07.ndjson.gz"
    archive.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    tenants: dict[str, dict] = {}
    for line in lines:
        event = orjson.loads(line)
        position = int(event["position"])
        run = tenants.setdefault(
            event["tenant"], {"events": 0, "first_position": position, "first_prev_hash": event["prevHash"]}
        )
        run.update(events=run["events"] + 1, last_position=position, last_hash=event["hash"])
    positions = [int(orjson.loads(line)["position"]) for line in lines]
    manifest = {
        "format": MANIFEST_FORMAT,
        "partition": "audit_events_2026_07",
        "range_start": "2026-07-01T00:00:00Z",
        "range_end": "2026-08-01T00:00:00Z",
        "events": len(lines),
        "first_position": positions[0],
        "last_position": positions[-1],
        "tenants": tenants,
        "archive_file": archive.name,
        "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "archive_size": archive.stat().st_size,
        "retention_days": 90,
        "created_at": "2026-11-24T00:00:00Z",
    }
    if signer is not None:
        manifest["key_id"] = signer.key_id
        manifest["signature"] = signer.sign(manifest_signing_bytes(manifest)).hex()
    path = directory / "audit_events_2026_07.manifest.json"
    path.write_bytes(orjson.dumps(manifest))
    return path


def rewrite_archive(manifest: Path, lines: list[bytes], *, update_manifest: bool = False) -> None:
    """Replaces the archive's lines (as someone tampering with it would), optionally fixing sha256 and size."""
    archive = manifest.with_name("audit_events_2026_07.ndjson.gz")
    archive.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    if update_manifest:
        document = orjson.loads(manifest.read_bytes())
        document["archive_sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        document["archive_size"] = archive.stat().st_size
        manifest.write_bytes(orjson.dumps(document))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def test_an_archive_verifies_against_its_manifest_and_its_signature(tmp_path: Path, signer: Signer) -> None:
    manifest = write_archive(tmp_path, chain_lines(20, first_position=41), signer)

    report = verify_archive(manifest, (signer.verifier,))

    assert report.ok, str(report)
    assert "20 events at positions 41-60 in 2 tenant chains" in str(report)
    assert f"signature ok (key {signer.key_id})" in str(report)
    assert "unsigned" in str(verify_archive(write_archive(tmp_path, chain_lines(3)))), "unsigned is said"


def test_an_archive_continues_chains_from_the_boundary_hashes(tmp_path: Path) -> None:
    older = chain_lines(10)
    heads = {orjson.loads(line)["tenant"]: bytes.fromhex(orjson.loads(line)["hash"]) for line in older}
    manifest = write_archive(tmp_path, chain_lines(10, first_position=11, heads=heads))

    assert verify_archive(manifest).ok
    document = orjson.loads(manifest.read_bytes())
    assert document["tenants"]["acme"]["first_prev_hash"] == heads["acme"].hex()


def test_an_altered_line_is_named_by_position_and_line(tmp_path: Path) -> None:
    lines = chain_lines(12)
    manifest = write_archive(tmp_path, lines)
    lines[4] = lines[4].replace(b"Alice Example", b"Mallory")
    rewrite_archive(manifest, lines, update_manifest=True)

    report = verify_archive(manifest)

    assert not report.ok
    assert str(report) == (
        f"FAILED: {manifest}: position 5 (line 5): hash does not match the event's content (the event was altered)"
    )


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (6, "position 8 (line 7): position 7 is missing (lines were removed)"),
        (11, "the archive holds positions 1-11, the manifest says 1-12 (lines were removed at an end)"),
        (0, "position 3 (line 2): prev_hash is not the manifest's first_prev_hash of tenant 'globex'"),
    ],
)
def test_a_removed_line_fails_the_archive(tmp_path: Path, drop: int, expected: str) -> None:
    lines = chain_lines(12)
    manifest = write_archive(tmp_path, lines)
    document = orjson.loads(manifest.read_bytes())
    rewrite_archive(manifest, lines[:drop] + lines[drop + 1 :], update_manifest=True)
    if drop == 0:  # the manifest rewritten to start one later: globex's chain no longer starts at its boundary
        document.update(events=11, first_position=2)
        document["tenants"]["globex"].update(events=5, first_position=3)
        archive = manifest.with_name(document["archive_file"])
        document["archive_sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        document["archive_size"] = archive.stat().st_size
        manifest.write_bytes(orjson.dumps(document))

    report = verify_archive(manifest)

    assert not report.ok
    assert expected in str(report), str(report)


def test_a_changed_archive_or_manifest_fails_even_when_every_line_checks_out(tmp_path: Path, signer: Signer) -> None:
    lines = chain_lines(6)
    manifest = write_archive(tmp_path, lines, signer)
    archive = manifest.with_name("audit_events_2026_07.ndjson.gz")
    archive.write_bytes(gzip.compress(b"".join(lines), compresslevel=1, mtime=1))  # same lines, other bytes
    assert "sha256 or size does not match" in str(verify_archive(manifest, (signer.verifier,)))

    write_archive(tmp_path, lines, signer)
    document = orjson.loads(manifest.read_bytes())
    document["retention_days"] = 1
    manifest.write_bytes(orjson.dumps(document))
    assert str(verify_archive(manifest, (signer.verifier,))).endswith(
        f"the manifest's signature does not match (key {signer.key_id}): the manifest was altered"
    )
    assert verify_archive(manifest).ok, "without a key the signature is not checked"

    other = Signer(Ed25519PrivateKey.generate())
    assert f"signed by key {signer.key_id}, the verify key is {other.key_id}" in str(
        verify_archive(manifest, (other.verifier,))
    )


def test_a_file_that_is_not_an_archive_or_a_manifest_fails_in_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "x.manifest.json"
    manifest.write_bytes(b'{"format": "audit-archive/1"}')
    assert str(verify_archive(manifest)).startswith(f"FAILED: {manifest}: not an archive manifest: partition")
    export = tmp_path / "x.ndjson.gz"
    export.write_bytes(b"not gzip")
    assert str(verify_export(export)).startswith(f"FAILED: {export}: line 1: cannot read the file")
    plain = tmp_path / "y.ndjson"
    plain.write_bytes(chain_lines(2)[0] + b"{}\n")
    assert str(verify_export(plain)).startswith(f"FAILED: {plain}: line 2: not a stored audit event")


def test_a_filtered_export_verifies_every_line_and_counts_links_and_gaps(tmp_path: Path) -> None:
    lines = chain_lines(12)
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(lines[:6] + lines[8:]))  # positions 7 and 8 filtered out

    report = verify_export(export)

    assert report.ok, str(report)
    # acme: 2,4,6 | 10,12 -> 3 links, 1 gap; globex: 1,3,5 | 9,11 -> 3 links, 1 gap.
    assert "10 events at positions 1-12 in 2 tenant chains" in str(report)
    assert "6 links checked, 2 gaps" in str(report)
    assert verify_file(export).ok


def test_an_export_with_an_altered_or_reordered_line_fails(tmp_path: Path) -> None:
    lines = chain_lines(8)
    export = tmp_path / "export.ndjson.gz"
    export.write_bytes(gzip.compress(b"".join([*lines[:3], lines[3].replace(b"ci-key-", b"CI-KEY-"), *lines[4:]])))
    assert str(verify_export(export)).startswith(f"FAILED: {export}: position 4 (line 4): hash does not match")

    export.write_bytes(gzip.compress(b"".join([lines[1], lines[0], *lines[2:]])))
    assert "position 1 (line 2): position does not follow 2" in str(verify_export(export))


def test_signed_checkpoints_pin_the_heads_they_name(tmp_path: Path, signer: Signer) -> None:
    lines = chain_lines(10)
    events = [orjson.loads(line) for line in lines]
    heads = {event["tenant"]: ChainHead(int(event["position"]), bytes.fromhex(event["hash"])) for event in events[:6]}
    checkpoint = sign_checkpoint(signer, 6, RECORDED_AT, heads)
    manifest = write_archive(tmp_path, lines)
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(lines))

    signed = load_checkpoints(to_json_line(checkpoint).encode() + b"\n", [signer.verifier])
    assert verify_archive(manifest, signed_heads=signed).ok
    assert "2 chain heads match signed checkpoints" in str(verify_export(export, signed))

    # The history rewritten consistently (other content, hashes recomputed) no longer matches what was signed.
    rewritten = chain_lines(10)
    export.write_bytes(b"".join(rewritten))
    assert "position 5 (line 5): hash differs from the signed checkpoint at log position 6" in str(
        verify_export(export, signed)
    )
    # A head the archive should hold but does not (another tenant's event at that position).
    forged = sign_checkpoint(signer, 6, RECORDED_AT, {"initech": ChainHead(3, bytes(32))})
    forged_heads = load_checkpoints(to_json_line(forged).encode(), [signer.verifier])
    assert "names this event as tenant 'initech'" in str(verify_archive(manifest, signed_heads=forged_heads))

    altered = dataclasses.replace(checkpoint, signature=bytes(64))
    with pytest.raises(ValueError, match="checkpoint 1: the checkpoint's signature does not verify"):
        load_checkpoints(to_json_line(altered).encode(), [signer.verifier])
    with pytest.raises(ValueError, match="checkpoint 2: tenant 'acme' at position 6 has another hash"):
        load_checkpoints(f"{to_json_line(checkpoint)}\n{to_json_line(forged_acme(signer))}".encode(), [signer.verifier])


def forged_acme(signer: Signer):
    return sign_checkpoint(signer, 7, RECORDED_AT, {"acme": ChainHead(6, bytes(32))})


def _manifest(first: int, last: int, tenants: dict[str, tuple[str, str]]) -> dict:
    return {
        "events": last - first + 1,
        "first_position": first,
        "last_position": last,
        "tenants": {
            tenant: {"first_position": first, "first_prev_hash": start, "last_hash": end}
            for tenant, (start, end) in tenants.items()
        },
    }


def test_archives_that_follow_each_other_must_continue_each_tenants_chain() -> None:
    genesis, a1, a2, b1 = GENESIS_HASH.hex(), "a1" * 32, "a2" * 32, "b1" * 32
    first = (Path("m1"), _manifest(1, 10, {"acme": (genesis, a1), "globex": (genesis, b1)}))
    second = (Path("m2"), _manifest(11, 20, {"acme": (a1, a2)}))
    third = (Path("m3"), _manifest(21, 30, {"acme": (a2, "a3" * 32), "globex": (b1, "b2" * 32)}))

    linked = verify_archive_sequence([third, first, second])
    assert linked.ok and "3 archives in sequence; 5 tenant chain links" in linked.summary

    replaced = (Path("m2"), _manifest(11, 20, {"acme": ("ff" * 32, a2)}))
    broken = verify_archive_sequence([first, replaced, third])
    assert not broken.ok and str(broken).startswith("FAILED: m2: position 11: tenant 'acme' does not continue")

    not_from_genesis = (Path("m1"), _manifest(1, 10, {"acme": ("ee" * 32, a1), "globex": (genesis, b1)}))
    assert not verify_archive_sequence([not_from_genesis, second]).ok
    # Across a gap (an archive not given) nothing can be linked, so nothing is claimed: only the genesis links of
    # the first, then only acme's link from the second to the third (globex's start is in no archive given).
    assert verify_archive_sequence([first, third]).summary.endswith("; 2 tenant chain links between them checked")
    assert verify_archive_sequence([second, third]).summary.endswith("; 1 tenant chain links between them checked")


def test_an_unsigned_manifest_fails_when_a_verify_key_is_configured(tmp_path: Path, capsys) -> None:
    manifest = write_archive(tmp_path, chain_lines(4))
    assert "unsigned (no verify key configured)" in str(verify_archive(manifest))

    report = verify_archive(manifest, (Signer(Ed25519PrivateKey.generate()).verifier,))
    assert not report.ok
    assert "the manifest is unsigned, but a verify key is configured" in str(report)

    # verify-file with the configured key (the signing key's public half) fails it the same way.
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(generate_private_key_pem())
    config = Config(checkpoints=CheckpointConfig(signing_key_file=str(key_file)))
    assert verify_files_command(config, argparse.Namespace(files=[manifest], checkpoints=None)) == 1
    assert capsys.readouterr().out.startswith(f"FAILED: {manifest}: the manifest is unsigned")
    assert verify_files_command(Config(), argparse.Namespace(files=[manifest], checkpoints=None)) == 0
