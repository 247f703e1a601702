"""The embedded dev stack: real NATS and PostgreSQL servers from wheels, run as child processes."""
