"""HttpSender against real HTTP(S) receivers (aiohttp servers on loopback): signed batches arrive and verify with
the Standard Webhooks reference library; the receiver's answers and silences become the right DeliveryError;
the SSRF guard decides at every connection and the TLS name check stays the URL's."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from audit_service.core.delivery_formats import http_batch_body, new_webhook_secret, sign_webhook
from audit_service.core.destination_urls import AddressPolicy
from audit_service.delivery.http_sender import HttpSender
from audit_service.devstack.processes import free_port
from audit_service.errors import DeliveryError
from standardwebhooks.webhooks import Webhook

from ..certificates import CertificateAuthority
from ..factories import make_event, stamp
from ..http_receiver import receiving

PRIVATE_OK = AddressPolicy(allow_private=True)
SECRET = "s3cr3t-token-value"


def events(count: int, first_position: int = 1):
    batch = []
    for offset in range(count):
        event = stamp(make_event("acme", message="ünïcode 😀"))
        event.position = first_position + offset
        batch.append(event)
    return batch


def fixed_resolver(*answers: list[str]) -> Callable:
    """A resolver that gives each answer in turn (the last one from then on) and counts the look-ups."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


async def test_signed_batches_arrive_in_order_and_verify_with_the_reference_library() -> None:
    secret = new_webhook_secret()
    batches = [events(3, 1), events(2, 4)]
    async with receiving() as receiver, HttpSender(policy=PRIVATE_OK) as sender:
        url = f"http://127.0.0.1:{receiver.port}/ingest?token={SECRET}"
        for number, batch in enumerate(batches):
            body = http_batch_body(batch, "dest-1")
            headers = {
                "content-type": "application/json",
                **sign_webhook(secret, f"msg-{number}", int(time.time()), body),
            }
            await sender.send(url, body, headers)

    assert [r.path for r in receiver.requests] == ["/ingest", "/ingest"]
    assert receiver.requests[0].query == f"token={SECRET}"
    positions = []
    for request in receiver.requests:
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["destination"] == "dest-1"
        positions += [int(event["position"]) for event in payload["events"]]
        assert {event["message"] for event in payload["events"]} == {"ünïcode 😀"}
    assert positions == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_a_server_error_or_a_please_wait_is_retryable(status: int) -> None:
    async with receiving() as receiver, HttpSender(policy=PRIVATE_OK) as sender:
        receiver.status = status
        with pytest.raises(DeliveryError) as raised:
            await sender.send(f"http://127.0.0.1:{receiver.port}/x?token={SECRET}", b"{}", {"authorization": SECRET})
    assert raised.value.retryable and raised.value.status == status
    assert str(status) in raised.value.reason and SECRET not in raised.value.reason
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 413])
async def test_a_client_error_is_not_retryable(status: int) -> None:
    async with receiving() as receiver, HttpSender(policy=PRIVATE_OK) as sender:
        receiver.status = status
        with pytest.raises(DeliveryError) as raised:
            await sender.send(f"http://127.0.0.1:{receiver.port}/x?token={SECRET}", b"{}", {"authorization": SECRET})
    assert not raised.value.retryable and raised.value.status == status
    assert SECRET not in raised.value.reason


async def test_a_redirect_is_not_followed() -> None:
    async with receiving() as receiver, HttpSender(policy=PRIVATE_OK) as sender:
        receiver.status = 307
        with pytest.raises(DeliveryError) as raised:
            await sender.send(f"http://127.0.0.1:{receiver.port}/hook", b"{}", {})
    assert (raised.value.retryable, raised.value.status) == (False, 307)
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_a_receiver_that_never_answers_is_a_retryable_timeout() -> None:
    async with receiving() as receiver, HttpSender(policy=PRIVATE_OK, timeout=0.5) as sender:
        receiver.hang = True
        with pytest.raises(DeliveryError) as raised:
            await sender.send(f"http://127.0.0.1:{receiver.port}/x?token={SECRET}", b"{}", {"authorization": SECRET})
    assert raised.value.retryable and raised.value.status is None
    assert "timed out" in raised.value.reason and SECRET not in raised.value.reason
    assert len(receiver.requests) == 1


