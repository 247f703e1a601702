"""Telemetry of real `audit-service ingest`, `serve` and `react` processes: spans and metrics reach a real OTLP/gRPC
collector, Prometheus scrapes, /livez and /readyz tell the truth, JSON logs carry trace ids, a collector that
is down does not stop ingest."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request

import grpc
import pytest
from audit.v1 import alert_rules_pb2, alert_rules_pb2_grpc, audit_service_pb2_grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1.audit_service_connect import AuditServiceClient
from audit_service.devstack.processes import free_port
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import ServiceProcess, eventually, run_cli
from ..factories import make_event, stamp
from ..otlp_receiver import otlp_receiver

PRODUCER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN_ID = "00f067aa0ba902b7"


def otlp_env(endpoint: str) -> dict[str, str]:
    """Traces and metrics to the collector at `endpoint`, exported often so that a test needs not wait."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, url)


async def publish_with_traceparent(nc, config, event) -> None:
    """Publishes as a producer inside a span would: protobuf payload and a W3C traceparent header."""
    await nc.jetstream().publish(
        f"{config.nats.events_subject_prefix}.{event.tenant}",
        event.SerializeToString(),
        headers={
            "Nats-Msg-Id": event.event_id,
            "traceparent": f"00-{PRODUCER_TRACE_ID}-{PRODUCER_SPAN_ID}-01",
        },
    )


async def _until_caught_up(tail):
    async for response in tail:
        yield response
        if response.caught_up:
            return


async def stored(owner, event_id: str) -> bool:
    return bool(await owner.fetchval("SELECT count(*) FROM audit_events WHERE event_id = $1::uuid", event_id))


async def test_spans_of_rpcs_and_ingest_batches_reach_an_otlp_collector(
    spawn_worker, api_process, nc, config, owner, tmp_path
):
    async with otlp_receiver() as collector:
        worker = spawn_worker(**otlp_env(collector.endpoint), AUDIT_LOG_FORMAT="json")
        api = api_process(**otlp_env(collector.endpoint))
        api.start()
        await asyncio.gather(worker.ready(), api.ready())
        event = stamp(make_event())
        await publish_with_traceparent(nc, config, event)
        # Not an event: dead-lettered, which the worker logs inside the batch's span.
        await nc.jetstream().publish(f"{config.nats.events_subject_prefix}.acme", b"\xff not protobuf")
        await eventually(lambda: stored(owner, event.event_id), what="the event stored")

        async with grpc.aio.insecure_channel(api.env["AUDIT_GRPC_ADDRESS"]) as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            listed = await stub.ListEvents(pb.ListEventsRequest(page_size=10))
            assert [e.event_id for e in listed.events] == [event.event_id]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListEvents(pb.ListEventsRequest(page_size=-1))
            # The tracing interceptor neither changes the status nor leaks a traceback.
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Traceback" not in refused.value.details()
            rules = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)
            await rules.ListAlertRules(alert_rules_pb2.ListAlertRulesRequest(tenant="acme"))
            tail = stub.TailEvents(pb.TailEventsRequest())
            responses = [response async for response in _until_caught_up(tail)]
            assert responses[-1].caught_up
            tail.cancel()
            # grpc's Health.Watch writes with context.write(): the tracing interceptor must leave it alone.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()

        def server_spans(status_code: int) -> list:
            return [
                span
                for span in collector.spans()
                if span.name == "/audit.v1.AuditService/ListEvents"
                and span.attributes.get("rpc.grpc.status_code") == status_code
            ]

        async def exported() -> bool:
            names = {span.name for span in collector.spans()}
            return bool(
                server_spans(0)
                and server_spans(3)
                and {
                    "audit.ingest batch",
                    "audit.append",
                    "/audit.v1.AuditService/TailEvents",
                    "/audit.v1.AlertRuleService/ListAlertRules",
                }
                <= names
            )

        await eventually(exported, what="the spans of the RPCs and of the batch at the collector")
        ok = server_spans(0)[0]
        assert ok.service_name == "audit-api"
        assert ok.span.kind == ok.span.SPAN_KIND_SERVER
        assert ok.attributes["rpc.system"] == "grpc"
        assert ok.attributes["rpc.service"] == "audit.v1.AuditService"
        assert ok.attributes["rpc.method"] == "ListEvents"
        # A client's mistake is not the server's error (semantic conventions of gRPC server spans).
        assert server_spans(3)[0].span.status.code == server_spans(3)[0].span.status.STATUS_CODE_UNSET

        batches = [span for span in collector.spans() if span.name == "audit.ingest batch"]
        assert {span.service_name for span in batches} == {"audit-ingest"}
        appended = next(span for span in batches if span.attributes.get("audit.ingest.appended") == 1)
        assert appended.attributes["messaging.system"] == "nats"
        assert appended.attributes["messaging.consumer.group.name"] == config.ingest.durable
        assert [link.trace_id.hex() for link in appended.span.links] == [PRODUCER_TRACE_ID]
        dead = next(span for span in batches if span.attributes.get("audit.ingest.dead_lettered") == 1)
        append = next(span for span in collector.spans() if span.name == "audit.append")
        assert append.attributes["audit.append.appended"] == 1
        assert append.span.parent_span_id == appended.span.span_id

        await eventually(
            lambda: asyncio.sleep(0, any(name.startswith("otel.sdk.") for name in collector.metric_names())),
            what="the SDK's own metrics at the collector",
        )

    # The worker's JSON log: one object per line; the dead-letter warning carries the ids of its batch's span.
    await worker.terminate()
    records = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    dead_lettered = next(record for record in records if record["message"].startswith("dead-lettered"))
    assert dead_lettered["level"] == "WARNING"
    assert (dead_lettered["trace_id"], dead_lettered["span_id"]) == (dead.trace_id, dead.span_id)


