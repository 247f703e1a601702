"""DestinationService and the alerts' RPCs attacked as a hostile user would, on a real gRPC server with
authentication on and real PostgreSQL: hosts no resolver can encode (INVALID_ARGUMENT naming the field, never
INTERNAL), another tenant's or another caller's page tokens and cursors (INVALID_ARGUMENT naming them), another
tenant on every RPC (NOT_FOUND or PERMISSION_DENIED, never data), header values kept out of every answer and of
the log through an update with an empty mask, and a deleted then recreated destination that an old delivery
still in flight must not move."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import destinations_pb2 as dpb
from audit.v1 import event_pb2
from audit_client.errors import InvalidEventError
from audit_client.validation import Limits
from audit_service.core.decode import decode_event
from audit_service.core.destination_urls import AddressPolicy
from audit_service.delivery.http_sender import HttpSender
from audit_service.errors import DeliveryError
from audit_service.store import delivery_state
from audit_service.store.append import LogAppender
from audit_service.store.config_changes import Actor
from audit_service.store.destinations import create_destination, delete_destination, replay_destination
from google.protobuf import field_mask_pb2

from ..conftest import bearer, failure
from ..factories import make_event, stamp

URL = "https://hooks.example.com/audit"
SECRET = "whsec_" + "c2VjcmV0LWtleS1vZi10aGUtdGVzdHMtMzJieXRlcyE="
ADMIN = Actor("u-admin")


async def first_of_stream(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    return error.value.code(), error.value.details()


@pytest.mark.parametrize(
    ("destination", "field"),
    [
        (dpb.Destination(name="x", webhook=dpb.WebhookTarget(url=f"https://{'a' * 64}.example.com/")), "webhook.url"),
        (dpb.Destination(name="x", http=dpb.HttpTarget(url="https://hooks..example.com/")), "http.url"),
        (dpb.Destination(name="x", webhook=dpb.WebhookTarget(url="https://\U0001f600.example.com/")), "webhook.url"),
        (dpb.Destination(name="x", syslog=dpb.SyslogTarget(address=f"{'s' * 64}.example.com:6514")), "syslog.address"),
        (
            dpb.Destination(name="x", webhook=dpb.WebhookTarget(url=URL), headers={"Authorization": "Bearer t "}),
            "headers['Authorization']",
        ),
    ],
)
async def test_a_target_that_could_never_be_reached_is_refused_naming_the_field(
    secured, destinations, destination, field
):
    """These used to be INTERNAL (getaddrinfo's UnicodeError at the save-time check) or accepted, then failed
    at every delivery."""
    admin = secured.token("acme", "u-admin", admin=True)
    code, details = await failure(
        destinations.CreateDestination(dpb.CreateDestinationRequest(destination=destination), metadata=bearer(admin))
    )
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, f"destination.{field}"), details


async def test_another_tenants_admin_gets_nothing_from_any_rpc(secured, destinations, rules):
    acme = secured.token("acme", "u-admin", admin=True)
    globex = secured.token("globex", "u-root", admin=True)
    await destinations.CreateDestination(
        dpb.CreateDestinationRequest(destination=dpb.Destination(name="hook", webhook=dpb.WebhookTarget(url=URL))),
        metadata=bearer(acme),
    )
    not_found = [
        destinations.UpdateDestination(
            dpb.UpdateDestinationRequest(
                destination=dpb.Destination(name="hook", description="pwned"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=bearer(globex),
        ),
        destinations.ResumeDestination(dpb.ResumeDestinationRequest(name="hook"), metadata=bearer(globex)),
        destinations.ReplayDestination(
            dpb.ReplayDestinationRequest(name="hook", after_position=0), metadata=bearer(globex)
        ),
    ]
    for call in not_found:
        code, details = await failure(call)
        assert code == grpc.StatusCode.NOT_FOUND and "pwned" not in details
    denied = [
        destinations.CreateDestination(
            dpb.CreateDestinationRequest(
                destination=dpb.Destination(name="h2", tenant="acme", webhook=dpb.WebhookTarget(url=URL))
            ),
            metadata=bearer(globex),
        ),
        destinations.UpdateDestination(
            dpb.UpdateDestinationRequest(destination=dpb.Destination(name="hook", tenant="acme")),
            metadata=bearer(globex),
        ),
        destinations.ListDeliveryAttempts(
            dpb.ListDeliveryAttemptsRequest(tenant="acme", name="hook"), metadata=bearer(globex)
        ),
        rules.ListAlerts(rules_pb.ListAlertsRequest(tenant="acme"), metadata=bearer(globex)),
        rules.ListAlerts(rules_pb.ListAlertsRequest(), metadata=bearer(secured.token("acme", "u-bob"))),
    ]
    for call in denied:
        assert (await failure(call))[0] == grpc.StatusCode.PERMISSION_DENIED
    for request, token in (
        (rules_pb.WatchAlertsRequest(tenant="acme"), globex),
        (rules_pb.WatchAlertsRequest(), secured.token("acme", "u-bob")),
    ):
        code, _ = await first_of_stream(rules.WatchAlerts(request, metadata=bearer(token)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    got = await destinations.GetDestination(dpb.GetDestinationRequest(name="hook"), metadata=bearer(acme))
    assert got.destination.description == "" and got.destination.revision == 1


async def test_page_tokens_and_cursors_of_another_tenant_or_caller_are_refused_naming_them(
    secured, destinations, rules, owner
):
    acme = secured.token("acme", "u-admin", admin=True)
    acme_other = secured.token("acme", "u-other-admin", admin=True)
    globex = secured.token("globex", "u-root", admin=True)
    for name in ("a-hook", "b-hook"):
        await destinations.CreateDestination(
            dpb.CreateDestinationRequest(destination=dpb.Destination(name=name, webhook=dpb.WebhookTarget(url=URL))),
            metadata=bearer(acme),
        )
        await destinations.CreateDestination(
            dpb.CreateDestinationRequest(destination=dpb.Destination(name=name, webhook=dpb.WebhookTarget(url=URL))),
            metadata=bearer(globex),
        )
    for n in (1, 2):
        await owner.execute(
            "INSERT INTO delivery_attempts (tenant, destination, delivery_id, attempt, outcome, duration_ms, items) "
            "VALUES ('acme', 'a-hook', $1, 1, 1, 5, 1), ('globex', 'a-hook', $1, 1, 1, 5, 1)",
            f"alert-{n}",
        )
    listed = await destinations.ListDestinations(dpb.ListDestinationsRequest(page_size=1), metadata=bearer(acme))
    attempts = await destinations.ListDeliveryAttempts(
        dpb.ListDeliveryAttemptsRequest(name="a-hook", page_size=1), metadata=bearer(acme)
    )
    assert listed.next_page_token and attempts.next_page_token
    watch = rules.WatchAlerts(rules_pb.WatchAlertsRequest(), metadata=bearer(acme))
    cursor = (await watch.read()).cursor
    watch.cancel()
    for token in (globex, acme_other):
        code, details = await failure(
            destinations.ListDestinations(
                dpb.ListDestinationsRequest(page_token=listed.next_page_token), metadata=bearer(token)
            )
        )
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "page_token"), details
        code, details = await failure(
            destinations.ListDeliveryAttempts(
                dpb.ListDeliveryAttemptsRequest(name="a-hook", page_token=attempts.next_page_token),
                metadata=bearer(token),
            )
        )
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "page_token"), details
        code, details = await first_of_stream(
            rules.WatchAlerts(rules_pb.WatchAlertsRequest(after_cursor=cursor), metadata=bearer(token))
        )
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "after_cursor"), details
    for token in (attempts.next_page_token, cursor):  # a token of one listing is no token of another
        code, details = await failure(
            rules.ListAlerts(rules_pb.ListAlertsRequest(page_token=token), metadata=bearer(acme))
        )
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "page_token"), details
    code, details = await failure(
        destinations.ListDeliveryAttempts(
            dpb.ListDeliveryAttemptsRequest(name="b-hook", page_token=attempts.next_page_token), metadata=bearer(acme)
        )
    )
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "page_token"), details


async def test_an_update_with_an_empty_mask_keeps_header_values_out_of_answers_and_the_log(
    secured, destinations, owner
):
    admin = secured.token("acme", "u-admin", admin=True)
    await destinations.CreateDestination(
        dpb.CreateDestinationRequest(
            destination=dpb.Destination(
                name="hook", webhook=dpb.WebhookTarget(url=URL), headers={"Authorization": "Bearer first-credential"}
            )
        ),
        metadata=bearer(admin),
    )
    updated = await destinations.UpdateDestination(
        dpb.UpdateDestinationRequest(
            destination=dpb.Destination(
                name="hook",
                webhook=dpb.WebhookTarget(url=URL + "/v2"),
                headers={"Authorization": "Bearer second-credential"},
                secret=SECRET,  # not in the (empty) mask: ignored, never echoed
            )
        ),
        metadata=bearer(admin),
    )
    got = await destinations.GetDestination(dpb.GetDestinationRequest(name="hook"), metadata=bearer(admin))
    listed = await destinations.ListDestinations(dpb.ListDestinationsRequest(), metadata=bearer(admin))
    for destination in (updated.destination, got.destination, *listed.destinations):
        assert dict(destination.headers) == {"Authorization": "[MASKED]"} and destination.secret == ""
        assert destination.webhook.url == URL + "/v2"
    stored = await owner.fetch(
        "SELECT e::text AS row FROM audit_events e UNION ALL SELECT h::text FROM audit_resource_heads h "
        "UNION ALL SELECT d::text FROM destinations d UNION ALL SELECT s::text FROM destination_state s"
    )
    text = "".join(row["row"] for row in stored)
    assert "first-credential" not in text and "second-credential" not in text and SECRET[6:] not in text
    kept = await owner.fetchrow("SELECT secret, headers->>'Authorization' AS auth FROM destination_secrets")
    assert kept["auth"] == "Bearer second-credential" and kept["secret"] != SECRET


async def test_a_delivery_in_flight_cannot_move_the_checkpoint_of_a_destination_deleted_and_recreated(app):
    """The generation an advance names must be unique for the life of a subscription row: DEFAULT 1 made a
    recreated destination's subscription take the checkpoint of its predecessor's delivery that finished late."""
    destination = dpb.Destination(name="stream", tenant="acme", http=dpb.HttpTarget(url=URL))
    await create_destination(app, LogAppender(), destination, ADMIN, SECRET)
    old = await delivery_state.state_of(app, "acme", "stream")
    await delete_destination(app, LogAppender(), "acme", "stream", 0, ADMIN)
    await create_destination(app, LogAppender(), destination, ADMIN, SECRET)
    new = await delivery_state.state_of(app, "acme", "stream")
    assert not await delivery_state.advance(app, "acme", "stream", old.generation, new.checkpoint + 7)
    assert (await delivery_state.state_of(app, "acme", "stream")).checkpoint == new.checkpoint
    # Nor may a replay of the old one hand out a generation an old delivery holds.
    await replay_destination(app, LogAppender(), "acme", "stream", after_position=0, since=None, actor=ADMIN)
    replayed = await delivery_state.state_of(app, "acme", "stream")
    assert replayed.generation not in (old.generation, new.generation)
    assert not await delivery_state.advance(app, "acme", "stream", new.generation, 5)


@pytest.mark.parametrize(
    ("resource_type", "action"),
    [
        ("audit.destination", "doc.read"),
        ("AUDIT.Destination", "doc.read"),
        ("doc", "audit.destination.create"),
        ("doc", "Audit.Destination.replay"),
        ("Audit.Alert_Rule", "doc.read"),
    ],
)
def test_producers_cannot_publish_destination_change_events(resource_type: str, action: str):
    """The destinations' read model is rebuilt from their resource streams (rebuild-projections): a producer
    that could publish one would make a destination appear, pointing where it likes."""
    event = make_event("acme", action=action, resource=event_pb2.Resource(type=resource_type, id="hook"))
    event.change.after.update({"name": "hook", "webhook": {"url": "https://attacker.example.com/"}})
    with pytest.raises(InvalidEventError) as error:
        decode_event(stamp(event).SerializeToString(), None, now_seconds=event.occurred_at.seconds, limits=Limits())
    assert error.value.field in ("resource.type", "action")


async def test_a_receiver_that_accepts_and_never_answers_times_out_without_holding_the_others():
    """A webhook receiver that takes the connection and never answers: the attempt ends at the timeout as a
    retryable failure, while a request to a receiver that answers goes through at the same time."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1 << 16)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    quick = await asyncio.start_server(answer, "127.0.0.1", 0)
    silent_port, quick_port = silent.sockets[0].getsockname()[1], quick.sockets[0].getsockname()[1]
    try:
        async with HttpSender(policy=AddressPolicy(allow_private=True), timeout=1.0, connect_timeout=1.0) as http:
            stuck = asyncio.create_task(http.send(f"http://127.0.0.1:{silent_port}/hook", b"{}", {"X-A": "secret-v"}))
            assert await http.send(f"http://127.0.0.1:{quick_port}/hook", b"{}", {}) == 204
            with pytest.raises(DeliveryError) as error:
                await stuck
        assert error.value.retryable and "timed out" in error.value.reason and "secret-v" not in error.value.reason
        assert held  # it did connect: the timeout is the answer's, not the connection's
    finally:
        for writer in held:
            writer.close()
        silent.close()
        quick.close()
