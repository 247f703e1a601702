"""Telemetry of the service's processes: the instruments, recorded through the OpenTelemetry API (metrics.py); the
SDK that exports them and the spans, set up once per process (setup.py); the HTTP port of Prometheus and the probes
(http.py)."""
