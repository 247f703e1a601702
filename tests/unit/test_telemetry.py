"""Telemetry without servers: the OTEL_* and AUDIT_* settings, the providers they build, the log formats,
readiness."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from audit_service.config import TelemetryConfig, load_config
from audit_service.errors import ConfigError
from audit_service.logs import JsonFormatter, TextFormatter
from audit_service.telemetry.http import Readiness
from audit_service.telemetry.setup import build_telemetry, default_service_name
from opentelemetry.sdk.trace import TracerProvider


def test_telemetry_is_off_by_default() -> None:
    config = load_config(env={})
    assert config.telemetry == TelemetryConfig()
    assert config.log_format == "text"
    assert not config.telemetry.tracing
    telemetry = build_telemetry(config.telemetry, "audit-api")
    assert telemetry.tracer_provider is None and telemetry.meter_provider is None and not telemetry.prometheus


def test_the_otel_variables_are_read() -> None:
    telemetry = load_config(
        env={
            "OTEL_SERVICE_NAME": "audit-eu",
            "OTEL_TRACES_EXPORTER": "otlp,console",
            "OTEL_METRICS_EXPORTER": "Console",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "AUDIT_METRICS_ADDRESS": "0.0.0.0:9464",
            "AUDIT_LOG_FORMAT": "JSON",
        }
    )
    assert telemetry.telemetry == TelemetryConfig(
        service_name="audit-eu",
        traces_exporters=("otlp", "console"),
        metrics_exporters=("console",),
        traces_protocol="http/protobuf",
        metrics_protocol="grpc",
        metrics_address="0.0.0.0:9464",
    )
    assert telemetry.log_format == "json"


def test_an_otlp_endpoint_alone_turns_otlp_export_on_and_none_or_sdk_disabled_turn_it_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert load_config(env=endpoint).telemetry.traces_exporters == ("otlp",)
    assert load_config(env=endpoint).telemetry.metrics_exporters == ("otlp",)
    assert load_config(env=endpoint | {"OTEL_TRACES_EXPORTER": "none"}).telemetry.traces_exporters == ()
    disabled = load_config(env=endpoint | {"OTEL_SDK_DISABLED": "true"}).telemetry
    assert disabled.traces_exporters == () and disabled.metrics_exporters == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_TRACES_EXPORTER", "none,otlp"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpcs"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("AUDIT_METRICS_ADDRESS", "localhost"),
        ("AUDIT_METRICS_ADDRESS", "127.0.0.1:99999"),
        ("AUDIT_LOG_FORMAT", "logfmt"),
        ("OTEL_SDK_DISABLED", "maybe"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-1"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "inf"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "nan"),
        ("OTEL_BSP_SCHEDULE_DELAY", "1.5"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-3"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:port"),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/nonexistent/key.pem"),
        ("AUDIT_HEALTH_CHECK_INTERVAL_SECONDS", "inf"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env={variable: value})
    assert raised.value.setting == variable
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("value", ["GRPC", "HTTP/Protobuf", " grpc "])
def test_otlp_protocols_are_case_insensitive_as_opentelemetry_specifies(value: str) -> None:
    config = load_config(env={"OTEL_EXPORTER_OTLP_PROTOCOL": value})
    assert config.telemetry.traces_protocol == value.strip().lower()


@pytest.mark.parametrize("argument", ["2", "-0.1", "half"])
def test_a_ratio_outside_0_to_1_is_refused(argument: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        load_config(env={"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": argument})


def test_the_providers_built_follow_the_settings() -> None:
    config = TelemetryConfig(traces_exporters=("console",), metrics_address="127.0.0.1:0")
    telemetry = build_telemetry(config, "audit-ingest")
    try:
        assert telemetry.service_name == "audit-ingest"
        assert telemetry.tracing and telemetry.prometheus and telemetry.meter_provider is not None
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "audit-ingest"
    finally:
        telemetry.shutdown()
    named = build_telemetry(TelemetryConfig(service_name="audit-eu", traces_exporters=("console",)), "audit-api")
    try:
        assert named.service_name == "audit-eu" and named.meter_provider is None
    finally:
        named.shutdown()


def test_default_service_names() -> None:
    assert default_service_name("serve") == "audit-api"
    assert default_service_name("ingest") == "audit-ingest"
    assert default_service_name("dev") == "audit-dev"
    assert default_service_name("retention") == "audit-retention"


def _record(message: str = "stored %d events", *, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("audit_service.ingest.worker", logging.WARNING, __file__, 1, message, (3,), exc_info)


def test_json_lines_without_a_span() -> None:
    entry = json.loads(JsonFormatter().format(_record()))
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert entry["level"] == "WARNING" and entry["logger"] == "audit_service.ingest.worker"
    assert entry["message"] == "stored 3 events"
    assert entry["time"].endswith("+00:00")


def test_json_lines_carry_the_exception_and_the_recording_span() -> None:
    tracer = TracerProvider().get_tracer("test")  # not set globally: the current span is still in the context
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        exc_info = sys.exc_info()
    with tracer.start_as_current_span("batch") as span:
        line = JsonFormatter().format(_record(exc_info=exc_info))
        text = TextFormatter().format(_record())
    assert "\n" not in line
    entry = json.loads(line)
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["exception"].startswith("Traceback") and "ValueError: bad" in entry["exception"]
    assert text.endswith(f"stored 3 events trace_id={entry['trace_id']} span_id={entry['span_id']}")
    assert "trace_id" not in TextFormatter().format(_record())


def test_readiness() -> None:
    readiness = Readiness()
    assert readiness.ready  # nothing to wait for
    readiness.expect("ingest.consumer", "ingest.postgres")
    assert readiness.problems() == {"ingest.consumer": "starting", "ingest.postgres": "starting"}
    connected = [True]
    readiness.watch("ingest.nats", lambda: None if connected[0] else "NATS disconnected")
    readiness.set("ingest.consumer", None)
    readiness.set("ingest.postgres", None)
    assert readiness.ready
    connected[0] = False
    assert readiness.problems()["ingest.nats"] == "NATS disconnected" and not readiness.ready
    readiness.watch("broken", lambda: 1 / 0)
    assert readiness.problems()["broken"].startswith("check failed: ZeroDivisionError")
    readiness.forget("ingest.nats", "broken")
    assert readiness.ready
    readiness.beat()
    assert readiness.stalled_seconds() < 5
