"""The OpenTelemetry SDK of a process: tracer and meter providers set globally, from TelemetryConfig.

Call `setup_telemetry` once at process start, before any instrument is used (instruments made earlier through
`opentelemetry.metrics.get_meter(...)` and `trace.get_tracer(...)` are proxies that bind to the providers set
here), and `Telemetry.shutdown()` on exit, which flushes what is buffered within a bounded time.

Nothing here can block the write path: spans go through a BatchSpanProcessor (a bounded queue emptied by a
thread of its own; a span that finds it full is dropped and counted) to exporters with a short timeout, and
metrics are collected by the reader's thread or by the scrape.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from ..config import TelemetryConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 5.0
"""Longest the flush on exit may take: with the collector down, what is still buffered then is lost."""

SDK_SELF_METRICS = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
"""The SDK's switch for its own metrics (otel.sdk.*: spans dropped by the queue, spans whose export failed)."""


@dataclass
class Telemetry:
    """The providers this process set globally (None where that signal is off)."""

    service_name: str
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    prometheus: bool = False
    """Whether a Prometheus reader feeds prometheus_client's default registry (scraped by telemetry/http.py)."""
    summary: str = ""
    """What is on, e.g. "traces to otlp, Prometheus metrics" (empty when nothing is)."""
    _shut_down: bool = field(default=False, repr=False)

    def log_summary(self) -> None:
        """One line saying what telemetry is on; logged by long-running processes once their checks passed (so a
        start-up error stays the only line)."""
        if self.summary:
            log.info("telemetry of %s: %s", self.service_name, self.summary)

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    def shutdown(self, timeout_seconds: float = SHUTDOWN_SECONDS) -> None:
        """Flushes and shuts the providers down, giving up after `timeout_seconds` (the SDK's own flush can
        wait for an export to an unreachable collector much longer)."""
        if self._shut_down:
            return
        self._shut_down = True
        providers = [provider for provider in (self.tracer_provider, self.meter_provider) if provider is not None]
        if not providers:
            return

        def shut_down() -> None:
            for provider in providers:
                try:
                    provider.shutdown()
                except Exception:  # telemetry must never turn an orderly exit into a crash
                    log.warning("telemetry shutdown failed", exc_info=True)

        flusher = threading.Thread(target=shut_down, name="telemetry-shutdown", daemon=True)
        flusher.start()
        flusher.join(timeout_seconds)
        if flusher.is_alive():
            log.warning(
                "telemetry not flushed within %.0f s (collector unreachable?); the rest is dropped", timeout_seconds
            )


def _package_version() -> str:
    try:
        return version("audit-log-service")
    except PackageNotFoundError:
        return "0"


