"""Alert rules without I/O: validation of every field (errors name it), group_by field paths, message templates
(parsed and rendered), update masks, and the rule's JSON form (what the log's change.before/after and the
alert_rules read model hold).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import audit_service_pb2, event_pb2
from google.protobuf import json_format

from ..errors import InvalidArgumentError
from .event_filter import UNRESTRICTED, Scope, compile_filter
from .filters import Expr, has_control_characters
from .matching import Matcher, compile_matcher
from .query_string import compile_query

MAX_DISPLAY_NAME_BYTES = 200
MAX_TEMPLATE_BYTES = 2048
MAX_QUERY_BYTES = 2048
MAX_GROUP_BY_BYTES = 256
MAX_METADATA_DEPTH = 8
MAX_DESTINATIONS = 20
MAX_RULE_BYTES = 64 * 1024
"""A rule's largest protobuf size: its change event holds it twice (before and after), well within the log's
256 KiB event limit."""
MAX_THRESHOLD_COUNT = 1_000_000
MIN_WINDOW_SECONDS = 1
MAX_WINDOW_SECONDS = 7 * 24 * 3600

DESTINATION_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")

GROUP_BY_FIELDS = (
    "action",
    "outcome",
    "cluster_id",
    "workspace_id",
    "actor.id",
    "actor.slug",
    "actor.email",
    "actor.type",
    "resource.id",
    "resource.type",
    "resource.name",
    "resource.fqn",
    "parent_resource.id",
    "parent_resource.type",
    "request.ip_address",
    "request.route",
    "request.method",
    "request.user_agent",
)
"""Event fields a threshold may group by (besides metadata.<path>)."""

TEMPLATE_FIELDS = (
    *GROUP_BY_FIELDS,
    "message",
    "tenant",
    "trace_id",
    "occurred_at",
    "count",
    "group",
    "rule.id",
    "rule.display_name",
    "severity",
    "window",
)
"""Names a message template may use (besides metadata.<path>)."""

UPDATABLE_FIELDS = (
    "display_name",
    "enabled",
    "filter",
    "query",
    "threshold",
    "severity",
    "message_template",
    "destinations",
)
"""What UpdateAlertRule may change (update_mask paths)."""


def _byte_length(value: str) -> int:
    return len(value.encode())


def field_path(path: str, field: str, *, allowed: Sequence[str]) -> tuple[str, ...]:
    """The parts of a field path such as actor.id or metadata.geo.country, refused (naming `field`) when it is not
    one of `allowed` nor metadata.<key>[.<key>...]."""
    if _byte_length(path) > MAX_GROUP_BY_BYTES:
        raise InvalidArgumentError(field, f"longer than {MAX_GROUP_BY_BYTES} bytes")
    if path in allowed:
        return tuple(path.split("."))
    parts = path.split(".")
    if parts[0] == "metadata":
        keys = parts[1:]
        if not keys:
            raise InvalidArgumentError(field, "metadata needs a key: metadata.<key>[.<key>...]")
        if len(keys) > MAX_METADATA_DEPTH:
            raise InvalidArgumentError(field, f"more than {MAX_METADATA_DEPTH} metadata keys")
        for key in keys:
            if not _METADATA_KEY.fullmatch(key):
                raise InvalidArgumentError(
                    field, f"metadata key {key[:64]!r} must be 1 to 64 letters, digits, '_' or '-'"
                )
        return tuple(parts)
    raise InvalidArgumentError(
        field, f"unknown field {path[:64]!r}; one of {', '.join(allowed)} or metadata.<key>[.<key>...]"
    )


def group_by_path(path: str, field: str = "alert_rule.threshold.group_by") -> tuple[str, ...]:
    """The parts of a threshold's group_by ("" groups nothing: one group)."""
    if not path:
        return ()
    return field_path(path, field, allowed=GROUP_BY_FIELDS)


@dataclass(frozen=True, slots=True)
class Placeholder:
    path: str
    """The field, e.g. "actor.id"."""


TemplatePart = str | Placeholder


