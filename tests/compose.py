"""docker-compose.yml read as Compose reads it: YAML with its anchors and merge keys, then variable interpolation
(`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `$VAR`, `$$`), so
tests run the processes it describes with exactly the environment and command it gives them."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A `${VAR:?message}` whose variable is not set, as `docker compose config` refuses it."""


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """`value` with Compose's variable syntax replaced from `variables` (the shell's environment or `.env`)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        operator, argument = match["operator"], match["argument"] or ""
        present = name in variables
        usable = present and variables[name] != ""
        if operator in (":-", "-"):
            return variables[name] if (usable if operator == ":-" else present) else argument
        if operator in (":?", "?"):
            if not (usable if operator == ":?" else present):
                raise MissingVariable(f"{name}: {argument}")
            return variables[name]
        if operator in (":+", "+"):
            return argument if (usable if operator == ":+" else present) else ""
        return variables.get(name, "")

    return _VARIABLE.sub(substitute, value)


def _interpolated(node: object, variables: Mapping[str, str]) -> object:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(item, variables) for key, item in node.items()}
    return node


@dataclass(frozen=True)
class ComposeFile:
    """The model of a compose file after interpolation."""

    model: dict

    @classmethod
    def load(cls, path: Path, variables: Mapping[str, str]) -> ComposeFile:
        return cls(_interpolated(yaml.safe_load(path.read_text()), variables))

    def service(self, name: str) -> dict:
        return self.model["services"][name]

    def environment(self, service: str) -> dict[str, str]:
        """The service's environment (mapping or list form), every value a string as the container sees it."""
        raw = self.service(service).get("environment") or {}
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) for item in raw)
        return {key: "" if value is None else str(value) for key, value in raw.items()}

    def command(self, service: str) -> list[str]:
        """The service's command as words; a string command is split as Compose splits it (shell quoting, no shell)."""
        command = self.service(service)["command"]
        return shlex.split(command) if isinstance(command, str) else list(command)

    def server_settings(self, service: str) -> dict[str, str]:
        """The server settings of a postgres service's command, read as PostgreSQL reads them: `-c name=value`,
        `-cname=value` and `--name=value`, names case-folded with dashes as underscores, the last of a name winning.

        Raises:
            ValueError: a word that is not one of those forms (`-c` last, no `=`, `-N 200`), so a setting written in a
                form this does not read fails the tests that compare settings instead of going unchecked.
        """
        words = self.command(service)
        if words[:1] == ["postgres"]:  # the image's entry point also takes the options alone, without the program
            words = words[1:]
        settings: dict[str, str] = {}
        position = 0
        while position < len(words):
            word = words[position]
            if word == "-c":
                if position + 1 == len(words):
                    raise ValueError(f"{service}'s command ends with -c: no name=value after it")
                assignment, position = words[position + 1], position + 2
            elif word.startswith(("--", "-c")):
                assignment, position = word[2:], position + 1
            else:
                raise ValueError(f"{service}'s command has {word!r}, not a -c name=value or --name=value setting")
            name, equals, value = assignment.partition("=")
            if not equals or not name:
                raise ValueError(f"{service}'s command sets {assignment!r}, not name=value")
            settings[name.lower().replace("-", "_")] = value
        return settings

    def secret_file(self, name: str) -> str:
        return self.model["secrets"][name]["file"]

    def config_content(self, name: str) -> str:
        return self.model["configs"][name]["content"]