async def test_spans_of_http_calls_reach_the_collector_as_children_of_their_traceparent(api_process):
    async with otlp_receiver() as collector:
        http_port = free_port()
        api = api_process(**otlp_env(collector.endpoint), AUDIT_HTTP_ADDRESS=f"127.0.0.1:{http_port}")
        api.start()
        await api.ready()
        traceparent = {"traceparent": f"00-{PRODUCER_TRACE_ID}-{PRODUCER_SPAN_ID}-01"}
        async with AuditServiceClient(f"http://127.0.0.1:{http_port}") as http:
            await http.list_events(pb.ListEventsRequest(page_size=10), headers=traceparent)
            with pytest.raises(ConnectError) as refused:
                await http.list_events(pb.ListEventsRequest(page_size=-1))
        assert refused.value.code is Code.INVALID_ARGUMENT

        def http_spans() -> list:
            return [
                span
                for span in collector.spans()
                if span.name == "audit.v1.AuditService/ListEvents"
                and span.attributes.get("rpc.system.name") == "connectrpc"
            ]

        await eventually(
            lambda: asyncio.sleep(0, len(http_spans()) == 2), what="the spans of both HTTP calls at the collector"
        )
        [ok] = [span for span in http_spans() if "rpc.response.status_code" not in span.attributes]
        assert ok.service_name == "audit-api"
        assert ok.span.kind == ok.span.SPAN_KIND_SERVER
        assert (ok.trace_id, ok.span.parent_span_id.hex()) == (PRODUCER_TRACE_ID, PRODUCER_SPAN_ID)
        assert ok.attributes["rpc.method"] == "audit.v1.AuditService/ListEvents"
        assert ok.attributes["network.peer.address"] == "127.0.0.1"
        [invalid] = [span for span in http_spans() if "rpc.response.status_code" in span.attributes]
        assert invalid.trace_id != PRODUCER_TRACE_ID, "no traceparent: a trace of its own"
        assert invalid.attributes["rpc.response.status_code"] == "invalid_argument"
        assert "error.type" not in invalid.attributes
        # A client's mistake is not the server's error (semantic conventions of Connect server spans).
        assert invalid.span.status.code == invalid.span.status.STATUS_CODE_UNSET


