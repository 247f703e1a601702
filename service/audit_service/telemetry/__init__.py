"""Telemetry of the service's processes: the OpenTelemetry SDK (setup.py), the HTTP port of Prometheus and the
probes (http.py)."""
