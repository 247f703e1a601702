"""The service's metrics, read from an SDK MeterProvider with an in-memory reader while the real worker and API run
on real NATS, PostgreSQL and gRPC.

The global MeterProvider can be set once per process: the session fixture `metric_reader` sets it the first time a
test asks for it, and every test reads what it caused, by the attributes only it uses (its own stream) or as the
difference between two readings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import asyncpg
import grpc
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import alert_rules_pb2_grpc, event_pb2
from audit.v1 import audit_service_pb2 as pb
from audit.v1.audit_service_connect import AuditServiceClient
from audit_service.auth.tokens import mint_token
from audit_service.config import load_config
from audit_service.core.signing import generate_private_key_pem, load_signer
from audit_service.ingest.lag import ConsumerLag
from audit_service.ingest.streams import provision
from audit_service.store.checkpoints import PeriodicCheckpointer
from audit_service.store.retention import retention_command
from audit_service.telemetry.metrics import METER_NAME
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from opentelemetry import metrics as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ..conftest import JWT_SECRET, eventually, serving_api, serving_stub, store_events
from ..factories import make_event, stamp


@pytest.fixture(scope="session")
def metric_reader() -> InMemoryMetricReader:
    """An in-memory reader of the process's global MeterProvider, which this fixture installs."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics_api.set_meter_provider(provider)
    if metrics_api.get_meter_provider() is not provider:
        pytest.fail("another MeterProvider was installed in this test process first: these tests cannot read it")
    return reader


@dataclass(frozen=True)
class Reading:
    """One collection of the service's metrics: value (counters, gauges) or count (histograms) by name and
    attributes."""

    points: dict[str, list[tuple[dict, object]]]

    def _matching(self, name: str, attributes: Mapping[str, object]) -> Iterator[object]:
        for point_attributes, point in self.points.get(name, ()):
            if all(point_attributes.get(key) == value for key, value in attributes.items()):
                yield point

    def value(self, name: str, **attributes: object) -> float:
        """The sum of the matching points' values (0 when there is none)."""
        return sum(point.value for point in self._matching(name, attributes))

    def gauge(self, name: str, **attributes: object) -> float | None:
        """The value of the one matching gauge point, None when there is none."""
        points = list(self._matching(name, attributes))
        assert len(points) <= 1, f"{name}{attributes}: {len(points)} points"
        return points[0].value if points else None

    def count(self, name: str, **attributes: object) -> int:
        """How many measurements the matching histogram points hold."""
        return sum(point.count for point in self._matching(name, attributes))

    def histogram_sum(self, name: str, **attributes: object) -> float:
        return sum(point.sum for point in self._matching(name, attributes))

    def attributes(self, name: str) -> list[dict]:
        return [point_attributes for point_attributes, _ in self.points.get(name, ())]


