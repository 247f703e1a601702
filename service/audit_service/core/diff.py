"""What changed between two states of a resource: the changed fields, and a unified diff of the states
rendered as YAML. Pure.

States are JSON objects (change.before and change.after); a missing state (None) compares as an empty one.
Numbers compare by value (Struct numbers are doubles, so 3 and 3.0 are the same), but never equal a boolean.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

PathPart = str | int
"""A key of an object, or an index of a list."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ChangeKind(enum.Enum):
    ADDED = 1
    REMOVED = 2
    MODIFIED = 3


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs between two states."""

    location: tuple[PathPart, ...]
    """Keys and list indexes from the root to the field."""
    kind: ChangeKind
    old: Any = None
    """The value before (None when added; a removed or modified field may also have held null)."""
    new: Any = None
    """The value after (None when removed)."""

    @property
    def path(self) -> str:
        """The location as text: 'spec.containers[0].image', 'labels["app.kubernetes.io/name"]'."""
        return format_path(self.location)


def format_path(location: tuple[PathPart, ...]) -> str:
    """Keys joined by ".", list items as [i], keys that are not plain identifiers as ["json string"]."""
    text = []
    for part in location:
        if isinstance(part, int):
            text.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            text.append(f".{part}" if text else part)
        else:
            text.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(text)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def same_value(left: Any, right: Any) -> bool:
    """JSON equality: 3 == 3.0, but True != 1 and lists compare item by item."""
    kind = _kind_of(left)
    if kind != _kind_of(right):
        return False
    if kind == "object":
        return left.keys() == right.keys() and all(same_value(left[key], right[key]) for key in left)
    if kind == "list":
        return len(left) == len(right) and all(same_value(a, b) for a, b in zip(left, right, strict=True))
    return left == right


def _changes(old: Any, new: Any, location: tuple[PathPart, ...]) -> Iterator[FieldChange]:
    kind = _kind_of(old)
    if kind != _kind_of(new):
        yield FieldChange(location, ChangeKind.MODIFIED, old, new)
    elif kind == "object":
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                yield FieldChange((*location, key), ChangeKind.REMOVED, old[key], None)
            elif key not in old:
                yield FieldChange((*location, key), ChangeKind.ADDED, None, new[key])
            else:
                yield from _changes(old[key], new[key], (*location, key))
    elif kind == "list":
        for index in range(max(len(old), len(new))):
            if index >= len(new):
                yield FieldChange((*location, index), ChangeKind.REMOVED, old[index], None)
            elif index >= len(old):
                yield FieldChange((*location, index), ChangeKind.ADDED, None, new[index])
            else:
                yield from _changes(old[index], new[index], (*location, index))
    elif old != new:
        yield FieldChange(location, ChangeKind.MODIFIED, old, new)


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[FieldChange]:
    """The fields that differ between two states, in path order (object keys sorted, list items by index).

    A field is reported where it first differs: an added or removed object or list as a whole, a value whose
    type changed as a whole, otherwise down to the leaves.
    """
    return list(_changes(before or {}, after or {}, ()))


def _plain(value: Any) -> Any:
    """The state as YAML should show it: integral numbers as integers (Struct numbers are all doubles)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def to_yaml(state: dict[str, Any] | None) -> str:
    """A state rendered as YAML with sorted keys; "" for no state or an empty one."""
    if not state:
        return ""
    # The pure-Python emitter: libyaml's is faster but writes some edge cases differently ("'': null" vs
    # "? ''"), and the text of a diff must not depend on how PyYAML was built.
    return yaml.safe_dump(_plain(state), sort_keys=True, default_flow_style=False, allow_unicode=True)


def yaml_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """A unified diff (from "before" to "after") of the two states rendered as YAML; "" when they are equal."""
    lines = difflib.unified_diff(
        to_yaml(before).splitlines(keepends=True),
        to_yaml(after).splitlines(keepends=True),
        fromfile="before",
        tofile="after",
    )
    return "".join(lines)