async def test_prometheus_livez_and_readyz_of_an_ingest_process(spawn_worker, owner, database_outage):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Spans on (to the console: none is made here) so that the SDK's own metrics give the reader something to show.
    worker = spawn_worker(AUDIT_METRICS_ADDRESS=f"127.0.0.1:{port}", OTEL_TRACES_EXPORTER="console")
    await worker.ready()

    async def ready() -> bool:
        return (await get(f"{base}/readyz"))[0] == 200

    await eventually(ready, what="/readyz 200")
    status, body = await get(f"{base}/readyz")
    assert body.splitlines() == ["ingest.consumer: ok", "ingest.nats: ok", "ingest.postgres: ok"]
    assert (await get(f"{base}/livez"))[0] == 200
    status, metrics = await get(f"{base}/metrics")
    assert status == 200
    # The OpenTelemetry reader, scraped: the resource as target_info, and an instrument of the SDK.
    assert re.search(r'\ntarget_info\{[^}]*service_name="audit-ingest"', metrics)
    assert "\notel_sdk_processor_span_queue_capacity" in metrics

    async with database_outage():

        async def unready() -> bool:
            status, body = await get(f"{base}/readyz")
            return status == 503 and "ingest.postgres: PostgreSQL unreachable" in body

        await eventually(unready, what="/readyz 503 naming PostgreSQL while it refuses connections")
        assert (await get(f"{base}/livez"))[0] == 200  # a dependency down is not a reason to restart
    await eventually(ready, what="/readyz 200 again once PostgreSQL is back")
    assert await worker.terminate() == 0


async def test_prometheus_and_readyz_of_an_api_process(api_process, database_outage):
    port = free_port()
    api = api_process(
        AUDIT_METRICS_ADDRESS=f"127.0.0.1:{port}",
        OTEL_TRACES_EXPORTER="console",
        AUDIT_HEALTH_CHECK_INTERVAL_SECONDS="0.2",
    )
    api.start()
    await api.ready()
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        return (await get(f"{base}/readyz"))[0] == 200

    await eventually(ready, what="/readyz 200")
    assert (await get(f"{base}/readyz"))[1].splitlines() == ["api.nats: ok", "api.postgres: ok", "api.serving: ok"]
    status, metrics = await get(f"{base}/metrics")
    assert status == 200 and re.search(r'\ntarget_info\{[^}]*service_name="audit-api"', metrics)
    assert (await get(f"{base}/nope"))[0] == 404

    # /readyz follows PostgreSQL through the health monitor of grpc.health.v1: one check, two doors.
    async with database_outage():

        async def unready() -> bool:
            status, body = await get(f"{base}/readyz")
            return status == 503 and "api.postgres: PostgreSQL unreachable" in body

        await eventually(unready, what="/readyz 503 naming PostgreSQL while it refuses connections")
    await eventually(ready, what="/readyz 200 again once PostgreSQL is back")


async def test_prometheus_livez_and_readyz_of_a_react_process(service_env, database_outage, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**service_env, "AUDIT_METRICS_ADDRESS": f"127.0.0.1:{port}", "OTEL_TRACES_EXPORTER": "console"}
    react = ServiceProcess("react", env, tmp_path / "react.log", "resuming after").start()
    try:
        await react.ready()

        async def ready() -> bool:
            return (await get(f"{base}/readyz"))[0] == 200

        await eventually(ready, what="/readyz 200")
        assert (await get(f"{base}/readyz"))[1].splitlines() == ["react.evaluating: ok", "react.postgres: ok"]
        assert (await get(f"{base}/livez"))[0] == 200
        status, metrics = await get(f"{base}/metrics")
        assert status == 200 and re.search(r'\ntarget_info\{[^}]*service_name="audit-react"', metrics)

        async with database_outage():

            async def unready() -> bool:
                status, body = await get(f"{base}/readyz")
                return status == 503 and "react.postgres: PostgreSQL unreachable" in body

            await eventually(unready, what="/readyz 503 naming PostgreSQL while it refuses connections")
            assert (await get(f"{base}/livez"))[0] == 200  # a dependency down is not a reason to restart
        await eventually(ready, what="/readyz 200 again once PostgreSQL is back")
        assert await react.terminate() == 0
    finally:
        react.close()