async def test_nothing_listening_is_a_retryable_connection_error() -> None:
    async with HttpSender(policy=PRIVATE_OK) as sender:
        with pytest.raises(DeliveryError) as raised:
            await sender.send(f"http://127.0.0.1:{free_port()}/x?token={SECRET}", b"{}", {"authorization": SECRET})
    assert raised.value.retryable and "could not connect" in raised.value.reason
    assert SECRET not in raised.value.reason


async def test_loopback_is_refused_unless_the_operator_allows_private_destinations() -> None:
    async with receiving() as receiver, HttpSender(policy=AddressPolicy()) as sender:
        with pytest.raises(DeliveryError, match="private") as raised:
            await sender.send(f"http://127.0.0.1:{receiver.port}/x", b"{}", {})
    assert not raised.value.retryable
    assert receiver.requests == []


async def test_the_services_own_port_is_refused_even_with_private_destinations_allowed() -> None:
    async with receiving() as receiver:
        policy = AddressPolicy(allow_private=True, own_ports=frozenset({receiver.port}))
        async with HttpSender(policy=policy) as sender:
            with pytest.raises(DeliveryError, match="own port"):
                await sender.send(f"http://localhost:{receiver.port}/x", b"{}", {})
    assert receiver.requests == []


async def test_a_refused_url_is_not_sent() -> None:
    async with HttpSender(policy=PRIVATE_OK) as sender:
        with pytest.raises(DeliveryError, match="user or password") as raised:
            await sender.send(f"http://user:{SECRET}@127.0.0.1:9/x", b"{}", {})
    assert not raised.value.retryable and SECRET not in raised.value.reason


async def test_the_sender_connects_to_the_checked_address_and_keeps_the_name_in_host() -> None:
    # receiver.test resolves nowhere but in this resolver: a connection by name instead of by checked address
    # would fail.
    async with receiving() as receiver:
        resolver = fixed_resolver(["127.0.0.1"])
        async with HttpSender(policy=PRIVATE_OK, resolver=resolver) as sender:
            await sender.send(f"http://receiver.test:{receiver.port}/x", b"{}", {})
    assert receiver.requests[0].headers["Host"] == f"receiver.test:{receiver.port}"
    assert resolver.calls == ["receiver.test"]


async def test_a_name_rebound_to_a_metadata_address_is_refused_at_the_next_connection() -> None:
    async with receiving() as receiver:
        receiver.close_connections = True  # every request opens a new connection, so looks the name up again
        resolver = fixed_resolver(["127.0.0.1"], ["127.0.0.1", "169.254.169.254"])
        async with HttpSender(policy=PRIVATE_OK, resolver=resolver) as sender:
            await sender.send(f"http://rebinding.test:{receiver.port}/x", b"first", {})
            with pytest.raises(DeliveryError, match=r"169\.254\.169\.254") as raised:
                await sender.send(f"http://rebinding.test:{receiver.port}/x", b"second", {})
    assert not raised.value.retryable
    assert [r.body for r in receiver.requests] == [b"first"]
    assert resolver.calls == ["rebinding.test", "rebinding.test"]


@pytest.fixture
def server_tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    authority = CertificateAuthority(tmp_path / "pki", "receiver")
    issued = authority.issue("receiver", server=True)  # for localhost and 127.0.0.1
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    return authority.cert, context


async def test_https_checks_the_urls_name_while_connecting_to_the_checked_address(server_tls) -> None:
    ca_file, context = server_tls
    async with receiving(context) as receiver:
        resolver = fixed_resolver(["127.0.0.1"])
        async with HttpSender(
            policy=PRIVATE_OK, resolver=resolver, verify=ssl.create_default_context(cafile=ca_file)
        ) as sender:
            await sender.send(f"https://localhost:{receiver.port}/tls", b"{}", {})
            # Same address, a name the certificate does not hold: refused by the hostname check.
            with pytest.raises(DeliveryError) as raised:
                await sender.send(f"https://other.test:{receiver.port}/tls", b"{}", {})
    assert raised.value.retryable and "could not connect" in raised.value.reason
    assert [r.path for r in receiver.requests] == ["/tls"]
    assert orjson.loads(receiver.requests[0].body) == {}
