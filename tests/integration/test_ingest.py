"""Publish through the client, ingest with the worker, read back over gRPC: real NATS, PostgreSQL and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging

import audit_client
import nats
import nats.js.errors
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_client import Limits
from audit_service.ingest.streams import provision
from google.protobuf import json_format
from opentelemetry.sdk.trace import TracerProvider

from ..conftest import eventually
from ..factories import make_event, stamp


async def stored_count(owner) -> int:
    return await owner.fetchval("SELECT count(*) FROM audit_events")


async def list_all(
    api, tenant: str = "", order=pb.ORDER_OLDEST_FIRST, page_size: int = 50
) -> list[event_pb2.AuditEvent]:
    events, token = [], ""
    while True:
        page = await api.ListEvents(
            pb.ListEventsRequest(
                filter=pb.EventFilter(tenant=tenant), page_size=page_size, page_token=token, order=order
            )
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def test_published_events_are_stored_once_in_commit_order_with_their_trace_ids(
    publisher, start_worker, api, owner
):
    tracer = TracerProvider().get_tracer("producer")
    expected: dict[str, tuple[str, str]] = {}

    async def produce(i: int) -> None:
        with tracer.start_as_current_span(f"rotate-key-{i}") as span:
            ack = await publisher.publish(make_event(tenant=("acme", "globex")[i % 2]))
            context = span.get_span_context()
            expected[ack.event_id] = (format(context.trace_id, "032x"), format(context.span_id, "016x"))

    await start_worker()
    await asyncio.gather(*(produce(i) for i in range(300)))
    await eventually(lambda: _count_is(owner, 300), what="300 events stored")

    listed = await list_all(api)
    assert sorted(e.event_id for e in listed) == sorted(expected), "every published event, exactly once"
    assert [e.position for e in listed] == list(range(1, 301)), "gapless positions, oldest first"
    assert all(a.recorded_at.ToMicroseconds() <= b.recorded_at.ToMicroseconds() for a, b in itertools.pairwise(listed))
    for event in listed:
        assert (event.trace_id, event.span_id) == expected[event.event_id]
        assert len(event.hash) == 64 and len(event.prev_hash) == 64
    newest_first = await list_all(api, order=pb.ORDER_UNSPECIFIED)
    assert [e.position for e in newest_first] == list(range(300, 0, -1))
    acme = await list_all(api, tenant="acme")
    assert len(acme) == 150 and {e.tenant for e in acme} == {"acme"}
    assert (await api.CountEvents(pb.CountEventsRequest(filter=pb.EventFilter(tenant="globex")))).total == 150


async def _count_is(owner, n: int) -> bool:
    return await stored_count(owner) >= n


async def test_same_event_id_is_stored_once_whatever_the_message_id_and_whenever_it_arrives(
    publisher, nc, config, start_worker, owner
):
    js = nc.jetstream()
    worker = await start_worker()
    ack = await publisher.publish(make_event())
    again = await publisher.publish(make_event(event_id=ack.event_id))
    assert again.duplicate, "JetStream drops a re-publish inside its window (same Nats-Msg-Id)"
    await eventually(lambda: _count_is(owner, 1), what="first copy stored")

    stored = await owner.fetchrow("SELECT * FROM audit_events")
    event = make_event(event_id=ack.event_id)
    event.occurred_at.FromDatetime(stored["occurred_at"])
    subject = f"{config.nats.events_subject_prefix}.acme"
    # Outside JetStream's de-duplication: different Nats-Msg-Id values.
    for n in range(3):
        await js.publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": f"retry-{n}"})
    await worker.shutdown()
    # Much later, after a restart: a producer retry with yet another message id.
    await js.publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": "much-later"})
    second = await start_worker()
    sentinel = await publisher.publish(make_event())
    await eventually(lambda: _count_is(owner, 2), what="sentinel stored")
    await second.shutdown()

    rows = await owner.fetch("SELECT event_id::text AS id FROM audit_events ORDER BY position")
    assert [row["id"] for row in rows] == [ack.event_id, sentinel.event_id]
    assert await owner.fetchval("SELECT count(*) FROM audit_event_ids") == 2


async def test_invalid_messages_are_dead_lettered_with_a_reason_and_ingest_carries_on(
    publisher, nc, config, start_worker, owner
):
    js = nc.jetstream()
    small = dataclasses.replace(config.ingest, limits=Limits(max_event_bytes=4096))
    await start_worker(dataclasses.replace(config, ingest=small))
    subject = f"{config.nats.events_subject_prefix}.acme"
    json_headers = {"Content-Type": "application/json"}
    valid_json = json_format.MessageToDict(stamp(make_event()))

    wrong_types = {**valid_json, "outcome": {"not": "an enum"}, "tenant": 5}
    missing_tenant = stamp(make_event())
    missing_tenant.ClearField("tenant")
    oversized = stamp(make_event(message="x" * 6000))
    poison = [
        (b"\xff\xfe garbage, not protobuf \x00\x01", {}, {"invalid_protobuf", "missing_field"}),
        (json_format.MessageToJson(json_format.ParseDict(valid_json, event_pb2.AuditEvent())).encode(), None, None),
        (_json_bytes(wrong_types), json_headers, {"schema_mismatch"}),
        (missing_tenant.SerializeToString(), {}, {"missing_field"}),
        (oversized.SerializeToString(), {}, {"too_large"}),
        (b'{"tenant": "acme", "action": ', json_headers, {"invalid_json"}),
    ]
    for payload, headers, _ in poison:
        await js.publish(subject, payload, headers=json_headers if headers is None else headers)
    valid_after = [await publisher.publish(make_event()) for _ in range(5)]

    await eventually(lambda: _count_is(owner, 6), what="the valid JSON event and the 5 valid events after the poison")
    stored = {row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")}
    assert {ack.event_id for ack in valid_after} <= stored
    assert valid_json["eventId"] in stored, "a valid JSON event is ingested"

    dead_stream = config.nats.dead_stream
    await eventually(lambda: _stream_has(js, dead_stream, 5), what="5 dead letters")
    dead = [await js.get_msg(dead_stream, seq) for seq in range(1, 6)]
    expected = [(payload, reasons) for payload, _, reasons in poison if reasons is not None]
    for message, (payload, reasons) in zip(dead, expected, strict=True):
        reason = message.headers["Audit-Dead-Reason"]
        assert reason in reasons
        assert message.subject == f"{config.nats.dead_subject_prefix}.{reason}"
        assert message.data == payload, "the original bytes are kept"
        assert message.headers["Audit-Original-Subject"] == subject
        assert message.headers["Audit-Dead-Detail"]
    assert dead[2].headers["Audit-Dead-Field"] == "tenant"
    assert dead[1].headers["Content-Type"] == "application/json", "original headers are kept"


def _json_bytes(document: dict) -> bytes:
    import json

    return json.dumps(document).encode()


async def _stream_has(js, stream: str, n: int) -> bool:
    info = await js.stream_info(stream)
    return info.state.messages >= n


@pytest.mark.parametrize("fault", ["database_outage", "sessions_ending"])
async def test_the_worker_keeps_its_batch_through_a_database_outage_and_dead_letters_nothing(
    publisher, start_worker, owner, fault, request, nc, config
):
    """An outage, or sessions ending again and again under the worker's connections (asyncpg then says
    InternalClientError as often as "connection is closed"): every event is stored once, none dead-lettered."""
    database_fault = request.getfixturevalue(fault)
    await start_worker()
    before = [await publisher.publish(make_event()) for _ in range(20)]
    await eventually(lambda: _count_is(owner, 20), what="events stored before the outage")
    async with database_fault() as ending:
        during = [await publisher.publish(make_event()) for _ in range(50)]
        await asyncio.sleep(1.5)  # the worker fetches them and fails to store them
    assert fault == "database_outage" or ending.ended > 20  # sessions did end under the worker
    await eventually(lambda: _count_is(owner, 70), what="events published during the outage stored after it")
    stored = [row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")]
    assert sorted(stored) == sorted(ack.event_id for ack in before + during)
    dead = await nc.jetstream().stream_info(config.nats.dead_stream)
    assert dead.state.messages == 0, "an outage is not the events' fault"


async def test_sessions_ending_under_appends_are_warnings_not_errors(
    publisher, start_worker, owner, sessions_ending, caplog
):
    """A session the server ends under an append's statement (SQLSTATE 57P01, AdminShutdownError: a failover, a
    session killer) is the database being away, as a closed connection is: the worker waits it out with warnings,
    not an ERROR line each retry (what alerting pages on)."""
    caplog.set_level(logging.WARNING, logger="audit_service")
    await start_worker()
    published = []
    async with sessions_ending() as ending:
        loop = asyncio.get_running_loop()
        until = loop.time() + 3
        while loop.time() < until:
            published.append(await publisher.publish(make_event()))
            await asyncio.sleep(0.005)
    await eventually(lambda: _count_is(owner, len(published)), what="every event stored once the sessions stay")
    failed = [r for r in caplog.records if r.name == "audit_service.ingest.worker" and "append of" in r.getMessage()]
    assert ending.ended > 20 and failed, (ending.ended, len(failed))  # appends did fail under it
    errors = [r.getMessage() for r in failed if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]
    # Each says why: not what rolling back a connection the pool already took back says instead.
    hidden = [r.getMessage() for r in failed if "released back to the pool" in r.getMessage()]
    assert not hidden, hidden[:3]


async def test_an_event_the_database_rejects_is_isolated_and_dead_lettered_alone(
    publisher, start_worker, owner, nc, config
):
    # Stands in for any storage-level rejection that validation did not foresee.
    await owner.execute("ALTER TABLE audit_events ADD CONSTRAINT test_no_evil CHECK (message <> 'evil')")
    batch = [make_event() for _ in range(40)]
    batch[17].message = "evil"
    await start_worker()
    acks = await asyncio.gather(*(publisher.publish(event) for event in batch))

    await eventually(lambda: _count_is(owner, 39), what="the 39 good events of the batch")
    js = nc.jetstream()
    await eventually(lambda: _stream_has(js, config.nats.dead_stream, 1), what="the rejected event dead-lettered")
    dead = await js.get_msg(config.nats.dead_stream, 1)
    assert dead.headers["Audit-Dead-Reason"] == "rejected_by_storage"
    assert "test_no_evil" in dead.headers["Audit-Dead-Detail"]
    assert dead.headers["Audit-Original-Msg-Id"] == acks[17].event_id
    stored = {row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")}
    assert stored == {ack.event_id for i, ack in enumerate(acks) if i != 17}


async def test_publishing_where_no_stream_listens_is_a_publish_error_not_a_hang(nats_url):
    async with audit_client.connect(nats_url, subject_prefix="nobody.listens", ack_timeout=2) as lonely:
        with pytest.raises(audit_client.PublishError) as error:
            await lonely.publish(make_event())
    assert error.value.event_id and "NoStreamResponseError" in str(error.value)


async def test_a_publish_nobody_acknowledges_times_out_and_frees_its_slot(nats_url, nc, names):
    prefix = names["AUDIT_SUBJECT_PREFIX"]
    # A plain subscriber takes the message but never answers, as a stalled JetStream would.
    silent = await nc.subscribe(f"{prefix}.silent.>")
    async with audit_client.connect(
        nats_url, subject_prefix=f"{prefix}.silent", ack_timeout=0.4, max_in_flight=1
    ) as publisher:
        for _ in range(3):  # max_in_flight=1: a slot kept after a timeout would make the second one stall
            started = asyncio.get_running_loop().time()
            with pytest.raises(audit_client.PublishError, match="TimeoutError"):
                await asyncio.wait_for(publisher.publish(make_event()), 5)
            waited = asyncio.get_running_loop().time() - started
            assert 0.4 <= waited < 2.5, f"timed out after {waited:.2f} s with ack_timeout 0.4 s"
    assert silent.delivered == 3
    await silent.unsubscribe()


async def test_the_worker_recovers_when_its_consumer_is_deleted(publisher, start_worker, owner, nc, config):
    await start_worker()
    first = [await publisher.publish(make_event()) for _ in range(10)]
    await eventually(lambda: _count_is(owner, 10), what="events stored before the consumer is deleted")
    await nc.jetstream().delete_consumer(config.nats.events_stream, config.ingest.durable)
    second = [await publisher.publish(make_event()) for _ in range(10)]
    await eventually(lambda: _count_is(owner, 20), what="events stored after the worker re-provisioned")
    # The new consumer starts from the beginning of the stream: the first ten come again, and are not stored twice.
    await asyncio.sleep(0.5)
    stored = [row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")]
    assert sorted(stored) == sorted(ack.event_id for ack in first + second)


@pytest.fixture(scope="session")
def span_exporter():
    """Spans of this process (the in-process worker's among them), kept in memory."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def test_the_ingest_span_links_to_the_producer_span(span_exporter, publisher, start_worker, owner):
    from opentelemetry import trace

    await start_worker()
    with trace.get_tracer("producer").start_as_current_span("create-api-key") as producer_span:
        await publisher.publish(make_event())
    await eventually(lambda: _count_is(owner, 1), what="event stored")
    producer = producer_span.get_span_context()

    async def linked() -> bool:
        return any(
            span.name == "audit.ingest batch" and any(link.context.span_id == producer.span_id for link in span.links)
            for span in span_exporter.get_finished_spans()
        )

    await eventually(linked, what="an ingest span linked to the producer's span")


async def test_failed_sends_give_their_in_flight_slot_back(nats_url, config):
    nc = await nats.connect(nats_url)
    publisher = audit_client.Publisher(
        nc, owns_connection=False, subject_prefix=config.nats.events_subject_prefix, max_in_flight=2, ack_timeout=1
    )
    await provision(nc.jetstream(), config.nats, config.ingest)
    await publisher.publish(make_event())  # the acknowledgement inbox is in place
    await nc.close()  # every send now fails after the publish has taken its slot
    for _ in range(5):  # more failures than slots: a leaked slot would make the third one stall
        with pytest.raises(audit_client.PublishError, match="ConnectionClosedError"):
            await asyncio.wait_for(publisher.publish(make_event()), 5)


async def test_a_producer_status_header_does_not_hide_its_message(publisher, nc, config, start_worker, owner):
    await start_worker()
    js = nc.jetstream()
    subject = f"{config.nats.events_subject_prefix}.acme"
    for status in ("100", "408", "409"):  # what server status messages carry; here from a producer
        await js.publish(subject, b"", headers={"Status": status, "Description": "not really"})
    await eventually(lambda: _stream_has(js, config.nats.dead_stream, 3), what="the three messages dead-lettered")
    after = await publisher.publish(make_event())
    await eventually(lambda: _count_is(owner, 1), what="ingest carries on")
    assert await owner.fetchval("SELECT event_id::text FROM audit_events") == after.event_id


async def test_stopping_during_a_database_outage_hands_the_batch_back(publisher, start_worker, owner, database_outage):
    worker = await start_worker()
    async with database_outage():
        acks = [await publisher.publish(make_event()) for _ in range(30)]
        await asyncio.sleep(1)  # the worker holds them and retries
        stopped = await asyncio.wait_for(worker.shutdown(), 15)  # it must not wait for the database
        assert stopped.stats.appended == 0
    await start_worker()
    await eventually(lambda: _count_is(owner, 30), what="the handed-back events stored by the next worker")
    stored = {row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")}
    assert stored == {ack.event_id for ack in acks}


async def test_a_database_clock_ahead_of_the_worker_gets_its_partition(publisher, start_worker, owner):
    # recorded_at never goes back: after the database clock once ran three months ahead, appends land there. The
    # head only moves with an append (a trigger refuses anything else), so it is set here with the triggers off.
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute("UPDATE audit_log_head SET last_recorded_at = now() + interval '3 months'")
    await start_worker()
    ack = await publisher.publish(make_event())
    await eventually(lambda: _count_is(owner, 1), what="event stored in a partition created on demand")
    recorded_at = await owner.fetchval("SELECT recorded_at FROM audit_events WHERE event_id = $1", ack.event_id)
    partition = await owner.fetchval("SELECT tableoid::regclass::text FROM audit_events")
    assert partition == f"audit_events_{recorded_at:%Y_%m}"


async def test_an_event_published_on_another_tenants_subject_is_dead_lettered_not_stored(
    publisher, nc, config, start_worker, owner
):
    """The subject names the tenant, and NATS permissions are granted per subject: a producer allowed to publish
    only on audit.events.a must not be able to write into tenant b's log by saying so in the body."""
    js = nc.jetstream()
    await start_worker()
    forged = stamp(make_event(tenant="globex"))
    await js.publish(
        f"{config.nats.events_subject_prefix}.acme",
        forged.SerializeToString(),
        headers={"Nats-Msg-Id": forged.event_id},
    )
    as_json = stamp(make_event(tenant="globex"))
    await js.publish(
        f"{config.nats.events_subject_prefix}.acme.globex",
        json_format.MessageToJson(as_json).encode(),
        headers={"Content-Type": "application/json"},
    )
    sentinel = await publisher.publish(make_event(tenant="globex"))
    await eventually(lambda: _count_is(owner, 1), what="the sentinel stored")
    await eventually(lambda: _stream_has(js, config.nats.dead_stream, 2), what="both forged events dead-lettered")

    stored = [row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")]
    assert stored == [sentinel.event_id]
    for seq, subject in enumerate(["acme", "acme.globex"], start=1):
        dead = await js.get_msg(config.nats.dead_stream, seq)
        assert dead.subject == f"{config.nats.dead_subject_prefix}.tenant_mismatch"
        assert (dead.headers["Audit-Dead-Reason"], dead.headers["Audit-Dead-Field"]) == ("tenant_mismatch", "tenant")
        assert dead.headers["Audit-Original-Subject"] == f"{config.nats.events_subject_prefix}.{subject}"
        assert "'globex'" in dead.headers["Audit-Dead-Detail"]


async def test_a_different_event_under_a_stored_event_id_is_dead_lettered_naming_the_stored_position(
    publisher, nc, config, start_worker, owner
):
    js = nc.jetstream()
    await provision(js, config.nats, config.ingest)
    first = stamp(make_event())
    # In one batch: the event, an identical copy (a redelivery: silent), and a different event with its id.
    in_batch = event_pb2.AuditEvent()
    in_batch.CopyFrom(first)
    in_batch.message = "something else"
    messages = [(first, "acme"), (first, "acme"), (in_batch, "acme")]
    for n, (event, tenant) in enumerate(messages):
        subject = f"{config.nats.events_subject_prefix}.{tenant}"
        await js.publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": f"m-{n}"})
    await start_worker()
    await eventually(lambda: _count_is(owner, 1), what="the first event stored")
    # Later, from another tenant's producer (or a colliding id), outside JetStream's de-duplication window.
    elsewhere = event_pb2.AuditEvent()
    elsewhere.CopyFrom(first)
    elsewhere.tenant = "globex"
    await js.publish(
        f"{config.nats.events_subject_prefix}.globex", elsewhere.SerializeToString(), headers={"Nats-Msg-Id": "m-3"}
    )
    identical_later = first.SerializeToString()
    await js.publish(f"{config.nats.events_subject_prefix}.acme", identical_later, headers={"Nats-Msg-Id": "m-4"})
    sentinel = await publisher.publish(make_event())
    await eventually(lambda: _count_is(owner, 2), what="the sentinel stored")
    await eventually(lambda: _stream_has(js, config.nats.dead_stream, 2), what="two conflicting duplicates")

    stored = await owner.fetch("SELECT event_id::text AS id, position, message, tenant FROM audit_events")
    assert [(row["id"], row["position"]) for row in stored] == [(first.event_id, 1), (sentinel.event_id, 2)]
    assert (stored[0]["message"], stored[0]["tenant"]) == (first.message, "acme"), "the stored event is untouched"
    info = await js.stream_info(config.nats.dead_stream)
    assert info.state.messages == 2, "identical copies are silent duplicates"
    dead = [await js.get_msg(config.nats.dead_stream, seq) for seq in (1, 2)]
    assert [d.data for d in dead] == [in_batch.SerializeToString(), elsewhere.SerializeToString()]
    for letter in dead:
        assert letter.subject == f"{config.nats.dead_subject_prefix}.conflicting_duplicate"
        assert letter.headers["Audit-Dead-Field"] == "event_id"
        assert f"event {first.event_id} is stored at position 1" in letter.headers["Audit-Dead-Detail"]
    assert "(differs in message)" in dead[0].headers["Audit-Dead-Detail"]
    assert "(differs in tenant)" in dead[1].headers["Audit-Dead-Detail"]


async def test_the_worker_brings_back_a_dead_letter_stream_that_is_gone(publisher, start_worker, owner, nc, config):
    """Deleted by hand, or lost by a NATS server: the worker re-provisioned only a missing consumer, so every refused
    message came back after ack_wait for ever, and none was dead-lettered again until the worker restarted."""
    await start_worker()
    js = nc.jetstream()
    await publisher.publish(make_event())
    await eventually(lambda: _count_is(owner, 1), what="the first event stored")
    await js.delete_stream(config.nats.dead_stream)
    await js.publish(f"{config.nats.events_subject_prefix}.acme", b"\xff not an event")
    await publisher.publish(make_event())

    async def dead_lettered() -> bool:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            return (await js.stream_info(config.nats.dead_stream)).state.messages == 1
        return False

    await eventually(dead_lettered, what="the refused message dead-lettered into a new AUDIT_DEAD")
    await eventually(lambda: _count_is(owner, 2), what="the other events stored")
    letter = await js.get_msg(config.nats.dead_stream, 1)
    assert letter.headers["Audit-Dead-Reason"] == "invalid_protobuf"


async def test_a_batch_that_times_out_is_halved_until_it_is_stored(
    publisher, nc, config, start_worker, owner, database
):
    """A batch slower than the database's statement timeout (large events, a busy server) would time out on every
    retry: it is appended in halves instead, and nothing is dead-lettered (a timeout is not the events' fault)."""
    await owner.execute(
        """
        CREATE FUNCTION test_slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
        CREATE TRIGGER test_slow_row BEFORE INSERT ON audit_event_ids FOR EACH ROW EXECUTE FUNCTION test_slow_row();
        """
    )
    role = database.app_url.rsplit("@", 1)[0].rsplit("/", 1)[-1]
    await owner.execute(f"ALTER ROLE {role} IN DATABASE \"{database.name}\" SET statement_timeout = '1s'")
    js = nc.jetstream()
    await provision(js, config.nats, config.ingest)
    acks = await asyncio.gather(*(publisher.publish(make_event()) for _ in range(120)))  # one batch: ~2.4 s
    await start_worker()
    await eventually(lambda: _count_is(owner, 120), what="the 120 events, stored in halves")
    stored = {row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")}
    assert stored == {ack.event_id for ack in acks}
    assert (await js.stream_info(config.nats.dead_stream)).state.messages == 0
