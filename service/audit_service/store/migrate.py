"""Versioned schema migrations: numbered SQL files applied once each, in order, under a lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_MIGRATION_LOCK = 0x4155_4449_545F_4D49  # arbitrary constant: one migrator at a time per database


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


class MigrationError(RuntimeError):
    """A migration failed; nothing of it was applied (each runs in its own transaction). The message is one
    line: the migration, the database's message and its hint.

    Attributes:
        version: the failed migration's number.
        name: its name.
    """

    def __init__(self, migration: Migration, error: asyncpg.PostgresError) -> None:
        self.version = migration.version
        self.name = migration.name
        hint = f" ({error.hint})" if getattr(error, "hint", None) else ""
        message = getattr(error, "message", None) or str(error)
        super().__init__(
            f"migration {migration.version:04d}_{migration.name} failed, nothing of it applied: {message}{hint}"
        )


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in files(__package__).joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda migration: migration.version)


async def migrate(conn: asyncpg.Connection, *, up_to: int | None = None) -> list[Migration]:
    """Applies the migrations this database lacks (up to version `up_to`, when given), each in its own
    transaction; returns those applied. Raises MigrationError for the first that fails (those before it stay
    applied)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS audit_schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied_versions = {row["version"] for row in await conn.fetch("SELECT version FROM audit_schema_migrations")}
        applied = []
        for migration in available_migrations():
            if migration.version in applied_versions or (up_to is not None and migration.version > up_to):
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO audit_schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            except asyncpg.PostgresError as error:
                raise MigrationError(migration, error) from error
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