async def test_an_unreachable_collector_stops_neither_ingest_nor_rpcs(spawn_worker, api_process, publisher, owner):
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    worker = spawn_worker(
        **otlp_env(nobody),
        AUDIT_METRICS_ADDRESS=f"127.0.0.1:{port}",
        # A queue of 2 spans, so that spans are also dropped at the queue, not only at the export.
        OTEL_BSP_MAX_QUEUE_SIZE="2",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2",
        AUDIT_INGEST_BATCH_SIZE="10",
    )
    await worker.ready()
    ids = [(await publisher.publish(make_event())).event_id for _ in range(60)]

    async def all_stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events WHERE event_id = ANY($1::uuid[])", ids) == 60

    await eventually(all_stored, within=60, what="every event stored with the collector down")
    api = api_process(**otlp_env(nobody))
    api.start()
    await api.ready()
    async with grpc.aio.insecure_channel(api.env["AUDIT_GRPC_ADDRESS"]) as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        for _ in range(3):  # more than one span's export fails meanwhile
            listed = await stub.ListEvents(pb.ListEventsRequest(page_size=100))
            assert {event.event_id for event in listed.events} == set(ids)

    async def failures_counted() -> bool:
        _, metrics = await get(f"http://127.0.0.1:{port}/metrics")
        lines = metrics.splitlines()
        failed = any(line.startswith("otel_sdk_exporter_span_exported") and "error_type=" in line for line in lines)
        dropped = any(
            line.startswith("otel_sdk_processor_span_processed") and 'error_type="queue_full"' in line for line in lines
        )
        return failed and dropped

    await eventually(failures_counted, within=60, what="failed exports and dropped spans counted in /metrics")
    assert await worker.terminate() == 0
    assert await api.terminate() == 0


