"""Changed fields and YAML diffs of two resource states (pure)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from audit_service.core.diff import ChangeKind, FieldChange, changed_fields, format_path, to_yaml, yaml_diff
from hypothesis import given
from hypothesis import strategies as st

ADDED, REMOVED, MODIFIED = ChangeKind.ADDED, ChangeKind.REMOVED, ChangeKind.MODIFIED


def summary(changes: list[FieldChange]) -> list[tuple[str, ChangeKind, Any, Any]]:
    return [(change.path, change.kind, change.old, change.new) for change in changes]


def test_scalar_changes_in_path_order() -> None:
    before = {"name": "ci", "enabled": True, "ttl": 30.0, "owner": "alice"}
    after = {"name": "ci", "enabled": False, "ttl": 30, "team": "infra"}
    assert summary(changed_fields(before, after)) == [
        ("enabled", MODIFIED, True, False),
        ("owner", REMOVED, "alice", None),
        ("team", ADDED, None, "infra"),
    ]


def test_nested_objects_and_lists_are_followed_to_the_leaves() -> None:
    before = {"spec": {"containers": [{"image": "nginx:1", "ports": [80]}], "replicas": 1.0}}
    after = {"spec": {"containers": [{"image": "nginx:2", "ports": [80, 443]}, {"image": "envoy"}], "replicas": 1}}
    assert summary(changed_fields(before, after)) == [
        ("spec.containers[0].image", MODIFIED, "nginx:1", "nginx:2"),
        ("spec.containers[0].ports[1]", ADDED, None, 443),
        ("spec.containers[1]", ADDED, None, {"image": "envoy"}),
    ]


def test_list_items_are_ordered_by_index_not_as_text() -> None:
    before = {"items": list(range(12))}
    after = {"items": [*range(2), 20, *range(3, 10), 100, 110]}
    assert [change.path for change in changed_fields(before, after)] == ["items[2]", "items[10]", "items[11]"]


def test_a_value_whose_type_changes_is_one_change() -> None:
    before = {"limits": {"cpu": 1}, "flag": True, "count": 1, "tags": ["a"], "note": None}
    after = {"limits": ["cpu"], "flag": 1, "count": "1", "tags": {"0": "a"}, "note": 0}
    assert summary(changed_fields(before, after)) == [
        ("count", MODIFIED, 1, "1"),
        ("flag", MODIFIED, True, 1),
        ("limits", MODIFIED, {"cpu": 1}, ["cpu"]),
        ("note", MODIFIED, None, 0),
        ("tags", MODIFIED, ["a"], {"0": "a"}),
    ]


def test_a_creation_adds_and_a_deletion_removes_every_top_level_field() -> None:
    state = {"name": "ci", "spec": {"size": 2}}
    assert summary(changed_fields(None, state)) == [("name", ADDED, None, "ci"), ("spec", ADDED, None, {"size": 2})]
    assert summary(changed_fields(state, None)) == [("name", REMOVED, "ci", None), ("spec", REMOVED, {"size": 2}, None)]
    assert changed_fields(None, None) == [] and changed_fields(state, copy.deepcopy(state)) == []


@pytest.mark.parametrize(
    ("location", "path"),
    [
        (("spec", "containers", 0, "image"), "spec.containers[0].image"),
        (("metadata", "app.kubernetes.io/name"), 'metadata["app.kubernetes.io/name"]'),
        (("api-key",), '["api-key"]'),
        ((0, "a"), "[0].a"),
        (("x", 'quo"te', "_ok9"), 'x["quo\\"te"]._ok9'),
        (("naïve", "1st"), '["naïve"]["1st"]'),
    ],
)
def test_paths(location: tuple, path: str) -> None:
    assert format_path(location) == path


def test_yaml_diff_shows_the_changed_lines() -> None:
    before = {"name": "ci", "spec": {"replicas": 1.0, "ports": [80.0]}, "owner": "alice"}
    after = {"name": "ci", "spec": {"replicas": 3.0, "ports": [80.0, 443.0]}}
    assert yaml_diff(before, after) == (
        "--- before\n"
        "+++ after\n"
        "@@ -1,6 +1,6 @@\n"
        " name: ci\n"
        "-owner: alice\n"
        " spec:\n"
        "   ports:\n"
        "   - 80\n"
        "-  replicas: 1\n"
        "+  - 443\n"
        "+  replicas: 3\n"
    )


def test_yaml_diff_of_a_creation_and_of_no_change() -> None:
    assert yaml_diff(None, {"name": "ci", "size": 2.5, "label": "é"}) == (
        "--- before\n+++ after\n@@ -0,0 +1,3 @@\n+label: é\n+name: ci\n+size: 2.5\n"
    )
    assert yaml_diff(None, None) == ""
    assert yaml_diff({"a": 1}, {"a": 1.0}) == ""


# States of a few fixed keys (plain YAML words) with string leaves that are plain YAML scalars too, so that a
# leaf's line can be found in the rendered text. Small on purpose: a few keys, lists and leaves at each level
# find what larger states would (a changed leaf, an added or removed field or item, a type change, at any
# depth), and a pair takes about a millisecond to draw instead of several (tens in the slowest tenth).
KEYS = st.sampled_from(["a", "b", "c", "name", "spec", "items", "x-y", "app.io/name"])
WORDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).map("v_".__add__)
SCALARS = st.none() | st.booleans() | st.integers(-1000, 1000) | st.sampled_from([0.5, -2.25, 1e3]) | WORDS
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)
STATES = st.dictionaries(KEYS, VALUES, max_size=4)


@st.composite
def state_pairs(draw: st.DrawFn) -> tuple[dict, dict]:
    """A state and a variation of it (some leaves changed, some fields added or removed), or two unrelated ones."""
    before = draw(STATES)
    if draw(st.booleans()):
        return before, draw(STATES)

    def vary(value: Any) -> Any:
        if isinstance(value, dict):
            varied = {key: vary(item) for key, item in value.items() if draw(st.integers(0, 5))}
            return varied | draw(st.dictionaries(KEYS, VALUES, max_size=1))
        if isinstance(value, list):
            return [vary(item) for item in value] + draw(st.lists(VALUES, max_size=1))
        return draw(VALUES) if draw(st.integers(0, 3)) == 0 else value

    return before, vary(before)


def apply(state: dict, changes: list[FieldChange]) -> dict:
    """`state` with the changes made to it (list items removed from the end first, as the changes say)."""
    result = copy.deepcopy(state)
    for change in sorted(changes, key=lambda change: change.kind is not REMOVED):
        *parents, last = change.location
        target = result
        for part in parents:
            target = target[part]
        if change.kind is not REMOVED:
            if isinstance(target, list) and last == len(target):
                target.append(change.new)
            else:
                target[last] = change.new
    for change in sorted((c for c in changes if c.kind is REMOVED), key=lambda c: c.location, reverse=True):
        *parents, last = change.location
        target = result
        for part in parents:
            target = target[part]
        del target[last]
    return result


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def patched(text: str, diff: str) -> str:
    """`text` with a unified diff applied to it (checking each context and removed line)."""
    old, new, cursor = text.splitlines(keepends=True), [], 0
    lines = diff.splitlines(keepends=True)[2:]
    for line in lines:
        if line.startswith("@@"):
            start, length = re.match(r"@@ -(\d+)(?:,(\d+))?", line).groups()
            start = int(start) if length == "0" else int(start) - 1  # an empty range names the line before it
            new.extend(old[cursor:start])
            cursor = start
        elif line.startswith("+"):
            new.append(line[1:])
        else:
            assert old[cursor] == line[1:], (old[cursor], line)
            cursor += 1
            if line.startswith(" "):
                new.append(line[1:])
    return "".join(new + old[cursor:])


def line_values(diff: str, sign: str) -> set[str]:
    """The "key: value" or "value" part of the diff's added (+) or removed (-) lines."""
    found = set()
    for line in diff.splitlines()[2:]:
        if line.startswith(sign):
            text = line[1:].lstrip(" ")
            while text.startswith("- "):
                text = text[2:].lstrip(" ")
            found.add(text)
    return found