def parse_template(text: str, field: str = "alert_rule.message_template") -> tuple[TemplatePart, ...]:
    """The literal texts and placeholders of a message template; "{{" and "}}" are literal braces.

    Raises:
        InvalidArgumentError: naming `field`, the problem and its character position (1-based).
    """
    if _byte_length(text) > MAX_TEMPLATE_BYTES:
        raise InvalidArgumentError(field, f"longer than {MAX_TEMPLATE_BYTES} bytes")
    if "\x00" in text:
        raise InvalidArgumentError(field, "contains a NUL character")
    parts: list[TemplatePart] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in "{}" and text[index + 1 : index + 2] == char:
            literal.append(char)
            index += 2
            continue
        if char == "}":
            raise InvalidArgumentError(field, f"unmatched '}}' at character {index + 1} (write '}}}}' for a brace)")
        if char == "{":
            end = text.find("}", index + 1)
            if end < 0:
                raise InvalidArgumentError(field, f"unclosed '{{' at character {index + 1}")
            name = text[index + 1 : end].strip()
            if not name:
                raise InvalidArgumentError(field, f"empty placeholder at character {index + 1}")
            try:
                field_path(name, field, allowed=TEMPLATE_FIELDS)
            except InvalidArgumentError as error:
                detail = str(error).removeprefix(f"{field}: ")
                raise InvalidArgumentError(field, f"{detail} (placeholder at character {index + 1})") from None
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Placeholder(name))
            index = end + 1
            continue
        literal.append(char)
        index += 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def render_template(parts: Sequence[TemplatePart], value_of: Callable[[str], Any]) -> str:
    """The message: each placeholder replaced by str(value_of(path)) ("" for None)."""
    out = []
    for part in parts:
        if isinstance(part, Placeholder):
            value = value_of(part.path)
            out.append("" if value is None else str(value))
        else:
            out.append(part)
    return "".join(out)


def _check_text(value: str, field: str, limit: int, *, required: bool) -> None:
    if required and not value.strip():
        raise InvalidArgumentError(field, "is required")
    if _byte_length(value) > limit:
        raise InvalidArgumentError(field, f"longer than {limit} bytes")
    if has_control_characters(value):
        raise InvalidArgumentError(field, "contains control characters")


def _rename(error: InvalidArgumentError, field: str, prefix: str) -> InvalidArgumentError:
    """The error of a compiled filter or query, naming the rule's field instead of the request's."""
    detail = str(error).removeprefix(f"{error.field}: ")
    if error.field == "filter.query" and field == f"{prefix}.query":
        return InvalidArgumentError(field, detail)
    return InvalidArgumentError(f"{prefix}.{error.field}", detail)


