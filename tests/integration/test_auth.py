"""Bearer-token access control on a real gRPC server: authentication, tenant isolation, own-actions-only
visibility for non-admins in every RPC, and page tokens that cannot be carried to another caller."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
import jwt
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_service.auth.tokens import mint_token
from audit_service.core.page_token import PageToken, encode_page_token, query_digest
from audit_service.store.append import LogAppender
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import JWT_SECRET, REPO_ROOT, bearer, serving_stub, serving_with_auth
from ..factories import content_of, make_event, stamp


@pytest.fixture
async def stored(database) -> dict[str, list[event_pb2.AuditEvent]]:
    """acme: 6 by alice, 4 by bob; globex: 5 by alice (same actor id, other tenant)."""

    def by(tenant: str, actor_id: str, count: int) -> list[event_pb2.AuditEvent]:
        return [
            stamp(make_event(tenant, actor=event_pb2.Subject(id=actor_id, slug=actor_id, type=1))) for _ in range(count)
        ]

    groups = {"acme/alice": by("acme", "u-alice", 6), "acme/bob": by("acme", "u-bob", 4)}
    groups["globex/alice"] = by("globex", "u-alice", 5)
    conn = await asyncpg.connect(database.app_url)
    try:
        await LogAppender().append(conn, [content_of(e) for events in groups.values() for e in events])
    finally:
        await conn.close()
    return groups


async def listed_ids(stub, token: str, request_filter: pb.EventFilter | None = None, page_size: int = 3) -> set[str]:
    ids, page_token = [], ""
    while True:
        page = await stub.ListEvents(
            pb.ListEventsRequest(filter=request_filter, page_size=page_size, page_token=page_token),
            metadata=bearer(token),
        )
        ids.extend(event.event_id for event in page.events)
        page_token = page.next_page_token
        if not page_token:
            assert len(ids) == len(set(ids))
            return set(ids)


def ids(events) -> set[str]:
    return {event.event_id for event in events}


async def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def test_calls_without_a_valid_token_are_unauthenticated(secured, stored):
    request = pb.ListEventsRequest()
    expired = secured.token(ttl=-3600)
    other_key = jwt.encode({"sub": "u-alice", "tenant": "acme", "admin": True, "exp": time.time() + 60}, "x" * 40)
    unsigned = jwt.encode(
        {"sub": "u-alice", "tenant": "acme", "admin": True, "iss": "audit-service", "aud": "audit-api"},
        None,
        algorithm="none",
    )
    wrong_audience = mint_token(
        dataclasses.replace(secured.auth, audience="someone-else"),
        subject="u",
        tenant="acme",
        admin=True,
        ttl_seconds=60,
    )
    cases = {
        "no metadata": (),
        "not a bearer": (("authorization", f"Basic {secured.token()}"),),
        "garbage": bearer("not-a-jwt"),
        "expired": bearer(expired),
        "other key": bearer(other_key),
        "alg none": bearer(unsigned),
        "wrong audience": bearer(wrong_audience),
    }
    for name, metadata in cases.items():
        code, details = await status_of(secured.stub.ListEvents(request, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (name, details)
    code, details = await status_of(secured.stub.GetEvent(pb.GetEventRequest(event_id="x")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, details = await status_of(secured.stub.CountEvents(pb.CountEventsRequest(), metadata=bearer(expired)))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "the bearer token has expired")

    health = health_pb2_grpc.HealthStub(secured.channel)  # probes need no token
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


async def test_an_admin_sees_every_event_of_its_tenant_and_nothing_else(secured, stored):
    admin = secured.token("acme", "u-admin", admin=True)
    acme = ids(stored["acme/alice"]) | ids(stored["acme/bob"])
    assert await listed_ids(secured.stub, admin) == acme
    assert (await secured.stub.CountEvents(pb.CountEventsRequest(), metadata=bearer(admin))).total == len(acme)

    code, details = await status_of(
        secured.stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(tenant="globex")), metadata=bearer(admin))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "filter.tenant" in details
    code, _ = await status_of(
        secured.stub.CountEvents(pb.CountEventsRequest(filter=pb.EventFilter(tenant="globex")), metadata=bearer(admin))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED

    foreign = stored["globex/alice"][0].event_id
    code, _ = await status_of(secured.stub.GetEvent(pb.GetEventRequest(event_id=foreign), metadata=bearer(admin)))
    assert code == grpc.StatusCode.NOT_FOUND  # not even its existence is disclosed
    own = stored["acme/bob"][0].event_id
    assert (await secured.stub.GetEvent(pb.GetEventRequest(event_id=own), metadata=bearer(admin))).event.event_id == own


async def test_a_user_sees_only_its_own_actions_in_lists_counts_and_gets(secured, stored):
    alice = secured.token("acme", "u-alice")
    mine = ids(stored["acme/alice"])
    assert await listed_ids(secured.stub, alice) == mine
    # Asking for someone else's actions narrows to nothing; it never widens the scope.
    assert await listed_ids(secured.stub, alice, pb.EventFilter(actor_ids=["u-bob"])) == set()
    assert await listed_ids(secured.stub, alice, pb.EventFilter(query="actor:u-bob")) == set()

    day = pb.EventFilter()
    day.start_time.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    day.end_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    counted = await secured.stub.CountEvents(
        pb.CountEventsRequest(filter=day, interval=duration_pb2.Duration(seconds=3600), group_by=pb.GROUP_BY_ACTOR),
        metadata=bearer(alice),
    )
    assert counted.total == len(mine) and [(g.key, g.count) for g in counted.groups] == [("u-alice", len(mine))]
    assert sum(bucket.count for bucket in counted.buckets) == len(mine)

    bobs = stored["acme/bob"][0].event_id
    code, _ = await status_of(secured.stub.GetEvent(pb.GetEventRequest(event_id=bobs), metadata=bearer(alice)))
    assert code == grpc.StatusCode.NOT_FOUND
    own = stored["acme/alice"][0].event_id
    assert (await secured.stub.GetEvent(pb.GetEventRequest(event_id=own), metadata=bearer(alice))).event.event_id == own


async def test_page_tokens_do_not_travel_between_callers_and_forged_ones_do_not_widen_the_scope(secured, stored):
    alice, bob = secured.token("acme", "u-alice"), secured.token("acme", "u-bob")
    globex_admin = secured.token("globex", "u-admin", admin=True)
    page = await secured.stub.ListEvents(pb.ListEventsRequest(page_size=2), metadata=bearer(alice))
    assert page.next_page_token
    for other in (bob, globex_admin, secured.token("acme", "u-alice", admin=True)):
        code, details = await status_of(
            secured.stub.ListEvents(
                pb.ListEventsRequest(page_size=2, page_token=page.next_page_token), metadata=bearer(other)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details

    # A token forged for bob's own query (the format is not secret) only moves his cursor: he still sees his own.
    identity = b"acme\x00u-bob\x000"
    digest = query_digest(pb.EventFilter().SerializeToString(deterministic=True), bytes([True]), identity)
    forged = encode_page_token(PageToken(after_position=10**12, query_digest=digest))
    forged_page = await secured.stub.ListEvents(
        pb.ListEventsRequest(page_size=100, page_token=forged), metadata=bearer(bob)
    )
    assert ids(forged_page.events) == ids(stored["acme/bob"])


def write_pem(path: Path, key) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = path.with_suffix(".pub.pem")
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public


@pytest.mark.parametrize(
    ("algorithm", "key_factory"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
)
async def test_public_key_verification(service_env, stored, tmp_path, algorithm, key_factory):
    private = tmp_path / "signing.pem"
    public = write_pem(private, key_factory())
    async with serving_with_auth(service_env, {"AUDIT_AUTH_JWT_PUBLIC_KEY_FILE": str(public)}) as (config, port):
        signer = dataclasses.replace(config.auth, jwt_private_key_file=str(private))
        token = mint_token(signer, subject="u-bob", tenant="acme", admin=False, ttl_seconds=60)
        assert jwt.get_unverified_header(token)["alg"] == algorithm
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            assert await listed_ids(stub, token) == ids(stored["acme/bob"])
            # An HS256 token, even one "signed" with the public key's text, is refused: no algorithm confusion.
            confused = jwt.encode(
                {"sub": "u-bob", "tenant": "acme", "iss": "audit-service", "aud": "audit-api", "exp": time.time() + 60},
                "k" * 40,
                algorithm="HS256",
            )
            code, _ = await status_of(stub.ListEvents(pb.ListEventsRequest(), metadata=bearer(confused)))
            assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_token_command_mints_what_the_server_accepts(secured, stored):
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit_service.cli", "token", "--tenant", "acme", "--subject", "u-bob", "--ttl", "60"],
        env={"PATH": "/usr/bin:/bin", "AUDIT_AUTH_JWT_SECRET": JWT_SECRET},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert await listed_ids(secured.stub, result.stdout.strip()) == ids(stored["acme/bob"])


async def test_serving_without_authentication_takes_an_explicit_setting_and_is_logged_loudly(
    service_env, stored, caplog
):
    assert service_env["AUDIT_AUTH_DISABLED"] == "true"
    with caplog.at_level(logging.WARNING, logger="audit_service"):
        async with serving_stub(service_env) as stub:
            everything = set().union(*(ids(events) for events in stored.values()))
            assert ids((await stub.ListEvents(pb.ListEventsRequest(page_size=100))).events) == everything
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("AUTHENTICATION IS DISABLED (AUDIT_AUTH_DISABLED=true)" in message for message in warnings), warnings