@given(state_pairs())
def test_applying_the_changes_to_before_gives_after(pair: tuple[dict, dict]) -> None:
    before, after = pair
    assert apply(before, changed_fields(before, after)) == after


@given(state_pairs())
def test_paths_are_unique_and_in_order(pair: tuple[dict, dict]) -> None:
    changes = changed_fields(*pair)
    paths = [change.path for change in changes]
    assert len(set(paths)) == len(paths)
    assert [change.location for change in changes] == sorted(change.location for change in changes)


@given(state_pairs())
def test_the_yaml_diff_turns_before_into_after_and_shows_each_changed_leaf(pair: tuple[dict, dict]) -> None:
    before, after = pair
    changes = changed_fields(before, after)
    diff = yaml_diff(before, after)
    assert (diff == "") == (changes == [])
    if not diff:
        return
    assert patched(to_yaml(before), diff) == to_yaml(after)
    assert yaml.safe_load(to_yaml(after) or "{}") == after
    # A changed string leaf that is nowhere in the other state has its own line: added, or removed.
    added, removed = line_values(diff, "+"), line_values(diff, "-")
    for change in changes:
        last = change.location[-1] if change.location else None
        key = f"{yaml.safe_dump(last).removesuffix(chr(10) + '...' + chr(10))}: " if isinstance(last, str) else ""
        if change.kind is not REMOVED and isinstance(change.new, str) and change.new not in leaves(before):
            assert f"{key}{change.new}" in added, (change, diff)
        if change.kind is not ADDED and isinstance(change.old, str) and change.old not in leaves(after):
            assert f"{key}{change.old}" in removed, (change, diff)
