"""Transports of the streaming destinations and alert webhooks: HTTP(S) and syslog over TLS, behind the SSRF
guard. The bytes they carry are made by core/delivery_formats.py."""
