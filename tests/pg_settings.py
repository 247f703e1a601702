"""Reading back the settings a real PostgreSQL server runs with."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg


async def settings_and_sources(url: str, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each setting's value as SHOW prints it, and where it came from (pg_settings.source: "command line",
    "configuration file", "default"...)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT name, current_setting(name) AS value, source FROM pg_settings WHERE name = ANY($1::text[])",
            list(names),
        )
    finally:
        await conn.close()
    return {row["name"]: (row["value"], row["source"]) for row in rows}


async def settings_in_effect(url: str, names: Iterable[str]) -> dict[str, str]:
    """Each setting's value as SHOW prints it."""
    return {name: value for name, (value, _) in (await settings_and_sources(url, names)).items()}