def read(reader: InMemoryMetricReader) -> Reading:
    points: dict[str, list[tuple[dict, object]]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != METER_NAME:
                continue
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    points.setdefault(metric.name, []).append((dict(point.attributes), point))
    return Reading(points)


def ingest_attributes(config) -> dict[str, str]:
    """The attributes of this test's ingest metrics: its own stream and consumer."""
    return {
        "messaging.destination.name": config.nats.events_stream,
        "messaging.consumer.group.name": config.ingest.durable,
    }


async def _stored(owner, n: int) -> bool:
    return await owner.fetchval("SELECT count(*) FROM audit_events") >= n


async def test_appended_duplicate_and_dead_lettered_counts_match_what_was_published(
    metric_reader, publisher, nc, config, start_worker, owner
):
    js = nc.jetstream()
    await provision(js, config.nats, config.ingest)
    subject = f"{config.nats.events_subject_prefix}.acme"
    first = stamp(make_event())
    await js.publish(subject, first.SerializeToString(), headers={"Nats-Msg-Id": "first"})
    # Taken and never acknowledged: JetStream delivers it again after ack_wait (2 s here), once the worker has
    # stored the event from the producer's retry below, so it comes back as a duplicate.
    taken = await js.pull_subscribe_bind(config.ingest.durable, config.nats.events_stream)
    [held] = await taken.fetch(1, timeout=10)
    assert held.data == first.SerializeToString()
    await taken.unsubscribe()

    await js.publish(subject, first.SerializeToString(), headers={"Nats-Msg-Id": "retry"})
    conflicting = event_pb2.AuditEvent()
    conflicting.CopyFrom(first)
    conflicting.message = "another event under the same id"
    await js.publish(subject, conflicting.SerializeToString(), headers={"Nats-Msg-Id": "conflicting"})
    await js.publish(subject, b"\xff\xfe poison, not protobuf \x00")
    valid = [await publisher.publish(make_event()) for _ in range(20)]
    worker = await start_worker()

    attributes = ingest_attributes(config)

    async def redelivered_as_duplicate() -> bool:
        return read(metric_reader).value("audit.ingest.duplicates", **attributes) >= 1

    await eventually(lambda: _stored(owner, 21), what="the first event and the 20 valid ones stored")
    await eventually(redelivered_as_duplicate, what="the held message redelivered and counted as a duplicate")
    stats = (await worker.shutdown()).stats

    reading = read(metric_reader)
    assert reading.value("audit.ingest.appended", **attributes) == 21 == stats.appended
    assert reading.value("audit.ingest.duplicates", **attributes) == 1 == stats.duplicates
    assert reading.value("audit.ingest.dead_lettered", **attributes, reason="invalid_protobuf") == 1
    assert reading.value("audit.ingest.dead_lettered", **attributes, reason="conflicting_duplicate") == 1
    assert reading.value("audit.ingest.dead_lettered", **attributes) == 2 == stats.dead_lettered
    reasons = {a["reason"] for a in reading.attributes("audit.ingest.dead_lettered") if a.items() >= attributes.items()}
    assert reasons == {"invalid_protobuf", "conflicting_duplicate"}
    # 24 messages delivered to the worker (the held one a second time), each counted in one batch.
    assert reading.histogram_sum("audit.ingest.batch.size", **attributes) == 24
    appends = reading.count("audit.ingest.append.duration", **attributes)
    assert appends >= 1
    assert reading.count("audit.ingest.publish_to_commit.duration", **attributes) == appends
    assert reading.histogram_sum("audit.ingest.publish_to_commit.duration", **attributes) > 0
    stored = {row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events")}
    assert stored == {first.event_id, *(ack.event_id for ack in valid)}


async def test_the_head_gauge_is_the_logs_head(metric_reader, publisher, start_worker, owner, database):
    await store_events(database, [make_event() for _ in range(3)])
    worker = await start_worker()
    assert read(metric_reader).gauge("audit.log.head") == 3, "read at start"
    for _ in range(7):
        await publisher.publish(make_event())
    await eventually(lambda: _stored(owner, 10), what="7 more events stored")
    head = await owner.fetchval("SELECT last_position FROM audit_log_head")
    assert head == 10
    assert read(metric_reader).gauge("audit.log.head") == head
    await worker.shutdown()
    assert read(metric_reader).gauge("audit.log.head") is None, "a stopped worker reports no head"


async def test_lag_gauges_show_the_backlog_while_ingest_is_held_up_and_nothing_once_drained(
    metric_reader, publisher, config, start_worker, owner, database_outage
):
    small = replace(config.ingest, batch_size=5, lag_refresh_seconds=0.1)
    await start_worker(replace(config, ingest=small))
    attributes = ingest_attributes(config)
    await publisher.publish(make_event())
    await eventually(lambda: _stored(owner, 1), what="the first event stored")

    async def backlog() -> bool:
        reading = read(metric_reader)
        pending = reading.gauge("audit.ingest.pending", **attributes)
        age = reading.gauge("audit.ingest.oldest_pending.age", **attributes)
        return pending is not None and pending > 0 and age is not None and age > 0

    async def drained() -> bool:
        reading = read(metric_reader)
        pending = reading.gauge("audit.ingest.pending", **attributes)
        age = reading.gauge("audit.ingest.oldest_pending.age", **attributes)
        return (pending, age) == (0, 0)

    async with database_outage():
        # The worker holds at most three batches of 5 while it cannot store them: the rest waits in JetStream.
        for _ in range(40):
            await publisher.publish(make_event())
        await eventually(backlog, what="pending > 0 and an oldest message's age while the database is away")
    await eventually(lambda: _stored(owner, 41), what="the backlog stored")
    await eventually(drained, what="no pending message and age 0 once drained")
    assert read(metric_reader).value("audit.ingest.appended", **attributes) == 41


async def test_the_pending_count_is_read_from_the_consumer(metric_reader, nc, config, publisher):
    """The refresh the worker runs every AUDIT_INGEST_LAG_REFRESH_SECONDS, with no worker consuming."""
    js = nc.jetstream()
    await provision(js, config.nats, config.ingest)
    for _ in range(6):
        await publisher.publish(make_event())
    lag = ConsumerLag(
        js, config.nats.events_stream, config.ingest.durable, ingest_attributes(config), refresh_seconds=3600
    )
    async with lag.running():
        await lag.refresh()
        assert read(metric_reader).gauge("audit.ingest.pending", **ingest_attributes(config)) == 6


async def test_rpc_calls_are_counted_by_method_and_status(metric_reader, api):
    method = "audit.v1.AuditService/"
    before = read(metric_reader)
    await api.ListEvents(pb.ListEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.GetEvent(pb.GetEventRequest(event_id="not-a-uuid"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [chunk] = [chunk async for chunk in api.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON))]
    assert chunk.events == 0
    after = read(metric_reader)

    def calls(reading: Reading, name: str, code: str) -> int:
        return reading.count(
            "rpc.server.call.duration",
            **{"rpc.system.name": "grpc", "rpc.method": method + name, "rpc.response.status_code": code},
        )

    assert calls(after, "ListEvents", "OK") - calls(before, "ListEvents", "OK") == 1
    assert calls(after, "GetEvent", "INVALID_ARGUMENT") - calls(before, "GetEvent", "INVALID_ARGUMENT") == 1
    assert calls(after, "ExportEvents", "OK") - calls(before, "ExportEvents", "OK") == 1, "a stream, once ended"
    invalid = [a for a in after.attributes("rpc.server.call.duration") if a["rpc.response.status_code"] != "OK"]
    assert invalid and all("error.type" not in a for a in invalid), "a client's mistake is not a server error"


async def test_alert_rule_calls_are_counted_by_method_and_status(metric_reader, api):
    method = "audit.v1.AlertRuleService/"
    before = read(metric_reader)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        rules = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)
        await rules.ListAlertRules(rules_pb.ListAlertRulesRequest(tenant="acme"))
        for rule_id in ("not-a-uuid", "0190c0de-0000-7000-8000-000000000001"):
            with pytest.raises(grpc.aio.AioRpcError):
                await rules.GetAlertRule(rules_pb.GetAlertRuleRequest(tenant="acme", id=rule_id))
    expected = (("ListAlertRules", "OK"), ("GetAlertRule", "INVALID_ARGUMENT"), ("GetAlertRule", "NOT_FOUND"))

    def calls(reading: Reading, name: str, code: str) -> int:
        return reading.count(
            "rpc.server.call.duration",
            **{"rpc.system.name": "grpc", "rpc.method": method + name, "rpc.response.status_code": code},
        )

    async def all_recorded() -> bool:
        # context.abort() sends the status before the handler's task ends, where the call is recorded: the client
        # can see the last error before the server has counted it (CI, 2026-12-07).
        after = read(metric_reader)
        return all(calls(after, name, code) > calls(before, name, code) for name, code in expected)

    await eventually(all_recorded, within=10, what="the three calls recorded")
    after = read(metric_reader)
    for name, code in expected:
        assert calls(after, name, code) - calls(before, name, code) == 1, (name, code)


async def test_http_calls_are_measured_as_the_grpc_ports_are(metric_reader, service_env):
    env = {key: value for key, value in service_env.items() if key != "AUDIT_AUTH_DISABLED"} | {
        "AUDIT_AUTH_JWT_SECRET": JWT_SECRET,
        "AUDIT_HTTP_ADDRESS": "127.0.0.1:0",
    }
    config = load_config(env=env)
    token = mint_token(config.auth, subject="u-alice", tenant="acme", admin=True, ttl_seconds=600)
    before = read(metric_reader)
    async with serving_api(config) as server:
        url = f"http://127.0.0.1:{server.http.port}"
        async with AuditServiceClient(url) as http:
            await http.list_events(pb.ListEventsRequest(), headers={"authorization": f"Bearer {token}"})
            with pytest.raises(ConnectError) as refused:
                await http.list_events(pb.ListEventsRequest())
        assert refused.value.code is Code.UNAUTHENTICATED
        async with AuditServiceClient(url, protocol=ProtocolType.GRPC_WEB) as http:
            await http.list_events(pb.ListEventsRequest(), headers={"authorization": f"Bearer {token}"})
    after = read(metric_reader)

    def calls(reading: Reading, **attributes: str) -> int:
        return reading.count(
            "rpc.server.call.duration", **{"rpc.method": "audit.v1.AuditService/ListEvents", **attributes}
        )

    def connect_calls(reading: Reading) -> list[dict]:
        return [
            a
            for a in reading.attributes("rpc.server.call.duration")
            if a["rpc.system.name"] == "connectrpc" and a["rpc.method"] == "audit.v1.AuditService/ListEvents"
        ]

    # Connect has no code for success: the attribute is left out (semantic conventions: "if available").
    assert {"rpc.system.name": "connectrpc", "rpc.method": "audit.v1.AuditService/ListEvents"} in connect_calls(after)
    assert calls(after, **{"rpc.system.name": "connectrpc"}) - calls(before, **{"rpc.system.name": "connectrpc"}) == 2
    refused_code = {"rpc.system.name": "connectrpc", "rpc.response.status_code": "unauthenticated"}
    assert calls(after, **refused_code) - calls(before, **refused_code) == 1
    assert all("error.type" not in a for a in connect_calls(after)), "a client's mistake is not a server error"
    grpc_web = {"rpc.system.name": "grpc", "rpc.response.status_code": "OK"}
    assert calls(after, **grpc_web) - calls(before, **grpc_web) == 1, "gRPC-Web is gRPC's codes over HTTP/1.1"


async def test_open_tails_go_up_and_back_down_and_live_deliveries_record_their_lag(
    metric_reader, api, publisher, start_worker
):
    await start_worker()
    before = read(metric_reader)
    call = api.TailEvents(pb.TailEventsRequest())
    responses = aiter(call)
    first = await anext(responses)
    assert first.caught_up
    assert read(metric_reader).value("audit.tail.active") - before.value("audit.tail.active") == 1
    await publisher.publish(make_event())
    live = await anext(responses)
    while not live.events:
        live = await anext(responses)
    delivered = read(metric_reader)
    assert delivered.count("audit.tail.delivery.lag") - before.count("audit.tail.delivery.lag") >= 1
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, StopAsyncIteration):
        await anext(responses)

    async def closed() -> bool:
        return read(metric_reader).value("audit.tail.active") == before.value("audit.tail.active")

    await eventually(closed, what="the tail no longer counted once its call ended")
    tail_calls = {"rpc.method": "audit.v1.AuditService/TailEvents", "rpc.response.status_code": "CANCELLED"}

    async def counted() -> bool:
        counted_calls = read(metric_reader).count("rpc.server.call.duration", **tail_calls)
        return counted_calls - before.count("rpc.server.call.duration", **tail_calls) == 1

    await eventually(counted, what="the stream counted as a call once it ended, CANCELLED by its client")


async def test_export_bytes_are_the_bytes_the_client_received(metric_reader, api, database):
    await store_events(database, [make_event() for _ in range(30)])
    before = read(metric_reader)
    csv = [chunk async for chunk in api.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV))]
    lines = [chunk async for chunk in api.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_LOG_LINES))]
    after = read(metric_reader)
    csv_bytes = sum(len(chunk.data) for chunk in csv)
    lines_bytes = sum(len(chunk.data) for chunk in lines)
    assert csv_bytes > 0 and lines_bytes > 0
    sent = "audit.export.sent"
    assert after.value(sent, format="csv") - before.value(sent, format="csv") == csv_bytes
    assert after.value(sent, format="log_lines") - before.value(sent, format="log_lines") == lines_bytes


