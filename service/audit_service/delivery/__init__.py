"""Delivery of what the reactor stores to the outside, each a durable subscription with a checkpoint in PostgreSQL."""
