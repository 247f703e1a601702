"""SyslogSender against a real rsyslog over TLS (tests/syslog_daemon.py): every message arrives with its structured
data and its UTF-8 intact, parsed by rsyslog as RFC 5424; a restart of rsyslog mid-stream costs a reconnect,
not messages; a receiver the CA does not vouch for, or an address the guard refuses, gets nothing."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from audit.v1 import event_pb2
from audit_service.core.delivery_formats import SD_ID, octet_counted, syslog_message
from audit_service.core.destination_urls import AddressPolicy
from audit_service.delivery.syslog_sender import SyslogSender
from audit_service.errors import DeliveryError
from google.protobuf import json_format

from ..certificates import CertificateAuthority
from ..factories import make_event, stamp
from ..syslog_daemon import RsyslogDaemon, rsyslogd_binary

PRIVATE_OK = AddressPolicy(allow_private=True)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[RsyslogDaemon]:
    daemon = RsyslogDaemon(tmp_path / "rsyslog")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def events(first_position: int, count: int) -> list[event_pb2.AuditEvent]:
    batch = []
    for offset in range(count):
        event = stamp(make_event("acme", message=f"Ereignis {first_position + offset}: grüße 😀 𝄞"))
        event.actor.slug = 'ren"é] \\ 😀'
        event.position = first_position + offset
        batch.append(event)
    return batch


def messages(batch: list[event_pb2.AuditEvent]) -> list[bytes]:
    return [syslog_message(event, app_name="audit-log", hostname="audit-1", facility=13) for event in batch]


async def send_until_sent(sender: SyslogSender, frames: list[bytes]) -> int:
    """Sends as the destinations' engine does: again after a retryable error. Returns the failed attempts."""
    for failures in range(10):
        try:
            await sender.send(frames)
            return failures
        except DeliveryError as error:
            assert error.retryable, error.reason
            await asyncio.sleep(0.2)
    raise AssertionError("not sent after 10 attempts")


FIELDS = re.compile(rb"(\d+)\|([^|]+)\|([^|]+)\|([^|]+)\|([^|]+)\|([^|]+)\|(\[.*\])\|(.*)\Z")


async def test_every_message_arrives_parsed_with_its_structured_data_and_utf8(rsyslog: RsyslogDaemon) -> None:
    batch = events(1, 20)
    sent = messages(batch)
    sender = SyslogSender("localhost", rsyslog.port, policy=PRIVATE_OK, ca_pem=rsyslog.ca_pem)
    try:
        await sender.send([octet_counted(message) for message in sent[:5]])
        await sender.send([octet_counted(message) for message in sent[5:]])
    finally:
        await sender.aclose()

    raw = await asyncio.to_thread(rsyslog.wait_for_lines, "raw.log", len(sent))
    assert raw == sent  # byte for byte, in order: BOM, 4-byte UTF-8 and escapes intact

    fields = await asyncio.to_thread(rsyslog.wait_for_lines, "fields.log", len(sent))
    for line, event in zip(fields, batch, strict=True):
        match = FIELDS.match(line)
        assert match is not None, line
        pri, _, hostname, app, procid, msgid, structured, msg = match.groups()
        assert (int(pri), hostname, app, procid, msgid) == (
            13 * 8 + 6,
            b"audit-1",
            b"audit-log",
            b"-",
            event.action.encode(),
        )
        assert structured.decode() == (
            f'[{SD_ID} tenant="acme" event_id="{event.event_id}" position="{event.position}" '
            f'actor="ren\\"é\\] \\\\ 😀" resource="api_key/{event.resource.id}"]'
        )
        assert msg.startswith(b"\xef\xbb\xbf")
        assert json_format.ParseDict(orjson.loads(msg[3:]), event_pb2.AuditEvent()) == event
    assert sender.connections == 1


