"""The HTTP port (AUDIT_HTTP_ADDRESS): AuditService over Connect (JSON and binary) and gRPC-Web, called with the
Connect Python client and with curl, answering as the gRPC port does: same events, same counts, same access rules,
same errors; and what the client sent wrong is a Connect error, never a 500."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import os
import shutil
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit.v1.audit_service_connect import AuditServiceClient
from audit_service.auth.tokens import mint_token
from audit_service.config import AuthConfig, load_config
from audit_service.errors import ConfigError
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from ..certificates import CertificateAuthority
from ..conftest import JWT_SECRET, REPO_ROOT, bearer, eventually, serving_api, store_events
from ..factories import make_event
from .test_api_tls import replace_file

CURL = shutil.which("curl")
SERVICE_PATH = "/audit.v1.AuditService"


@dataclass
class Doors:
    """Both ports of one API process, and a way to mint its tokens."""

    grpc: audit_service_pb2_grpc.AuditServiceStub
    url: str
    auth: AuthConfig

    def token(self, tenant: str = "acme", subject: str = "u-alice", *, admin: bool = False) -> str:
        return mint_token(self.auth, subject=subject, tenant=tenant, admin=admin, ttl_seconds=600)


@pytest.fixture
async def doors(service_env: dict[str, str]) -> AsyncIterator[Doors]:
    env = {key: value for key, value in service_env.items() if key != "AUDIT_AUTH_DISABLED"} | {
        "AUDIT_AUTH_JWT_SECRET": JWT_SECRET,
        "AUDIT_HTTP_ADDRESS": "127.0.0.1:0",
    }
    config = load_config(env=env)
    async with serving_api(config) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert server.http is not None
        yield Doors(
            audit_service_pb2_grpc.AuditServiceStub(channel), f"http://127.0.0.1:{server.http.port}", config.auth
        )


@pytest.fixture
async def stored(database) -> dict[str, list[str]]:
    """acme: 5 by alice, 3 by bob; globex: 4 by alice."""
    acme_alice = [make_event("acme", actor=event_pb2.Subject(id="u-alice", type=1)) for _ in range(5)]
    acme_bob = [make_event("acme", actor=event_pb2.Subject(id="u-bob", type=1)) for _ in range(3)]
    globex = [make_event("globex", actor=event_pb2.Subject(id="u-alice", type=1)) for _ in range(4)]
    return {
        "acme/alice": await store_events(database, acme_alice),
        "acme/bob": await store_events(database, acme_bob),
        "globex/alice": await store_events(database, globex),
    }


def client(doors: Doors, *, json_codec: bool = False, grpc_web: bool = False) -> AuditServiceClient:
    options: dict = {"protocol": ProtocolType.GRPC_WEB if grpc_web else ProtocolType.CONNECT}
    if json_codec:
        options["codec"] = google_protobuf_json_codec()
    return AuditServiceClient(doors.url, **options)


def auth_header(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("json_codec", "grpc_web"), [(False, False), (True, False), (False, True)], ids=["proto", "json", "grpc-web"]
)
async def test_the_connect_client_gets_what_grpc_answers(doors, stored, json_codec, grpc_web):
    token = doors.token(admin=True)
    request_filter = pb.EventFilter(tenant="acme")
    async with client(doors, json_codec=json_codec, grpc_web=grpc_web) as http:
        listed = await http.list_events(
            pb.ListEventsRequest(filter=request_filter, page_size=100), headers=auth_header(token)
        )
        expected = await doors.grpc.ListEvents(
            pb.ListEventsRequest(filter=request_filter, page_size=100), metadata=bearer(token)
        )
        assert listed == expected
        assert {event.event_id for event in listed.events} == set(stored["acme/alice"] + stored["acme/bob"])

        count_request = pb.CountEventsRequest(filter=request_filter, group_by=pb.GROUP_BY_ACTOR)
        counted = await http.count_events(count_request, headers=auth_header(token))
        assert counted == await doors.grpc.CountEvents(count_request, metadata=bearer(token))
        assert counted.total == 8

        event_id = stored["acme/bob"][0]
        got = await http.get_event(pb.GetEventRequest(event_id=event_id), headers=auth_header(token))
        assert got == await doors.grpc.GetEvent(pb.GetEventRequest(event_id=event_id), metadata=bearer(token))

        export_request = pb.ExportEventsRequest(filter=request_filter, format=pb.EXPORT_FORMAT_CSV)
        chunks = [chunk async for chunk in http.export_events(export_request, headers=auth_header(token))]
        expected_chunks = [chunk async for chunk in doors.grpc.ExportEvents(export_request, metadata=bearer(token))]
        assert b"".join(chunk.data for chunk in chunks) == b"".join(chunk.data for chunk in expected_chunks)
        assert sum(chunk.events for chunk in chunks) == 8


async def test_a_tail_over_http_receives_an_event_published_after_it_caught_up(doors, start_worker, publisher):
    await start_worker()
    token = doors.token(admin=True)
    async with client(doors, json_codec=True) as http:
        responses = http.tail_events(
            pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme")), headers=auth_header(token)
        )
        try:
            async for response in responses:
                if response.caught_up:
                    break
            published = (await publisher.publish(make_event("acme"))).event_id
            await publisher.publish(make_event("globex"))
            received: list[str] = []
            async for response in responses:
                received.extend(event.event_id for event in response.events)
                if published in received:
                    break
            assert received == [published]
        finally:
            await responses.aclose()


async def test_the_same_access_rules_and_errors_on_both_doors(doors, stored):
    """A non-admin of globex, an acme member, a caller without a token: each gets the same answer, or the same
    code and message, from both ports."""
    globex_alice, acme_bob = doors.token("globex", "u-alice"), doors.token("acme", "u-bob")
    calls = [
        (globex_alice, "get_event", "GetEvent", pb.GetEventRequest(event_id=stored["acme/alice"][0])),
        (globex_alice, "list_events", "ListEvents", pb.ListEventsRequest(filter=pb.EventFilter(tenant="acme"))),
        (acme_bob, "list_events", "ListEvents", pb.ListEventsRequest()),
        (acme_bob, "count_events", "CountEvents", pb.CountEventsRequest()),
        (acme_bob, "get_event", "GetEvent", pb.GetEventRequest(event_id="not-a-uuid")),
        (None, "list_events", "ListEvents", pb.ListEventsRequest()),
        ("not.a.jwt", "count_events", "CountEvents", pb.CountEventsRequest()),
    ]
    outcomes = []
    async with client(doors) as http:
        for token, connect_method, grpc_method, request in calls:
            headers = auth_header(token) if token else None
            try:
                over_http = ("ok", await getattr(http, connect_method)(request, headers=headers))
            except ConnectError as error:
                over_http = (error.code.name, error.message)
            try:
                over_grpc = (
                    "ok",
                    await getattr(doors.grpc, grpc_method)(request, metadata=bearer(token) if token else None),
                )
            except grpc.aio.AioRpcError as error:
                over_grpc = (error.code().name, error.details())
            assert over_http == over_grpc, (connect_method, token)
            outcomes.append(over_http[0])
    assert outcomes == [
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "ok",
        "ok",
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    ]


# --- curl --------------------------------------------------------------------------------------------------------


@dataclass
class CurlResult:
    status: int
    content_type: str
    body: bytes


async def curl(url: str, *args: str, body: bytes = b"") -> CurlResult:
    """curl with `body` on stdin; the HTTP status and content type come back after the body."""
    assert CURL is not None, "curl is required by these tests (apt-get install curl)"
    # In a subprocess run asynchronously: the server answers from this test's event loop.
    process = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--data-binary", "@-", "-w", "\n%{http_code} %{content_type}", *args, url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate(body)
    assert process.returncode == 0, err.decode()
    payload, _, trailer = out.rpartition(b"\n")
    status, _, content_type = trailer.decode().partition(" ")
    return CurlResult(int(status), content_type, payload)


async def curl_json(doors: Doors, method: str, message: dict, token: str | None) -> CurlResult:
    headers = ["-H", "Content-Type: application/json"]
    if token:
        headers += ["-H", f"Authorization: Bearer {token}"]
    return await curl(f"{doors.url}{SERVICE_PATH}/{method}", *headers, body=json.dumps(message).encode())


def envelope(message: dict) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(data)) + data


def unenvelope(body: bytes) -> tuple[list[dict], dict]:
    """The messages of a Connect stream and its end-of-stream message."""
    messages, end, offset = [], None, 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        data = json.loads(body[offset + 5 : offset + 5 + length])
        offset += 5 + length
        if flags & 0x02:
            end = data
        else:
            messages.append(data)
    assert end is not None, "the stream has no end-of-stream message"
    return messages, end


async def curl_stream(doors: Doors, method: str, message: dict, token: str) -> tuple[list[dict], dict]:
    result = await curl(
        f"{doors.url}{SERVICE_PATH}/{method}",
        "-H", "Content-Type: application/connect+json", "-H", f"Authorization: Bearer {token}",
        body=envelope(message),
    )  # fmt: skip
    assert (result.status, result.content_type) == (200, "application/connect+json")
    return unenvelope(result.body)


async def test_sessions_ending_under_queries_answer_unavailable_over_http_too(doors, stored, sessions_ending):
    """The HTTP port maps the database's failures as the gRPC port does (api/errors.status_for): sessions that end
    under the API's pooled connections (asyncpg's InternalClientError among them) are unavailable, never internal."""
    token = doors.token(admin=True)
    codes: collections.Counter[str] = collections.Counter()
    loop = asyncio.get_running_loop()
    async with client(doors) as http, sessions_ending() as ending:
        until = loop.time() + 3
        while loop.time() < until:
            for call in (
                http.list_events(pb.ListEventsRequest(page_size=5), headers=auth_header(token)),
                http.get_event(pb.GetEventRequest(event_id=stored["acme/bob"][0]), headers=auth_header(token)),
            ):
                try:
                    await call
                    codes["ok"] += 1
                except ConnectError as error:
                    codes[error.code.name] += 1
                    assert "Traceback" not in error.message
    assert ending.ended > 20 and codes["UNAVAILABLE"] > 0, (ending.ended, codes)
    assert set(codes) <= {"ok", "UNAVAILABLE"}, codes


async def test_curl_lists_counts_gets_and_exports_in_json(doors, stored):
    token = doors.token(admin=True)
    listed = await curl_json(doors, "ListEvents", {"filter": {"tenant": "acme"}, "pageSize": 100}, token)
    assert (listed.status, listed.content_type) == (200, "application/json")
    events = json.loads(listed.body)["events"]
    assert {event["eventId"] for event in events} == set(stored["acme/alice"] + stored["acme/bob"])

    counted = await curl_json(doors, "CountEvents", {"filter": {"tenant": "acme"}, "groupBy": "GROUP_BY_ACTOR"}, token)
    assert counted.status == 200
    assert json.loads(counted.body)["total"] == "8"  # int64 is a string in protobuf JSON
    assert {group["key"]: group["count"] for group in json.loads(counted.body)["groups"]} == {
        "u-alice": "5",
        "u-bob": "3",
    }

    event_id = stored["acme/bob"][1]
    got = await curl_json(doors, "GetEvent", {"event_id": event_id}, token)  # proto field names are accepted too
    assert got.status == 200 and json.loads(got.body)["event"]["eventId"] == event_id

    export = {"filter": {"tenant": "acme"}, "format": "EXPORT_FORMAT_CSV"}
    chunks, end = await curl_stream(doors, "ExportEvents", export, token)
    assert end == {}
    grpc_request = pb.ExportEventsRequest(filter=pb.EventFilter(tenant="acme"), format=pb.EXPORT_FORMAT_CSV)
    expected = [chunk async for chunk in doors.grpc.ExportEvents(grpc_request, metadata=bearer(token))]
    csv = b"".join(base64.b64decode(chunk["data"]) for chunk in chunks)  # bytes are base64 in protobuf JSON
    assert csv == b"".join(chunk.data for chunk in expected)
    assert csv.count(b"\n") == 9  # the header and 8 events


async def test_curl_tails_a_non_admins_own_events_until_its_connect_timeout(doors, stored):
    token = doors.token("acme", "u-bob")
    # A tail never ends by itself: the Connect timeout header ends this one, with deadline_exceeded, once idle.
    result = await curl(
        f"{doors.url}{SERVICE_PATH}/TailEvents",
        "-H", "Content-Type: application/connect+json", "-H", f"Authorization: Bearer {token}",
        "-H", "Connect-Timeout-Ms: 3000",
        body=envelope({"afterPosition": "0"}),
    )  # fmt: skip
    assert (result.status, result.content_type) == (200, "application/connect+json")
    messages, end = unenvelope(result.body)
    received = [event["eventId"] for message in messages for event in message.get("events", ())]
    assert received == stored["acme/bob"]
    assert any(message.get("caughtUp") for message in messages)
    assert end["error"]["code"] == "deadline_exceeded"


async def test_curl_without_a_token_is_unauthenticated(doors):
    result = await curl_json(doors, "ListEvents", {}, None)
    assert (result.status, result.content_type) == (401, "application/json")
    assert json.loads(result.body) == {
        "code": "unauthenticated",
        "message": "missing authorization metadata: send 'authorization: Bearer <token>'",
    }


async def test_what_the_client_sent_wrong_is_a_connect_error_never_a_500(doors, caplog):
    caplog.set_level(logging.WARNING)
    token = doors.token(admin=True)
    url = f"{doors.url}{SERVICE_PATH}/ListEvents"
    authorization = ["-H", f"Authorization: Bearer {token}"]

    malformed = await curl(url, "-H", "Content-Type: application/json", *authorization, body=b'{"filter": {')
    assert (malformed.status, json.loads(malformed.body)["code"]) == (400, "invalid_argument")
    assert "unmarshal message" in json.loads(malformed.body)["message"]

    unknown_field_type = await curl(
        url, "-H", "Content-Type: application/json", *authorization, body=b'{"pageSize": "many"}'
    )
    assert (unknown_field_type.status, json.loads(unknown_field_type.body)["code"]) == (400, "invalid_argument")

    # A misspelled field or an unknown enum value is refused, naming it: ignored, it would widen the filter.
    for body, named in (
        (b'{"filter": {"actoins": ["user.delete"]}}', "actoins"),
        (b'{"filter": {"outcomes": ["OUTCOME_BOGUS"]}}', "OUTCOME_BOGUS"),
    ):
        refused = await curl(url, "-H", "Content-Type: application/json", *authorization, body=body)
        assert (refused.status, json.loads(refused.body)["code"]) == (400, "invalid_argument")
        assert named in json.loads(refused.body)["message"]

    text = await curl(url, "-H", "Content-Type: text/plain", *authorization, body=b"hello")
    assert text.status == 415  # the Connect protocol's answer to an unsupported content type

    oversized = await curl(
        url, "-H", "Content-Type: application/json", *authorization,
        body=json.dumps({"filter": {"query": "x" * (5 * 1024 * 1024)}}).encode(),
    )  # fmt: skip
    assert oversized.status == 429
    assert json.loads(oversized.body)["code"] == "resource_exhausted"
    assert "larger than configured max" in json.loads(oversized.body)["message"]

    unknown_method = await curl(
        f"{doors.url}{SERVICE_PATH}/DropEvents", "-H", "Content-Type: application/json", body=b"{}"
    )
    assert unknown_method.status == 404

    stream = ("-H", "Content-Type: application/connect+json", *authorization)
    truncated = await curl(f"{doors.url}{SERVICE_PATH}/ExportEvents", *stream, body=b"\x00\x00\x00\x00\x10{}")
    assert truncated.status == 200  # a stream's error is its end-of-stream message
    assert unenvelope(truncated.body)[1]["error"]["code"] == "invalid_argument"

    grpc_over_http1 = await curl(url, "-H", "Content-Type: application/grpc", *authorization, body=bytes(5))
    assert (grpc_over_http1.status, grpc_over_http1.body) == (
        415,
        b"gRPC needs HTTP/2 trailers, which this port does not send: call the gRPC port (AUDIT_GRPC_ADDRESS), or use "
        b"Connect or gRPC-Web here\n",
    )
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


async def test_the_connect_client_gets_codes_not_http_statuses(doors):
    async with client(doors, json_codec=True) as http:
        with pytest.raises(ConnectError) as raised:
            await http.list_events(pb.ListEventsRequest(order=99), headers=auth_header(doors.token(admin=True)))
    assert raised.value.code is Code.INVALID_ARGUMENT
    assert raised.value.message == "order: unknown value 99"


async def test_an_address_that_cannot_be_listened_on_is_a_start_up_error_naming_the_variable(service_env):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = service_env | {"AUDIT_HTTP_ADDRESS": f"127.0.0.1:{taken.getsockname()[1]}"}
        with pytest.raises(ConfigError) as raised:
            async with serving_api(load_config(env=env)):
                pass
    assert raised.value.setting == "AUDIT_HTTP_ADDRESS"
    assert "cannot listen on 127.0.0.1:" in str(raised.value)


def _server_side_of(client: socket.socket) -> socket.socket:
    """This process's socket at the other end of `client`'s connection (the server runs in the test's process)."""
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
        candidate = socket.socket(fileno=os.dup(int(fd)))
        with contextlib.suppress(OSError):  # not connected
            if candidate.getpeername() == client.getsockname():
                return candidate
        candidate.close()
    raise AssertionError(f"no socket of this process is connected to {client.getsockname()}")


async def test_connections_to_the_http_port_send_small_writes_at_once(doors):
    # A keep-alive client delays its ACK ~40 ms; with Nagle's algorithm on, the server's last small write of each
    # answer waits for it. So every connection to the port has TCP_NODELAY.
    host, port = doors.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST {SERVICE_PATH}/ListEvents HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 ")  # accepted and answered
        with _server_side_of(writer.get_extra_info("socket")) as server_side:
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        writer.close()
        await writer.wait_closed()


async def test_at_shutdown_a_tail_over_http_ends_with_unavailable_as_over_grpc(service_env, database):
    await store_events(database, [make_event("acme") for _ in range(3)])
    config = load_config(env=service_env | {"AUDIT_HTTP_ADDRESS": "127.0.0.1:0"})
    async with serving_api(config) as server:
        assert server.http is not None
        http = AuditServiceClient(f"http://127.0.0.1:{server.http.port}", codec=google_protobuf_json_codec())
        responses = http.tail_events(pb.TailEventsRequest(after_position=0))
        received: list[str] = []
        async for response in responses:
            received.extend(event.event_id for event in response.events)
            if response.caught_up:
                break
        assert len(received) == 3
        stopping = asyncio.create_task(server.stop(config.api.shutdown_grace_seconds))
        with pytest.raises(ConnectError) as raised:
            async for response in responses:
                assert not response.events
        await stopping
        await http.close()
    assert raised.value.code is Code.UNAVAILABLE


def readme_shell_functions() -> str:
    """The envelope() and unenvelope() shell functions of the README's HTTP (Connect) section, as written there."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("envelope() {"))
    return "\n".join(lines[start : start + 3])


async def test_the_readme_shell_functions_export_and_tail_with_curl(doors, stored):
    token = doors.token("acme", "u-bob")
    script = (
        readme_shell_functions()
        + """
STREAM=(-H "Authorization: Bearer $AUDIT_TOKEN" -H "Content-Type: application/connect+json" --data-binary @- -N)
EXPORT='{"filter": {"tenant": "acme"}, "format": "EXPORT_FORMAT_NDJSON"}'
envelope "$EXPORT" | curl -sS "${STREAM[@]}" $API/ExportEvents | unenvelope
echo ---
envelope '{"afterPosition": "0"}' | curl -sS "${STREAM[@]}" -H 'Connect-Timeout-Ms: 3000' $API/TailEvents | unenvelope
"""
    )
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script,
        env={"PATH": os.environ["PATH"], "AUDIT_TOKEN": token, "API": f"{doors.url}{SERVICE_PATH}"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    exported, tailed = (part.strip().splitlines() for part in out.decode().split("---\n"))
    assert exported[-1] == "{}"
    ndjson = b"".join(base64.b64decode(json.loads(line)["data"]) for line in exported[:-1])
    assert [json.loads(line)["eventId"] for line in ndjson.splitlines()] == stored["acme/bob"]  # bob's own only
    assert json.loads(tailed[-1])["error"]["code"] == "deadline_exceeded"
    tailed_ids = [event["eventId"] for line in tailed[:-1] for event in json.loads(line).get("events", ())]
    assert tailed_ids == stored["acme/bob"]


async def test_with_the_grpc_ports_tls_files_the_http_port_serves_https_and_follows_renewed_files(
    service_env, database, tmp_path
):
    authority = CertificateAuthority(tmp_path / "pki", "first")
    served = tmp_path / "served"
    served.mkdir()
    cert_file, key_file = served / "tls.crt", served / "tls.key"
    first = authority.issue("localhost", server=True)
    replace_file(first.cert, cert_file)
    replace_file(first.key, key_file)
    ids = await store_events(database, [make_event("acme") for _ in range(2)])
    env = service_env | {
        "AUDIT_HTTP_ADDRESS": "127.0.0.1:0",
        "AUDIT_GRPC_TLS_CERT_FILE": str(cert_file),
        "AUDIT_GRPC_TLS_KEY_FILE": str(key_file),
    }
    async with serving_api(load_config(env=env)) as server:
        assert server.http is not None
        https = f"https://localhost:{server.http.port}{SERVICE_PATH}/ListEvents"
        json_body = ("-H", "Content-Type: application/json")
        listed = await curl(https, "--cacert", str(authority.cert), *json_body, body=b"{}")
        assert listed.status == 200
        assert sorted(event["eventId"] for event in json.loads(listed.body)["events"]) == sorted(ids)
        # TLS only, and only with a certificate the client trusts.
        assert (await curl_exit_code(f"http://localhost:{server.http.port}{SERVICE_PATH}/ListEvents", *json_body)) != 0
        assert (await curl_exit_code(https, *json_body)) != 0

        renewed_authority = CertificateAuthority(tmp_path / "renewed-pki", "renewed")
        renewed = renewed_authority.issue("localhost", server=True)
        replace_file(renewed.key, key_file)
        replace_file(renewed.cert, cert_file)
        listed = await curl(https, "--cacert", str(renewed_authority.cert), *json_body, body=b"{}")
        assert listed.status == 200, "the renewed certificate is not served"


async def test_with_a_client_ca_the_http_port_requires_a_client_certificate_of_it(service_env, tmp_path):
    authority = CertificateAuthority(tmp_path / "pki", "first")
    server_cert, client_cert = authority.issue("localhost", server=True), authority.issue("reader", server=False)
    env = service_env | {
        "AUDIT_HTTP_ADDRESS": "127.0.0.1:0",
        "AUDIT_GRPC_TLS_CERT_FILE": str(server_cert.cert),
        "AUDIT_GRPC_TLS_KEY_FILE": str(server_cert.key),
        "AUDIT_GRPC_TLS_CLIENT_CA_FILE": str(authority.cert),
    }
    async with serving_api(load_config(env=env)) as server:
        assert server.http is not None
        https = f"https://localhost:{server.http.port}{SERVICE_PATH}/CountEvents"
        trust = ("--cacert", str(authority.cert), "-H", "Content-Type: application/json")
        counted = await curl(https, *trust, "--cert", str(client_cert.cert), "--key", str(client_cert.key), body=b"{}")
        assert (counted.status, json.loads(counted.body)) == (200, {"source": "COUNT_SOURCE_PROJECTION"})
        assert (await curl_exit_code(https, *trust)) != 0, "a client without a certificate was served"


async def curl_exit_code(url: str, *args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--data-binary", "{}", *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await process.communicate()
    return process.returncode


async def test_a_client_that_goes_away_leaves_the_live_feed(service_env, database):
    config = load_config(env=service_env | {"AUDIT_HTTP_ADDRESS": "127.0.0.1:0"})
    async with serving_api(config) as server:
        assert server.http is not None and server.feed is not None
        async with AuditServiceClient(f"http://127.0.0.1:{server.http.port}") as http:
            responses = http.tail_events(pb.TailEventsRequest())
            async for response in responses:
                if response.caught_up:
                    break
            assert server.feed.subscriber_count == 1
            await responses.aclose()

            async def left() -> bool:
                return server.feed.subscriber_count == 0

            await eventually(left, what="the tail leaving the feed after its client went away")
