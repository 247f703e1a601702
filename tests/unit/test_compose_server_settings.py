"""How tests read a postgres service's server settings from docker-compose.yml: every form PostgreSQL and the postgres
image accept is read as PostgreSQL reads it, and anything else fails loudly, so the tests that compare these settings
with the dev stack's and check them in effect never pass while a setting is left unread."""

from __future__ import annotations

import re

import pytest

from ..compose import ComposeFile
from ..conftest import REPO_ROOT


def settings_of(command: str | list[str]) -> dict[str, str]:
    return ComposeFile({"services": {"postgres": {"image": "postgres:18", "command": command}}}).server_settings(
        "postgres"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["postgres", "-c", "max_wal_size=8GB", "-c", "max_connections=200"],
        ["postgres", "--max_wal_size=8GB", "--max_connections=200"],
        ["postgres", "-cmax_wal_size=8GB", "-cmax_connections=200"],
        ["postgres", "--max-wal-size=8GB", "-c", "MAX_CONNECTIONS=200"],
        ["-c", "max_wal_size=8GB", "-c", "max_connections=200"],  # the entry point puts `postgres` in front
        "postgres -c max_wal_size=8GB --max_connections=200",  # Compose's string form, split into words
    ],
)
def test_every_form_postgres_accepts_is_read_as_postgres_reads_it(command):
    assert settings_of(command) == {"max_wal_size": "8GB", "max_connections": "200"}


def test_a_value_may_hold_equals_signs_and_spaces_quoted_in_the_string_form():
    assert settings_of(["postgres", "-c", "options=-c x=y"]) == {"options": "-c x=y"}
    assert settings_of("postgres -c 'options=-c x=y' -c search_path=a,b") == {"options": "-c x=y", "search_path": "a,b"}


def test_the_last_setting_of_a_name_wins_as_in_postgres():
    assert settings_of(["postgres", "-c", "max_wal_size=1GB", "--max-wal-size=8GB"]) == {"max_wal_size": "8GB"}


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["postgres", "-c"], "ends with -c"),
        (["postgres", "-c", "max_wal_size"], "'max_wal_size'"),
        (["postgres", "--max_wal_size", "8GB"], "'max_wal_size'"),
        (["postgres", "-N", "200"], "'-N'"),
        (["postgres", "-c", "=8GB"], "'=8GB'"),
        (["bash", "-c", "postgres"], "'bash'"),
    ],
)
def test_a_word_that_is_not_a_setting_fails_naming_it(command, named):
    with pytest.raises(ValueError, match=named):
        settings_of(command)


def test_docker_compose_ymls_postgres_command_is_read_whole():
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    compose = ComposeFile.load(REPO_ROOT / "docker-compose.yml", dict.fromkeys(required, "set"))
    assert compose.server_settings("postgres") == {"max_wal_size": "8GB"}