async def test_a_restart_of_rsyslog_mid_stream_costs_a_reconnect_not_messages(rsyslog: RsyslogDaemon) -> None:
    before, after = messages(events(1, 5)), messages(events(6, 5))
    sender = SyslogSender("localhost", rsyslog.port, policy=PRIVATE_OK, ca_pem=rsyslog.ca_pem)
    try:
        await sender.send([octet_counted(message) for message in before])
        await asyncio.to_thread(rsyslog.wait_for_lines, "raw.log", len(before))

        await asyncio.to_thread(rsyslog.restart)
        for message in after:
            await send_until_sent(sender, [octet_counted(message)])
    finally:
        await sender.aclose()

    raw = await asyncio.to_thread(rsyslog.wait_for_lines, "raw.log", len(before) + len(after))
    assert raw == before + after
    assert sender.connections == 2
    assert rsyslog.starts == 2


async def test_a_receiver_the_ca_does_not_vouch_for_gets_nothing(rsyslog: RsyslogDaemon, tmp_path: Path) -> None:
    other_ca = CertificateAuthority(tmp_path / "other", "other").cert.read_text()
    sender = SyslogSender("localhost", rsyslog.port, policy=PRIVATE_OK, ca_pem=other_ca)
    with pytest.raises(DeliveryError, match="could not connect") as raised:
        await sender.send([octet_counted(message) for message in messages(events(1, 1))])
    await sender.aclose()
    assert raised.value.retryable
    assert rsyslog.lines("raw.log") == []


async def test_a_server_name_the_certificate_does_not_hold_gets_nothing(rsyslog: RsyslogDaemon) -> None:
    sender = SyslogSender(
        "127.0.0.1", rsyslog.port, policy=PRIVATE_OK, ca_pem=rsyslog.ca_pem, server_name="siem.example.com"
    )
    with pytest.raises(DeliveryError, match="could not connect"):
        await sender.send([octet_counted(message) for message in messages(events(1, 1))])
    await sender.aclose()
    assert rsyslog.lines("raw.log") == []


async def test_a_loopback_receiver_is_refused_unless_private_destinations_are_allowed(rsyslog: RsyslogDaemon) -> None:
    sender = SyslogSender("localhost", rsyslog.port, policy=AddressPolicy(), ca_pem=rsyslog.ca_pem)
    with pytest.raises(DeliveryError, match="refused") as raised:
        await sender.send([octet_counted(message) for message in messages(events(1, 1))])
    await sender.aclose()
    assert not raised.value.retryable and sender.connections == 0


def test_a_missing_rsyslogd_fails_the_test_instead_of_skipping_it(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="rsyslog-openssl"):
        rsyslogd_binary(search_path=str(tmp_path))


async def test_a_receiver_that_never_reads_is_a_retryable_timeout_not_a_hang(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "pki", "silent")
    issued = authority.issue("silent", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    done = threading.Event()

    def accept_and_never_read() -> None:
        connection, _ = listener.accept()
        held.append(context.wrap_socket(connection, server_side=True))  # the handshake; then nothing is read
        done.wait(60)

    thread = threading.Thread(target=accept_and_never_read, daemon=True)
    thread.start()
    sender = SyslogSender(
        "127.0.0.1",
        listener.getsockname()[1],
        policy=PRIVATE_OK,
        ca_pem=authority.cert.read_text(),
        server_name="localhost",
        write_timeout=1,
    )
    frames = [octet_counted(b"x" * 60_000) for _ in range(500)]  # 30 MB a send: the kernel's buffers fill up
    try:
        with pytest.raises(DeliveryError) as raised:
            for _ in range(20):
                await asyncio.wait_for(sender.send(frames), timeout=30)  # the sender's own timeout ends it, not this
        assert raised.value.retryable and "timed out" in raised.value.reason, raised.value.reason
    finally:
        await sender.aclose()
        done.set()
        thread.join(10)
        for connection in held:
            connection.close()
        listener.close()
