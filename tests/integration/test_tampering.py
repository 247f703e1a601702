"""Tampering by someone with database superuser access (triggers disabled) is detected and the position named:
an altered row, a deleted row, a reordered pair, and a rewritten tail whose hashes were all recomputed (which
only the signed checkpoints catch, also when kept outside the database and the stored ones are deleted)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.core.checkpoints import ChainHead, Checkpoint, sign_checkpoint, to_json_line
from audit_service.core.records import chain_hash, columns_sql, row_canonical_bytes
from audit_service.core.signing import Signer, generate_private_key_pem, load_signer
from audit_service.store.checkpoints import take_checkpoint
from audit_service.store.verify import VerifyReport, verify_log
from cryptography.hazmat.primitives import serialization

from ..conftest import serving_stub, store_events
from ..factories import make_event

TENANTS = ("acme", "globex")
# Two batches of six, alternating tenants, with a signed checkpoint after each: acme holds the odd positions
# 1..11, globex the even ones 2..12. The checkpoints sign acme's heads 5 (log position 6) and 11 (12).


@dataclass
class Keys:
    signer: Signer
    private_file: Path
    public_file: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private_file = tmp_path / "checkpoint-key.pem"
    private_file.write_bytes(generate_private_key_pem())
    signer = load_signer(str(private_file))
    public_file = tmp_path / "checkpoint-key.pub.pem"
    public_file.write_bytes(
        signer.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Keys(signer, private_file, public_file)


@pytest.fixture
async def signed_log(database, app, keys, tmp_path) -> Path:
    """The log with two signed checkpoints, also kept (as a party outside the database would) in a file."""
    kept = tmp_path / "kept-checkpoints.jsonl"
    for _ in range(2):
        await store_events(database, [make_event(tenant=TENANTS[i % 2]) for i in range(6)])
        checkpoint = await take_checkpoint(app, keys.signer)
        with kept.open("a") as file:
            file.write(to_json_line(checkpoint) + "\n")
    return kept


async def tamper(owner: asyncpg.Connection, *statements: str) -> None:
    """Runs statements as a superuser with every trigger off (the append-only guards included)."""
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await owner.execute(statement)


async def verify(app: asyncpg.Connection, keys: Keys, **options) -> VerifyReport:
    return await verify_log(app, verifiers=(keys.signer.verifier,), **options)


async def cli_verify(database, keys: Keys, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "AUDIT_DATABASE_URL": database.app_url,
        "AUDIT_CHECKPOINT_VERIFY_KEY_FILE": str(keys.public_file),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit_service.cli", "verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def verifying_api(service_env, keys):
    """The API with the checkpoint key configured (VerifyChain checks the signed checkpoints)."""
    async with serving_stub({**service_env, "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(keys.private_file)}) as stub:
        yield stub


async def test_an_untouched_log_verifies_with_its_signed_checkpoints(signed_log, app, keys, database, verifying_api):
    report = await verify(app, keys)
    assert report.ok, report.first_break
    assert (report.checked, report.tenants, report.checkpoints) == (12, 2, 2)
    assert report.checkpoint_heads_checked == 4  # two tenants' heads in each checkpoint

    cli = await cli_verify(database, keys, "--checkpoints", str(signed_log))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.startswith("ok: 12 events in 2 tenant chains verified; 8 chain heads of 4 signed checkpoints")
    assert len(cli.stdout.splitlines()) == 1

    response = await verifying_api.VerifyChain(pb.VerifyChainRequest())
    assert (response.ok, response.events_checked, response.tenants, response.checkpoint_heads_checked) == (
        True,
        12,
        2,
        4,
    )
    assert not response.HasField("first_break")


async def test_an_altered_row_is_named(signed_log, app, owner, keys, database, verifying_api):
    await tamper(owner, "UPDATE audit_events SET message = 'nothing happened' WHERE position = 3")

    report = await verify(app, keys)
    assert (report.first_break.tenant, report.first_break.position) == ("acme", 3)
    assert "altered" in report.first_break.reason

    cli = await cli_verify(database, keys)
    assert cli.returncode == 1
    assert "tenant 'acme': chain broken at position 3: hash does not match" in cli.stdout

    response = await verifying_api.VerifyChain(pb.VerifyChainRequest())
    assert not response.ok
    assert (response.first_break.tenant, response.first_break.position) == ("acme", 3)


async def test_a_deleted_row_is_named_by_the_next_event_missing_its_predecessor(
    signed_log, app, owner, keys, database, verifying_api
):
    await tamper(owner, "DELETE FROM audit_events WHERE position = 5")

    report = await verify(app, keys)
    assert (report.first_break.tenant, report.first_break.position) == ("acme", 7)
    assert "previous event at position 3" in report.first_break.reason
    assert "missing" in report.first_break.reason

    cli = await cli_verify(database, keys)
    assert cli.returncode == 1
    assert "chain broken at position 7" in cli.stdout and "missing" in cli.stdout

    response = await verifying_api.VerifyChain(pb.VerifyChainRequest(tenant="acme"))
    assert (response.ok, response.first_break.position) == (False, 7)


async def test_a_reordered_pair_is_named(signed_log, app, owner, keys, database, verifying_api):
    # acme's events at 3 and 5 exchange their positions (one at a time: they may share a recorded_at).
    await tamper(
        owner,
        "UPDATE audit_events SET position = -3 WHERE position = 3",
        "UPDATE audit_events SET position = 3 WHERE position = 5",
        "UPDATE audit_events SET position = 5 WHERE position = -3",
    )

    report = await verify(app, keys)
    assert (report.first_break.tenant, report.first_break.position) == ("acme", 3)
    assert "moved" in report.first_break.reason

    cli = await cli_verify(database, keys, "--tenant", "acme")
    assert cli.returncode == 1
    assert "chain broken at position 3" in cli.stdout

    response = await verifying_api.VerifyChain(pb.VerifyChainRequest())
    assert (response.ok, response.first_break.position) == (False, 3)


async def rewrite_history(owner: asyncpg.Connection, tenant: str, position: int) -> None:
    """What an attacker with superuser access does to hide an edit: alters the event at `position` and
    recomputes the hash of every later event of the tenant and its chain head, so the chain links up again."""
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute("UPDATE audit_events SET message = 'nothing happened' WHERE position = $1", position)
        rows = await owner.fetch(
            f"SELECT {columns_sql()} FROM audit_events WHERE tenant = $1 ORDER BY position", tenant
        )
        prev_hash = bytes(32)
        for row in rows:
            if row["position"] >= position:
                digest = chain_hash(prev_hash, row_canonical_bytes(row))
                await owner.execute(
                    "UPDATE audit_events SET prev_hash = $1, hash = $2 WHERE position = $3",
                    prev_hash,
                    digest,
                    row["position"],
                )
            else:
                digest = bytes(row["hash"])
            prev_hash = digest
        await owner.execute(
            "UPDATE audit_chain_heads SET last_hash = $1 WHERE tenant = $2 AND last_position = $3",
            prev_hash,
            tenant,
            rows[-1]["position"],
        )


async def test_a_rewritten_tail_is_caught_by_the_signed_checkpoint(
    signed_log, app, owner, keys, database, verifying_api
):
    await rewrite_history(owner, "acme", 3)

    unsigned = await verify_log(app)  # the chain alone: the rewrite links up
    assert unsigned.ok, unsigned.first_break
    assert unsigned.checked == 12

    report = await verify(app, keys)
    broken = report.first_break
    assert (broken.tenant, broken.position) == ("acme", 5)  # acme's head in the checkpoint at log position 6
    assert "rewritten after that checkpoint was signed" in broken.reason
    assert "checkpoint at log position 6" in broken.reason

    cli = await cli_verify(database, keys)
    assert cli.returncode == 1
    assert "tenant 'acme': chain broken at position 5:" in cli.stdout
    assert "history up to position 5 was rewritten" in cli.stdout

    response = await verifying_api.VerifyChain(pb.VerifyChainRequest(tenant="acme"))
    assert not response.ok
    assert (response.first_break.tenant, response.first_break.position) == ("acme", 5)
    assert "log position 6" in response.first_break.reason


async def test_checkpoints_kept_outside_catch_a_rewrite_after_the_stored_ones_are_deleted(
    signed_log, app, owner, keys, database
):
    await rewrite_history(owner, "acme", 7)
    await tamper(owner, "DELETE FROM audit_checkpoints")
    # The attacker cannot sign with the key, and the database no longer holds what was signed.
    assert (await verify(app, keys)).ok

    cli = await cli_verify(database, keys, "--checkpoints", str(signed_log))
    assert cli.returncode == 1
    assert "tenant 'acme': chain broken at position 11:" in cli.stdout
    assert "checkpoint at log position 12" in cli.stdout

    # A range that ends before the rewrite checks out; one that reaches the signed head does not.
    assert (await cli_verify(database, keys, "--checkpoints", str(signed_log), "--to-position", "6")).returncode == 0
    ranged = await cli_verify(database, keys, "--checkpoints", str(signed_log), "--from-position", "8")
    assert ranged.returncode == 1 and "position 11" in ranged.stdout


async def test_a_checkpoint_not_signed_with_the_key_is_a_break(signed_log, app, keys, tmp_path, database):
    # The service role may insert checkpoints: one signed with another key, vouching for a rewritten head.
    impostor_file = tmp_path / "impostor.pem"
    impostor_file.write_bytes(generate_private_key_pem())
    impostor = load_signer(str(impostor_file))
    forged = sign_checkpoint(impostor, 13, dt.datetime.now(dt.UTC), {})
    await app.execute(
        "INSERT INTO audit_checkpoints VALUES (13, now(), $1, $2, $3)",
        forged.statement,
        forged.key_id,
        forged.signature,
    )
    report = await verify(app, keys)
    assert (report.first_break.tenant, report.first_break.position) == ("", 13)
    assert impostor.key_id in report.first_break.reason

    cli = await cli_verify(database, keys)
    assert cli.returncode == 1
    assert "checkpoint at log position 13:" in cli.stdout


async def test_an_altered_kept_checkpoint_is_a_break(signed_log, app, keys, database, tmp_path):
    rows = await app.fetch("SELECT tenant, last_position, last_hash FROM audit_chain_heads")
    genuine = sign_checkpoint(
        keys.signer,
        12,
        dt.datetime.now(dt.UTC),
        {row["tenant"]: ChainHead(row["last_position"], bytes(row["last_hash"])) for row in rows},
    )
    altered = Checkpoint(
        genuine.statement.replace(b'"log_position":12', b'"log_position":11'), genuine.key_id, genuine.signature
    )
    kept = tmp_path / "altered.jsonl"
    kept.write_text(to_json_line(genuine) + "\n" + to_json_line(altered) + "\n")

    cli = await cli_verify(database, keys, "--checkpoints", str(kept))
    assert cli.returncode == 1
    assert "checkpoint at log position 11: the checkpoint's signature does not verify" in cli.stdout
