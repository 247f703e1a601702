"""Ingest: JetStream streams and consumer, the worker loop, dead letters."""
