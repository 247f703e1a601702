"""VerifyChain and `audit-service verify` over a tenant or a position range; who may call it; checkpoints signed
by the ingest worker and by `audit-service checkpoint`; start-up errors of the checkpoint keys."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import asyncpg
import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.config import load_config
from audit_service.core.checkpoints import (
    ChainHead,
    Checkpoint,
    parse_json_line,
    parse_json_lines,
    sign_checkpoint,
    to_json_line,
)
from audit_service.core.signing import generate_private_key_pem, load_signer
from audit_service.store.checkpoints import checkpoint_verifiers, take_checkpoint
from audit_service.store.verify import verify_log
from cryptography.hazmat.primitives import serialization

from ..conftest import bearer, eventually, run_cli, store_events
from ..factories import make_event

# acme holds the odd positions 1..9, globex the even ones 2..10.


@pytest.fixture
async def log(database) -> None:
    await store_events(database, [make_event(tenant=("acme", "globex")[i % 2]) for i in range(10)])


async def tamper(owner: asyncpg.Connection, statement: str) -> None:
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute(statement)


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details()


async def test_a_range_is_checked_from_the_stored_hash_before_it(log, api, owner):
    await tamper(owner, "UPDATE audit_events SET message = 'nothing happened' WHERE position = 5")

    whole = await api.VerifyChain(pb.VerifyChainRequest())
    assert (whole.ok, whole.first_break.position, whole.events_checked) == (False, 5, 3)

    before = await api.VerifyChain(pb.VerifyChainRequest(end_position=4))
    assert (before.ok, before.events_checked, before.tenants) == (True, 4, 2)
    after = await api.VerifyChain(pb.VerifyChainRequest(start_position=6))
    assert (after.ok, after.events_checked, after.tenants) == (True, 5, 2)  # chains start from 4's and 5's hashes
    around = await api.VerifyChain(pb.VerifyChainRequest(start_position=4, end_position=7))
    assert (around.ok, around.first_break.tenant, around.first_break.position) == (False, "acme", 5)


async def test_a_tenant_is_checked_alone(log, api, owner):
    await tamper(owner, "UPDATE audit_events SET message = 'nothing happened' WHERE position = 5")

    globex = await api.VerifyChain(pb.VerifyChainRequest(tenant="globex"))
    assert (globex.ok, globex.events_checked, globex.tenants) == (True, 5, 1)
    acme = await api.VerifyChain(pb.VerifyChainRequest(tenant="acme"))
    assert (acme.ok, acme.first_break.tenant, acme.first_break.position) == (False, "acme", 5)
    unknown = await api.VerifyChain(pb.VerifyChainRequest(tenant="initech"))
    assert (unknown.ok, unknown.events_checked, unknown.tenants) == (True, 0, 0)


async def test_heads_are_checked_only_by_a_range_reaching_the_end(log, app_conn, owner):
    await tamper(owner, "DELETE FROM audit_events WHERE position = 9")  # acme's last event: the tail cut

    assert (await verify_log(app_conn, to_position=8)).ok
    assert (await verify_log(app_conn, from_position=3, to_position=8)).checked == 6
    cut = await verify_log(app_conn, from_position=3)
    assert (cut.first_break.position, "tail was cut" in cut.first_break.reason) == (7, True)
    assert not (await verify_log(app_conn, to_position=10)).ok


async def test_cli_verifies_a_tenant_and_a_range(log, database, owner):
    env = {"AUDIT_DATABASE_URL": database.app_url}
    await tamper(owner, "UPDATE audit_events SET message = 'nothing happened' WHERE position = 4")

    ok = await asyncio.to_thread(run_cli, env, "verify", "--tenant", "acme")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: 5 events in 1 tenant chains verified")
    assert "signed checkpoints not checked" in ok.stdout

    ranged = await asyncio.to_thread(run_cli, env, "verify", "--from-position", "5")
    assert (ranged.returncode, ranged.stdout.split(":")[0]) == (0, "ok")
    broken = await asyncio.to_thread(run_cli, env, "verify", "--from-position", "2", "--to-position", "6")
    assert broken.returncode == 1
    assert "tenant 'globex': chain broken at position 4" in broken.stdout

    bad = await asyncio.to_thread(run_cli, env, "verify", "--from-position", "6", "--to-position", "2")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--from-position" in bad.stderr


@pytest.fixture
async def app_conn(database):
    conn = await asyncpg.connect(database.app_url)
    yield conn
    await conn.close()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"start_position": -1}, "start_position"),
        ({"end_position": -5}, "end_position"),
        ({"start_position": 9, "end_position": 3}, "start_position"),
    ],
)
async def test_bad_ranges_are_invalid_arguments(api, request_fields, field):
    code, details = await status_of(api.VerifyChain(pb.VerifyChainRequest(**request_fields)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}:")


async def test_only_a_tenant_admin_verifies_and_only_its_own_tenant(log, secured):
    admin = secured.token("acme", "u-admin", admin=True)
    own = await secured.stub.VerifyChain(pb.VerifyChainRequest(), metadata=bearer(admin))
    assert (own.ok, own.events_checked, own.tenants) == (True, 5, 1)  # the caller's tenant by default
    named = await secured.stub.VerifyChain(pb.VerifyChainRequest(tenant="acme"), metadata=bearer(admin))
    assert named.events_checked == 5

    code, details = await status_of(
        secured.stub.VerifyChain(pb.VerifyChainRequest(tenant="globex"), metadata=bearer(admin))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "acme" in details

    member = secured.token("acme", "u-alice")
    code, details = await status_of(secured.stub.VerifyChain(pb.VerifyChainRequest(), metadata=bearer(member)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin" in details

    code, _ = await status_of(secured.stub.VerifyChain(pb.VerifyChainRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint-key.pem"
    path.write_bytes(generate_private_key_pem())
    return path


async def test_the_ingest_worker_signs_checkpoints_periodically(
    service_env, key_file, publisher, start_worker, owner, app_conn
):
    env = {
        **service_env,
        "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file),
        "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0.1",
    }
    # While checkpoints cannot be stored, the worker logs it and goes on ingesting; it retries each interval.
    await owner.execute("REVOKE INSERT ON audit_checkpoints FROM audit_service")
    await start_worker(load_config(env=env))
    for i in range(6):
        await publisher.publish(make_event(tenant=("acme", "globex")[i % 2]))

    async def stored_six() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") == 6

    await eventually(stored_six, what="6 events stored while checkpoints fail")
    assert await owner.fetchval("SELECT count(*) FROM audit_checkpoints") == 0
    await owner.execute("GRANT INSERT ON audit_checkpoints TO audit_service")

    async def signed_up_to_six() -> bool:
        return await owner.fetchval("SELECT max(log_position) FROM audit_checkpoints") == 6

    await eventually(signed_up_to_six, what="a checkpoint at log position 6")

    verifier = load_signer(str(key_file)).verifier
    row = await owner.fetchrow("SELECT * FROM audit_checkpoints WHERE log_position = 6")
    checkpoint = Checkpoint(bytes(row["statement"]), row["key_id"], bytes(row["signature"]))
    assert checkpoint.key_id == verifier.key_id
    assert verifier.verify(checkpoint.statement, checkpoint.signature)
    heads = checkpoint.parsed().heads
    assert {tenant: head.position for tenant, head in heads.items()} == {"acme": 5, "globex": 6}

    report = await verify_log(app_conn, verifiers=(verifier,))
    assert report.ok, report.first_break
    assert report.checkpoint_heads_checked >= 2


async def test_checkpoint_command_signs_prints_and_appends(log, database, key_file, tmp_path, owner):
    kept = tmp_path / "kept.jsonl"
    env = {"AUDIT_DATABASE_URL": database.app_url, "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file)}
    first = await asyncio.to_thread(run_cli, env, "checkpoint", "--output", str(kept))
    assert first.returncode == 0, first.stderr
    checkpoint = parse_json_line(first.stdout.strip())
    assert checkpoint.parsed().log_position == 10
    assert load_signer(str(key_file)).verifier.verify(checkpoint.statement, checkpoint.signature)

    # Nothing stored since: the same checkpoint, not a new one.
    again = await asyncio.to_thread(run_cli, env, "checkpoint", "--output", str(kept))
    assert parse_json_line(again.stdout.strip()) == checkpoint
    assert parse_json_lines(kept.read_text()) == [checkpoint, checkpoint]
    assert await owner.fetchval("SELECT count(*) FROM audit_checkpoints") == 1

    verified = await asyncio.to_thread(run_cli, env, "verify", "--checkpoints", str(kept))
    assert verified.returncode == 0, verified.stdout
    assert "6 chain heads of 3 signed checkpoints matched" in verified.stdout


@pytest.mark.parametrize("command", ["ingest", "serve", "checkpoint", "verify"])
def test_a_bad_key_file_is_a_one_line_start_up_error(service_env, tmp_path, command):
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    result = run_cli({**service_env, "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(not_a_key)}, command)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "AUDIT_CHECKPOINT_SIGNING_KEY_FILE" in result.stderr


def test_checkpoint_command_needs_a_signing_key(service_env):
    result = run_cli(service_env, "checkpoint")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "audit-service: configuration error: AUDIT_CHECKPOINT_SIGNING_KEY_FILE: is required to sign checkpoints"
    )


async def test_checkpoints_kept_outside_need_a_readable_file_and_the_public_key(log, database, tmp_path):
    env = {"AUDIT_DATABASE_URL": database.app_url}
    missing = await asyncio.to_thread(run_cli, env, "verify", "--checkpoints", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "--checkpoints" in missing.stderr

    kept = tmp_path / "kept.jsonl"
    key = tmp_path / "key.pem"
    key.write_bytes(generate_private_key_pem())
    kept.write_text(to_json_line(sign_checkpoint(load_signer(str(key)), 1, dt.datetime.now(dt.UTC), {})) + "\n")
    keyless = await asyncio.to_thread(run_cli, env, "verify", "--checkpoints", str(kept))
    assert keyless.returncode == 2 and keyless.stderr.count("\n") == 1
    assert "AUDIT_CHECKPOINT_VERIFY_KEY_FILE" in keyless.stderr


def public_key_file(path: Path, private_key_file: Path) -> str:
    signer = load_signer(str(private_key_file))
    path.write_bytes(
        signer.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


async def test_checkpoints_signed_before_a_key_rotation_verify_with_the_retired_key_configured(
    log, database, app_conn, key_file, tmp_path
):
    retired_key_file = tmp_path / "retired-key.pem"
    retired_key_file.write_bytes(generate_private_key_pem())
    retired, current = load_signer(str(retired_key_file)), load_signer(str(key_file))
    assert (await take_checkpoint(app_conn, retired)).parsed().log_position == 10
    await store_events(database, [make_event(tenant="acme"), make_event(tenant="globex")])
    # The key was rotated: the next checkpoint is signed with the new key, though the old one is still current.
    rotated = await take_checkpoint(app_conn, current)
    assert (rotated.key_id, rotated.parsed().log_position) == (current.key_id, 12)

    retired_public = public_key_file(tmp_path / "retired.pub.pem", retired_key_file)
    current_public = public_key_file(tmp_path / "current.pub.pem", key_file)
    both = load_config(env={"AUDIT_CHECKPOINT_VERIFY_KEY_FILE": f"{retired_public},{current_public}"})
    report = await verify_log(app_conn, verifiers=checkpoint_verifiers(both.checkpoints))
    assert (report.ok, report.checkpoints, report.checkpoint_heads_checked) == (True, 2, 4), report.first_break

    only_current = load_config(env={"AUDIT_CHECKPOINT_VERIFY_KEY_FILE": current_public})
    report = await verify_log(app_conn, verifiers=checkpoint_verifiers(only_current.checkpoints))
    assert (report.first_break.tenant, report.first_break.position) == ("", 10)
    assert f"signed with key {retired.key_id!r}, not a configured key" in report.first_break.reason

    # The signing key's public half counts too; the CLI reads the same variables.
    env = {
        "AUDIT_DATABASE_URL": database.app_url,
        "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file),
        "AUDIT_CHECKPOINT_VERIFY_KEY_FILE": retired_public,
    }
    verified = await asyncio.to_thread(run_cli, env, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "4 chain heads of 2 signed checkpoints matched" in verified.stdout
    unverified = await asyncio.to_thread(run_cli, {**env, "AUDIT_CHECKPOINT_VERIFY_KEY_FILE": ""}, "verify")
    assert unverified.returncode == 1
    assert "checkpoint at log position 10:" in unverified.stdout and retired.key_id in unverified.stdout


async def test_a_row_forged_at_the_next_log_position_does_not_keep_the_genuine_checkpoint_out(
    log, app_conn, owner, key_file
):
    signer = load_signer(str(key_file))
    # The service role may insert checkpoints: one for the position the next checkpoint will state, claiming the
    # real key, vouching for a rewritten head.
    claimed = sign_checkpoint(signer, 10, dt.datetime.now(dt.UTC), {"acme": ChainHead(9, b"\x00" * 32)})
    forged_statement = claimed.statement.replace(b'"position":9', b'"position":7')
    insert = "INSERT INTO audit_checkpoints VALUES (10, now(), $1, $2, $3)"
    await app_conn.execute(insert, forged_statement, signer.key_id, claimed.signature)

    checkpoint = await take_checkpoint(app_conn, signer)
    assert checkpoint.statement != forged_statement
    assert signer.verifier.verify(checkpoint.statement, checkpoint.signature)
    statement = checkpoint.parsed()
    assert statement.log_position == 10
    assert {tenant: head.position for tenant, head in statement.heads.items()} == {"acme": 9, "globex": 10}
    stored = await owner.fetch("SELECT statement FROM audit_checkpoints WHERE log_position = 10")
    assert sorted(bytes(row["statement"]) for row in stored) == sorted([forged_statement, checkpoint.statement])
    # Asked again, the stored genuine checkpoint is the current one, never the forged row.
    assert await take_checkpoint(app_conn, signer) == checkpoint
    assert await owner.fetchval("SELECT count(*) FROM audit_checkpoints") == 2

    report = await verify_log(app_conn, verifiers=(signer.verifier,))
    assert (report.first_break.tenant, report.first_break.position) == ("", 10)
    assert "signature does not verify" in report.first_break.reason