def validate_rule(rule: pb.AlertRule, prefix: str = "alert_rule") -> None:
    """Checks every field a client sets (not id, tenant, times or revision).

    Raises:
        InvalidArgumentError: naming the first field at fault, e.g. alert_rule.threshold.window.
    """
    if rule.ByteSize() > MAX_RULE_BYTES:
        raise InvalidArgumentError(prefix, f"is {rule.ByteSize():,} bytes, more than {MAX_RULE_BYTES:,}")
    _check_text(rule.display_name, f"{prefix}.display_name", MAX_DISPLAY_NAME_BYTES, required=True)
    selector = rule.WhichOneof("selector")
    if selector is None:
        raise InvalidArgumentError(f"{prefix}.filter", "one of filter or query is required")
    if selector == "filter":
        if rule.filter.tenant and rule.tenant and rule.filter.tenant != rule.tenant:
            raise InvalidArgumentError(f"{prefix}.filter.tenant", "must be empty or the rule's tenant")
        if rule.filter.query and _byte_length(rule.filter.query) > MAX_QUERY_BYTES:
            raise InvalidArgumentError(f"{prefix}.filter.query", f"longer than {MAX_QUERY_BYTES} bytes")
        try:
            compile_filter(rule.filter, UNRESTRICTED)
        except InvalidArgumentError as error:
            raise _rename(error, f"{prefix}.filter", prefix) from None
    else:
        if not rule.query.strip():
            raise InvalidArgumentError(f"{prefix}.query", "is empty (it would match every event)")
        if _byte_length(rule.query) > MAX_QUERY_BYTES:
            raise InvalidArgumentError(f"{prefix}.query", f"longer than {MAX_QUERY_BYTES} bytes")
        try:
            compile_query(rule.query)
        except InvalidArgumentError as error:
            raise _rename(error, f"{prefix}.query", prefix) from None
    if rule.HasField("threshold"):
        threshold = rule.threshold
        if not 1 <= threshold.count <= MAX_THRESHOLD_COUNT:
            raise InvalidArgumentError(
                f"{prefix}.threshold.count", f"must be from 1 to {MAX_THRESHOLD_COUNT}, got {threshold.count}"
            )
        window = threshold.window
        if not threshold.HasField("window"):
            raise InvalidArgumentError(f"{prefix}.threshold.window", "is required with a threshold")
        if window.nanos != 0:
            raise InvalidArgumentError(f"{prefix}.threshold.window", "must be whole seconds")
        if not MIN_WINDOW_SECONDS <= window.seconds <= MAX_WINDOW_SECONDS:
            raise InvalidArgumentError(
                f"{prefix}.threshold.window",
                f"must be from {MIN_WINDOW_SECONDS}s to {MAX_WINDOW_SECONDS}s (7 days), got {window.seconds}s",
            )
        group_by_path(threshold.group_by, f"{prefix}.threshold.group_by")
    if rule.severity not in pb.AlertSeverity.values() or rule.severity == pb.ALERT_SEVERITY_UNSPECIFIED:
        raise InvalidArgumentError(f"{prefix}.severity", f"is required (unknown or unset value {rule.severity})")
    parse_template(rule.message_template, f"{prefix}.message_template")
    if len(rule.destinations) > MAX_DESTINATIONS:
        raise InvalidArgumentError(f"{prefix}.destinations", f"more than {MAX_DESTINATIONS}")
    for index, name in enumerate(rule.destinations):
        if not DESTINATION_NAME.fullmatch(name):
            raise InvalidArgumentError(
                f"{prefix}.destinations[{index}]", f"must match {DESTINATION_NAME.pattern}, got {name[:64]!r}"
            )
    if len(set(rule.destinations)) != len(rule.destinations):
        raise InvalidArgumentError(f"{prefix}.destinations", "names a destination twice")


def apply_update(current: pb.AlertRule, change: pb.AlertRule, paths: Sequence[str]) -> pb.AlertRule:
    """The rule with the fields in `paths` (all updatable ones when empty) taken from `change`.

    Raises:
        InvalidArgumentError: naming update_mask, for a path that is not updatable.
    """
    for path in paths:
        if path not in UPDATABLE_FIELDS:
            raise InvalidArgumentError(
                "update_mask", f"cannot update {path[:64]!r}; updatable: {', '.join(UPDATABLE_FIELDS)}"
            )
    updated = pb.AlertRule()
    updated.CopyFrom(current)
    for path in paths or UPDATABLE_FIELDS:
        if path in ("filter", "query"):
            continue
        if path == "threshold":
            if change.HasField("threshold"):
                updated.threshold.CopyFrom(change.threshold)
            else:
                updated.ClearField("threshold")
        elif path == "destinations":
            del updated.destinations[:]
            updated.destinations.extend(change.destinations)
        else:
            setattr(updated, path, getattr(change, path))
    # filter and query are one choice: the mask names either (or both, or none: every field); the change's wins.
    selector_paths = {"filter", "query"} & set(paths or UPDATABLE_FIELDS)
    chosen = change.WhichOneof("selector")
    if chosen in selector_paths:
        if chosen == "filter":
            updated.filter.CopyFrom(change.filter)
        else:
            updated.query = change.query
    elif selector_paths == {"filter"}:
        updated.filter.CopyFrom(change.filter)
    elif selector_paths == {"query"}:
        updated.query = change.query
    elif selector_paths:
        updated.ClearField("selector")
    return updated


