"""Telemetry of the service: metrics recorded through the OpenTelemetry API (metrics.py); the SDK that exports
them is set up once per process (setup.py)."""