BAD_SETTINGS = [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ({"AUDIT_METRICS_ADDRESS": "9464"}, "AUDIT_METRICS_ADDRESS"),
    ({"AUDIT_LOG_FORMAT": "xml"}, "AUDIT_LOG_FORMAT"),
    # Numbers, endpoints and files the SDK reads itself: before, a traceback (exit 1) or a warning and a default.
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "ten"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "abc"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
    ({"OTEL_METRICS_EXPORTER": "console", "OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL"),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
    (
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:99999"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    (
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ),
    # A batch larger than the queue (2048 by default): the SDK refuses it.
    (
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"},
        "OTEL_BSP_MAX_QUEUE_SIZE/OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    ),
]


@pytest.mark.parametrize(("bad", "variable"), BAD_SETTINGS)
@pytest.mark.parametrize("command", ["ingest", "serve"])
def test_bad_telemetry_settings_stop_start_up_with_one_line(service_env, command, bad, variable):
    result = run_cli({**service_env, **bad}, command)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"audit-service: configuration error: {variable}: "), lines


def test_a_metrics_address_in_use_stops_start_up_with_one_line(service_env):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_cli({**service_env, "AUDIT_METRICS_ADDRESS": address}, "ingest")
    assert result.returncode == 2
    # After the log line saying what telemetry is on, one line names the variable.
    errors = [line for line in result.stderr.splitlines() if line.startswith("audit-service:")]
    assert len(errors) == 1 and errors[0].startswith(
        "audit-service: configuration error: AUDIT_METRICS_ADDRESS: cannot listen on"
    ), result.stderr
    assert "Traceback" not in result.stderr


FORGED_LINE = "2026-12-06T10:00:00+0000 INFO audit_service.ingest.worker: \x1b[32mall events stored\x1b[0m"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_producer_cannot_forge_log_lines_through_a_dead_letter_reason(spawn_worker, nc, config, log_format):
    """A JSON payload whose unknown field name holds a line break, a whole fake log line and ANSI escapes is
    dead-lettered; the worker's warning quotes protobuf's error, which quotes the name. Each record must stay one
    line, with no raw escape reaching the terminal (before: the text format wrote the forged line as is)."""
    worker = spawn_worker(AUDIT_LOG_FORMAT=log_format)
    await worker.ready()
    payload = json.dumps({f"x\n{FORGED_LINE}\r\n": 1}).encode()
    await nc.jetstream().publish(
        f"{config.nats.events_subject_prefix}.acme", payload, headers={"Content-Type": "application/json"}
    )

    async def dead_lettered() -> bool:
        return "dead-lettered stream sequence" in worker.output()

    await eventually(dead_lettered, what="the forged payload dead-lettered and logged")
    assert await worker.terminate() == 0
    output = worker.output()
    assert "\x1b" not in output and "\r" not in output
    lines = output.splitlines()
    assert not any(line.startswith(FORGED_LINE[:24]) for line in lines), output
    if log_format == "json":
        assert all(isinstance(json.loads(line), dict) for line in lines), output
    else:
        assert all(re.match(r"\d{4}-\d\d-\d\dT", line) for line in lines), output


async def test_idle_and_half_sent_requests_on_the_metrics_port_are_closed(spawn_worker):
    """Clients that connect and send nothing, or half a request line, each held a thread of the HTTP server for
    ever (slow loris: thousands of them exhaust the process). They are now closed after a timeout, and probes and
    scrapes are answered meanwhile."""
    import socket

    port = free_port()
    worker = spawn_worker(AUDIT_METRICS_ADDRESS=f"127.0.0.1:{port}")
    await worker.ready()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    half = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        for sock in half:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
        assert (await get(f"http://127.0.0.1:{port}/livez"))[0] == 200
        assert (await get(f"http://127.0.0.1:{port}/metrics"))[0] == 200

        def closed_by_the_server(socks: list[socket.socket], within: float) -> int:
            """How many of `socks` the server closed (end of stream or reset) within `within` seconds."""
            import selectors
            import time

            deadline, open_, closed = time.monotonic() + within, set(socks), 0
            with selectors.DefaultSelector() as selector:
                for sock in socks:
                    selector.register(sock, selectors.EVENT_READ)
                while open_ and time.monotonic() < deadline:
                    for key, _ in selector.select(timeout=1):
                        try:
                            data = key.fileobj.recv(4096)  # a 408 maybe, then the end of the stream
                        except OSError:
                            data = b""
                        if not data:
                            selector.unregister(key.fileobj)
                            open_.discard(key.fileobj)
                            closed += 1
            return closed

        assert await asyncio.to_thread(closed_by_the_server, idle + half, 90) == len(idle + half)
    finally:
        for sock in idle + half:
            sock.close()
    assert (await get(f"http://127.0.0.1:{port}/readyz"))[0] == 200
    assert await worker.terminate() == 0


async def test_a_collector_that_accepts_and_never_answers_stops_neither_ingest_nor_shutdown(
    spawn_worker, publisher, owner
):
    """An OTLP endpoint whose TCP connections are accepted by the kernel and never answered (a hung collector, a
    black-holing proxy), with the operator's export timeout long: events are stored, and SIGTERM ends the process
    with 0, the flush given up after telemetry's SHUTDOWN_SECONDS (5 s) as documented, well within the 60 s
    ServiceProcess.terminate waits. Before, the SDK's own atexit hooks flushed the providers a second time at exit,
    waiting for the whole export timeout (here 120 s: the process outlived Kubernetes' 30 s grace)."""
    import socket

    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(1000)  # never accepted, never read
        endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        for protocol in ("grpc", "http/protobuf"):
            worker = spawn_worker(
                **{**otlp_env(endpoint), "OTEL_EXPORTER_OTLP_PROTOCOL": protocol},
                OTEL_EXPORTER_OTLP_TIMEOUT="120",
                AUDIT_INGEST_BATCH_SIZE="10",
            )
            await worker.ready()
            ids = [(await publisher.publish(make_event())).event_id for _ in range(100)]

            async def all_stored(ids=ids) -> bool:
                count = "SELECT count(*) FROM audit_events WHERE event_id = ANY($1::uuid[])"
                return await owner.fetchval(count, ids) == len(ids)

            await eventually(all_stored, within=60, what=f"every event stored with a hung {protocol} collector")
            assert await worker.terminate() == 0, worker.output()
            assert "Traceback" not in worker.output(), worker.output()
            assert "shutdown can only be called once" not in worker.output(), "flushed twice"


def test_the_metrics_port_and_the_grpc_port_being_the_same_stops_serve_with_one_line(service_env):
    port = free_port()
    env = {**service_env, "AUDIT_GRPC_ADDRESS": f"127.0.0.1:{port}", "AUDIT_METRICS_ADDRESS": f"127.0.0.1:{port}"}
    result = run_cli(env, "serve")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("audit-service:")]
    assert len(errors) == 1 and errors[0].startswith("audit-service: configuration error: AUDIT_GRPC_ADDRESS: ")
    assert "Traceback" not in result.stderr


