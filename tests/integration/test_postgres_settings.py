"""The settings EmbeddedPostgres runs PostgreSQL with, read back from real servers: a durable server (the dev stack,
the benchmarks) runs DURABLE_SETTINGS, docker-compose.yml's, from its command line, so they hold across restarts and
crash recovery; a caller's explicit settings win over them; a test server keeps fsync off and PostgreSQL's defaults;
a bad setting stops start() at once with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_service.devstack import postgres as embedded
from audit_service.devstack.postgres import DURABLE_SETTINGS, EmbeddedPostgres
from audit_service.devstack.processes import free_port

from ..pg_settings import settings_and_sources

NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


async def in_effect(server: EmbeddedPostgres, names: list[str]) -> dict[str, tuple[str, str]]:
    """Each setting's value and where it came from (pg_settings.source: "command line", "configuration file", ...)."""
    return await settings_and_sources(server.url(), names)


async def test_a_durable_server_runs_the_durable_settings_from_its_command_line_after_a_restart_and_a_kill_9(
    tmp_path: Path,
):
    data_dir = tmp_path / "data"
    expected = {name: (value, "command line") for name, value in DURABLE_SETTINGS.items()}
    assert expected["max_wal_size"] == ("8GB", "command line")  # docker-compose.yml's, as the production test keeps
    server = EmbeddedPostgres(data_dir, port=free_port())
    server.start()
    try:
        assert await in_effect(server, [*DURABLE_SETTINGS]) == expected
        assert (await in_effect(server, ["fsync"]))["fsync"][0] == "on"
    finally:
        server.stop()
    again = EmbeddedPostgres(data_dir, port=free_port())  # the dev stack's next run, on the same data directory
    again.start()
    try:
        assert await in_effect(again, [*DURABLE_SETTINGS]) == expected
    finally:
        again.kill()
    after_crash = EmbeddedPostgres(data_dir, port=free_port())
    after_crash.start()
    try:
        assert await in_effect(after_crash, [*DURABLE_SETTINGS]) == expected
    finally:
        after_crash.stop()


async def test_a_callers_explicit_setting_wins_over_the_durable_settings(tmp_path: Path):
    """The benchmarks pass their own settings to a durable server; a durable setting must not undo one of them."""
    assert DURABLE_SETTINGS["max_wal_size"] != "2GB"
    server = EmbeddedPostgres(tmp_path / "data", port=free_port(), settings={"max_wal_size": "2GB"})
    server.start()
    try:
        assert await in_effect(server, ["max_wal_size"]) == {"max_wal_size": ("2GB", "command line")}
    finally:
        server.stop()


async def test_a_server_that_is_not_durable_keeps_fsync_off_and_postgres_defaults_for_the_durable_settings(
    tmp_path: Path,
):
    server = EmbeddedPostgres(tmp_path / "data", port=free_port(), durable=False)
    server.start()
    try:
        settings = await in_effect(server, [*NOT_DURABLE, *DURABLE_SETTINGS])
    finally:
        server.stop()
    assert {name: settings[name] for name in NOT_DURABLE} == {
        name: (value, "command line") for name, value in NOT_DURABLE.items()
    }
    # initdb writes PostgreSQL's defaults into postgresql.conf; nothing on the command line overrides them here
    assert {settings[name][1] for name in DURABLE_SETTINGS} == {"configuration file"}
    assert settings["max_wal_size"][0] == "1GB"


@pytest.mark.parametrize(
    ("durable", "settings", "message"),
    [
        (False, {"max_wal_size": "8XB"}, 'invalid value for parameter "max_wal_size": "8XB"'),
        (False, {"max_wal_sise": "8GB"}, 'unrecognized configuration parameter "max_wal_sise"'),
    ],
)
def test_a_bad_explicit_setting_fails_start_at_once_with_one_line_naming_it(
    tmp_path: Path, durable: bool, settings: dict, message: str
):
    server = EmbeddedPostgres(tmp_path / "data", port=free_port(), durable=durable, settings=settings)
    with pytest.raises(RuntimeError) as raised:
        server.start()
    # "exited during start-up", not "did not become ready within": start() saw the server die instead of waiting
    assert str(raised.value).startswith("postgres exited during start-up: ")
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not server.running


def test_a_bad_durable_setting_fails_the_durable_start_at_once_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A typo in DURABLE_SETTINGS (kept equal to docker-compose.yml's) stops the dev stack's PostgreSQL with a line."""
    monkeypatch.setitem(embedded.DURABLE_SETTINGS, "max_wal_size", "8XB")
    server = EmbeddedPostgres(tmp_path / "data", port=free_port())
    with pytest.raises(RuntimeError) as raised:
        server.start()
    assert str(raised.value).startswith("postgres exited during start-up: ")
    assert 'invalid value for parameter "max_wal_size": "8XB"' in str(raised.value)
    assert "\n" not in str(raised.value)
