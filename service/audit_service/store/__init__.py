"""PostgreSQL adapter: migrations, the append transaction, reads and chain verification."""