def rule_to_json(rule: pb.AlertRule) -> dict[str, Any]:
    """The rule as JSON (proto field names; what the log and the read model hold)."""
    return json_format.MessageToDict(rule, preserving_proto_field_name=True)


def rule_from_json(value: Mapping[str, Any]) -> pb.AlertRule:
    """The rule from its JSON form (rule_to_json's, or as the log stores it)."""
    return json_format.ParseDict(_integral(value), pb.AlertRule(), ignore_unknown_fields=True)


def _integral(value: Any) -> Any:
    """JSON numbers that went through a protobuf Struct (doubles) back to integers where they are whole."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def rule_filter(rule: pb.AlertRule) -> audit_service_pb2.EventFilter:
    """The EventFilter a rule selects events with (its query string as filter.query)."""
    if rule.WhichOneof("selector") == "query":
        return audit_service_pb2.EventFilter(query=rule.query)
    return rule.filter


_ENUM_FIELDS = {"outcome": event_pb2.Outcome, "actor.type": event_pb2.SubjectType}


def event_value(event: event_pb2.AuditEvent, path: str) -> str | None:
    """The value at an event field path (those of GROUP_BY_FIELDS, message, tenant, trace_id, occurred_at or
    metadata.<key>...) as text: enum names ("OUTCOME_FAILURE"), RFC 3339 times, JSON for metadata objects and
    lists; None when the event has no value there."""
    if path.startswith("metadata."):
        value: Any = json_format.MessageToDict(event.metadata) if event.HasField("metadata") else {}
        for key in path.split(".")[1:]:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        if isinstance(value, str):
            return value
        return orjson.dumps(_integral(value), option=orjson.OPT_SORT_KEYS).decode()
    if path == "occurred_at":
        return event.occurred_at.ToJsonString() if event.HasField("occurred_at") else None
    message: Any = event
    for part in path.split("."):
        message = getattr(message, part)
    if path in _ENUM_FIELDS:
        return _ENUM_FIELDS[path].Name(message) if message in _ENUM_FIELDS[path].values() else str(message)
    return message or None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A stored rule ready to evaluate: its matcher (scoped to its tenant), its grouping and its template."""

    rule: pb.AlertRule
    matcher: Matcher
    group_by: str
    template: tuple[TemplatePart, ...]
    where: Expr
    """The filter the matcher decides, for the database to decide what the matcher cannot (search outside ASCII)."""

    def group_key(self, event: event_pb2.AuditEvent) -> str:
        """The group an event counts in ("" without group_by, or when the event has no value there)."""
        return (event_value(event, self.group_by) or "") if self.group_by else ""

    def message(self, event: event_pb2.AuditEvent, *, count: int, group: str) -> str:
        """The alert's message for the event that raised it, `count` events of `group`."""
        rule = self.rule
        alert_values = {
            "count": count,
            "group": group,
            "rule.id": rule.id,
            "rule.display_name": rule.display_name,
            "severity": pb.AlertSeverity.Name(rule.severity).removeprefix("ALERT_SEVERITY_"),
            "window": rule.threshold.window.ToJsonString() if rule.HasField("threshold") else "",
        }

        def value_of(path: str) -> Any:
            return alert_values[path] if path in alert_values else event_value(event, path)

        return render_template(self.template, value_of)


def compile_rule(rule: pb.AlertRule) -> CompiledRule:
    """A stored (valid) rule compiled for evaluation, its filter ANDed with its tenant.

    Raises:
        InvalidArgumentError: the rule no longer compiles (e.g. stored under older rules): a broken rule.
    """
    validate_rule(rule)
    where = compile_filter(rule_filter(rule), Scope(tenant=rule.tenant))
    group_by = rule.threshold.group_by if rule.HasField("threshold") else ""
    return CompiledRule(rule, compile_matcher(where), group_by, parse_template(rule.message_template), where)
