"""Audit log service: NATS JetStream ingest into an append-only PostgreSQL log, read over gRPC."""
