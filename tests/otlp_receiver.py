"""A tiny OTLP/gRPC collector for tests: a real gRPC server implementing the OTLP trace and metrics services,
keeping what it receives in memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def attribute_value(value: common_pb2.AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    service_name: str
    span: trace_pb2.Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, object]:
        return {attribute.key: attribute_value(attribute.value) for attribute in self.span.attributes}

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()


@dataclass
class OtlpReceiver:
    """What a test's collector received, and where it listens (`endpoint` is for OTEL_EXPORTER_OTLP_ENDPOINT)."""

    port: int = 0
    trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        found = []
        for request in self.trace_requests:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        attribute_value(attribute.value)
                        for attribute in resource_spans.resource.attributes
                        if attribute.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    found.extend(ReceivedSpan(str(service), span) for span in scope_spans.spans)
        return found

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self.metric_requests
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(self, request, context):
        self._receiver.trace_requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(self, request, context):
        self._receiver.metric_requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """An OTLP/gRPC receiver on a free port of 127.0.0.1 for the block."""
    receiver = OtlpReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(receiver), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver
    finally:
        await server.stop(None)


async def _serve_until_terminated(port: int) -> None:
    """Serves on `port` until SIGTERM, then prints how many spans and metric exports were received."""
    import signal

    receiver = OtlpReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(receiver), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)
    print(f"spans={len(receiver.spans())} metric_exports={len(receiver.metric_requests)}", flush=True)


if __name__ == "__main__":  # python -m tests.otlp_receiver PORT: a collector of its own process (benchmarks)
    import asyncio
    import sys

    asyncio.run(_serve_until_terminated(int(sys.argv[1])))