async def test_checkpoint_age_counts_from_the_last_signed_checkpoint(metric_reader, database, tmp_path):
    key = tmp_path / "checkpoint.pem"
    key.write_bytes(generate_private_key_pem())
    now = [1000.0]
    checkpointer = PeriodicCheckpointer(load_signer(str(key)), interval_seconds=3600, clock=lambda: now[0])
    pool = await asyncpg.create_pool(database.app_url, min_size=1, max_size=1)
    try:
        async with checkpointer.running(pool):
            now[0] = 1100.0
            assert read(metric_reader).gauge("audit.checkpoint.age") == 100, "since start-up, before the first one"
            await checkpointer.sign_once(pool)
            assert checkpointer.taken == 1
            now[0] = 1130.0
            assert read(metric_reader).gauge("audit.checkpoint.age") == 30
        assert read(metric_reader).gauge("audit.checkpoint.age") is None, "reported only while checkpointing"
    finally:
        await pool.close()


async def test_retention_runs_are_counted_by_outcome(metric_reader, config, tmp_path):
    def runs(outcome: str) -> float:
        return read(metric_reader).value("audit.retention.runs", outcome=outcome)

    before = runs("nothing_to_do"), runs("failed")
    args = argparse.Namespace(days=30, archive_dir=str(tmp_path), dry_run=False)
    assert await retention_command(config, args) == 0
    assert await retention_command(config, argparse.Namespace(days=0, archive_dir=None, dry_run=False)) == 1
    assert (runs("nothing_to_do"), runs("failed")) == (before[0] + 1, before[1] + 1)


async def test_a_tail_that_falls_behind_its_buffer_is_counted_as_sent_back_to_the_log(
    metric_reader, service_env, publisher, start_worker
):
    # A 1-byte live buffer: every event offered live overflows it, so the tail reads it from the log instead.
    async with serving_stub(service_env | {"AUDIT_TAIL_BUFFER_BYTES": "1"}) as stub:
        await start_worker()
        before = read(metric_reader).value("audit.tail.resyncs")
        call = stub.TailEvents(pb.TailEventsRequest())
        responses = aiter(call)
        assert (await anext(responses)).caught_up
        ack = await publisher.publish(make_event())
        received: list[str] = []
        while not received:
            received = [event.event_id for event in (await anext(responses)).events]
        call.cancel()
    assert received == [ack.event_id]
    assert read(metric_reader).value("audit.tail.resyncs") - before >= 1