async def test_no_password_reaches_logs_metrics_or_readyz(spawn_worker, service_env, database_outage, publisher):
    """Passwords in AUDIT_NATS_URL and AUDIT_DATABASE_URL (the test servers do not check them) stay out of the
    logs (DEBUG, JSON), /metrics and /readyz, including while PostgreSQL refuses the service."""
    from urllib.parse import urlsplit, urlunsplit

    secret = "s3cret-Pa55"

    def with_password(url: str) -> str:
        parts = urlsplit(url)
        user = parts.username or "audit"
        return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{parts.hostname}:{parts.port}"))

    port = free_port()
    worker = spawn_worker(
        AUDIT_NATS_URL=with_password(service_env["AUDIT_NATS_URL"]),
        AUDIT_DATABASE_URL=with_password(service_env["AUDIT_DATABASE_URL"]),
        AUDIT_METRICS_ADDRESS=f"127.0.0.1:{port}",
        AUDIT_LOG_LEVEL="DEBUG",
        AUDIT_LOG_FORMAT="json",
    )
    await worker.ready()
    await publisher.publish(make_event())
    bodies = []
    async with database_outage():

        async def unready() -> bool:
            status, body = await get(f"http://127.0.0.1:{port}/readyz")
            bodies.append(body)
            return status == 503 and "ingest.postgres: PostgreSQL unreachable" in body

        await eventually(unready, what="/readyz naming PostgreSQL")
    bodies.append((await get(f"http://127.0.0.1:{port}/metrics"))[1])
    assert await worker.terminate() == 0
    assert secret not in worker.output()
    assert not any(secret in body for body in bodies)


async def test_otel_values_with_surrounding_spaces_mean_what_they_say(spawn_worker, publisher, owner):
    """OTEL_TRACES_SAMPLER=" always_off " (a stray space in a manifest) passed the start-up check, which strips,
    and the SDK, which does not, ignored it with a warning: every batch was traced."""
    worker = spawn_worker(
        OTEL_TRACES_EXPORTER="console", OTEL_TRACES_SAMPLER=" always_off ", OTEL_BSP_SCHEDULE_DELAY="100"
    )
    await worker.ready()
    event_id = (await publisher.publish(make_event())).event_id
    await eventually(lambda: stored(owner, event_id), what="the event stored")
    assert await worker.terminate() == 0
    assert "audit.ingest batch" not in worker.output()
    assert "always_off" not in worker.output(), "no warning about the sampler"