def _export_timeout(config: TelemetryConfig, signal: str) -> float | None:
    """The timeout to give an exporter of `signal` (TRACES, METRICS): None when the operator set one, which the
    exporter then reads itself (an explicit timeout would override theirs)."""
    names = (f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    return None if any(os.environ.get(name, "").strip() for name in names) else config.export_timeout_seconds


def _span_exporter(kind: str, config: TelemetryConfig, meter_provider: MeterProvider | None) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter()
    timeout = _export_timeout(config, "TRACES")
    if config.traces_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

        return HttpSpanExporter(timeout=timeout, meter_provider=meter_provider)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

    return GrpcSpanExporter(timeout=timeout, meter_provider=meter_provider)


def _metric_reader(kind: str, config: TelemetryConfig) -> MetricReader:
    if kind == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    timeout = _export_timeout(config, "METRICS")
    if config.metrics_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

        return PeriodicExportingMetricReader(HttpMetricExporter(timeout=timeout))
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

    return PeriodicExportingMetricReader(GrpcMetricExporter(timeout=timeout))


def build_telemetry(config: TelemetryConfig, default_service_name: str) -> Telemetry:
    """The providers `config` asks for, not yet set globally (see `setup_telemetry`).

    Raises:
        ConfigError: OTEL_BSP_* sizes the SDK refuses.
    """
    service_name = config.service_name or default_service_name
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES (and OTEL_SERVICE_NAME, which wins).
    resource = Resource.create({SERVICE_NAME: service_name, SERVICE_VERSION: _package_version()})
    telemetry = Telemetry(service_name=service_name)
    readers: list[MetricReader] = [_metric_reader(kind, config) for kind in config.metrics_exporters]
    if config.metrics_address:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
        telemetry.prometheus = True
    if readers:
        # shutdown_on_exit=False: Telemetry.shutdown flushes, bounded; the SDK's atexit hook would flush a second
        # time at exit, unbounded (as long as an export to a hung collector may take).
        telemetry.meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    if config.tracing:
        telemetry.tracer_provider = TracerProvider(
            resource=resource, meter_provider=telemetry.meter_provider, shutdown_on_exit=False
        )
        for kind in config.traces_exporters:
            exporter = _span_exporter(kind, config, telemetry.meter_provider)
            try:
                processor = BatchSpanProcessor(exporter, meter_provider=telemetry.meter_provider)
            except ValueError as error:  # the SDK's check of the OTEL_BSP_* sizes
                raise ConfigError("OTEL_BSP_MAX_QUEUE_SIZE/OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(error)) from None
            telemetry.tracer_provider.add_span_processor(processor)
    return telemetry


def setup_telemetry(config: TelemetryConfig, default_service_name: str) -> Telemetry:
    """Builds the providers `config` asks for and sets them globally; call once per process, at start.

    With metrics on, the SDK's own metrics are turned on too (unless OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
    says otherwise): `otel.sdk.processor.span.processed` with `error.type=queue_full` counts the spans dropped
    because the export queue was full, `otel.sdk.exporter.span.exported` with an `error.type` those whose export
    failed.
    """
    # An empty OTEL_* variable means unset (docker-compose.yml passes `${OTEL_EXPORTER_OTLP_ENDPOINT:-}`); the
    # SDK's exporters would take an empty endpoint for one. Others are stripped, as config.py reads them: the SDK
    # would ignore " always_off " (a warning, then the default sampler) after config.py accepted it.
    for name, value in [(name, value) for name, value in os.environ.items() if name.startswith("OTEL_")]:
        if not value.strip():
            del os.environ[name]
        elif value != value.strip():
            os.environ[name] = value.strip()
    if config.metrics_exporters or config.metrics_address:
        os.environ.setdefault(SDK_SELF_METRICS, "true")  # read by the SDK's constructors, below
    telemetry = build_telemetry(config, default_service_name)
    if telemetry.meter_provider is not None:
        metrics.set_meter_provider(telemetry.meter_provider)
    if telemetry.tracer_provider is not None:
        trace.set_tracer_provider(telemetry.tracer_provider)
    enabled = [
        *(f"traces to {kind}" for kind in config.traces_exporters),
        *(f"metrics to {kind}" for kind in config.metrics_exporters),
        *(["Prometheus metrics"] if telemetry.prometheus else []),
    ]
    telemetry.summary = ", ".join(enabled)
    return telemetry


def default_service_name(command: str) -> str:
    """service.name of a process started as `audit-service <command>`, unless OTEL_SERVICE_NAME is set."""
    return {"serve": "audit-api"}.get(command, f"audit-{command}")


def server_interceptors(services: Sequence[str]) -> list[object]:
    """gRPC server interceptors that give each call to `services` a server span with rpc.* attributes, or none
    when this process records no spans (no SDK tracer provider set). Health and reflection are left out:
    probes would flood the traces (and grpc's Health.Watch is not an async generator, which the
    instrumentation's streaming wrapper requires)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    prefixes = tuple(f"/{service}/" for service in services)

    def traced(handler_call_details: object) -> bool:
        return getattr(handler_call_details, "method", "").startswith(prefixes)

    return [aio_server_interceptor(filter_=traced)]
