"""`audit-service ingest` with an OpenTelemetry SDK MeterProvider installed, for bench/ingest_throughput.py
--metrics-sdk: what recording the service's metrics costs the worker.

The provider collects every 10 s (more often than a default OTLP export or a Prometheus scrape) into an
exporter that drops the data, so the figure is the cost of recording and collecting, not of any transport.
"""

from __future__ import annotations

import sys

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader


class _Dropping(MetricExporter):
    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        return None


def main() -> int:
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(_Dropping(), export_interval_millis=10_000)])
    metrics.set_meter_provider(provider)
    from audit_service.cli import main as cli_main  # after the provider: the instruments bind to it either way

    try:
        return cli_main(["ingest"])
    finally:
        provider.shutdown()


if __name__ == "__main__":
    sys.exit(main())
