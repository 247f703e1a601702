"""docker-compose.yml read as Compose reads it: YAML with its anchors and merge keys, then variable interpolation
(`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `$VAR`, `$$`), so
tests run the processes it describes with exactly the environment and command it gives them."""

from __future__ import annotations

import re
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
        return list(self.service(service)["command"])

    def server_settings(self, service: str) -> dict[str, str]:
        """The `-c name=value` settings of the service's command (how the postgres image takes server settings)."""
        command = self.command(service)
        return dict(command[index + 1].split("=", 1) for index, word in enumerate(command) if word == "-c")

    def secret_file(self, name: str) -> str:
        return self.model["secrets"][name]["file"]

    def config_content(self, name: str) -> str:
        return self.model["configs"][name]["content"]
