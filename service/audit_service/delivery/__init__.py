"""Delivery of what the reactor stores to the outside (alerts on NATS, alerts to webhooks, events to streaming
destinations), each a durable subscription with a checkpoint in PostgreSQL, and its transports (HTTP(S) and syslog
over TLS, behind the SSRF guard; the bytes are made by core/delivery_formats.py)."""
