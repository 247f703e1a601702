"""The ready-made alert rules of issue 17 (the four cases the product documentation tells users to alert on),
each created by one call and tunable through overrides. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from audit.v1 import alert_rules_pb2 as pb
from google.protobuf import duration_pb2

from ..errors import InvalidArgumentError
from .alert_rules import apply_update


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    rule: pb.AlertRule


def _threshold(count: int, seconds: int, group_by: str) -> pb.AlertThreshold:
    return pb.AlertThreshold(count=count, window=duration_pb2.Duration(seconds=seconds), group_by=group_by)


TEMPLATES: dict[str, Template] = {
    template.name: template
    for template in (
        Template(
            "multiple_failed_logins",
            "At least 5 failed logins by one actor within 10 minutes. Tune `query` to your login actions and "
            "`threshold`.",
            pb.AlertRule(
                display_name="Multiple failed logins",
                enabled=True,
                query="action:login action:user.login action:auth.login outcome:failure outcome:denied",
                threshold=_threshold(5, 600, "actor.id"),
                severity=pb.ALERT_SEVERITY_HIGH,
                message_template="{actor.id} failed to log in {count} times within {window}",
            ),
        ),
        Template(
            "mass_deletions",
            "At least 20 successful deletions by one actor within 5 minutes (actions, messages or resource names "
            "with the word delete). Tune `query` and `threshold`.",
            pb.AlertRule(
                display_name="Mass deletions",
                enabled=True,
                query="delete outcome:success",
                threshold=_threshold(20, 300, "actor.id"),
                severity=pb.ALERT_SEVERITY_HIGH,
                message_template="{actor.id} deleted {count} {resource.type} resources within {window}",
            ),
        ),
        Template(
            "permission_escalations",
            "Every successful grant of a role or permission. Tune `query` to your role and permission actions.",
            pb.AlertRule(
                display_name="Permission escalations",
                enabled=True,
                query="action:role.* action:permission.* action:member.role_update outcome:success",
                severity=pb.ALERT_SEVERITY_CRITICAL,
                message_template="{actor.id} changed permissions of {resource.type} {resource.id}: {message}",
            ),
        ),
        Template(
            "new_api_tokens",
            "Every API key or token created. Tune `query` to your token actions.",
            pb.AlertRule(
                display_name="New API tokens",
                enabled=True,
                query="action:api_key.create action:token.create action:personal_access_token.create",
                severity=pb.ALERT_SEVERITY_MEDIUM,
                message_template="{actor.id} created {resource.type} {resource.name}",
            ),
        ),
    )
}


def rule_from_template(name: str, overrides: pb.AlertRule, paths: Sequence[str]) -> pb.AlertRule:
    """The template's rule with the fields in `paths` taken from `overrides` (none when `paths` is empty).

    Raises:
        InvalidArgumentError: naming template (unknown) or override_mask (a field that cannot be set).
    """
    template = TEMPLATES.get(name)
    if template is None:
        raise InvalidArgumentError("template", f"unknown template {name[:64]!r}; one of {', '.join(TEMPLATES)}")
    if not paths:
        rule = pb.AlertRule()
        rule.CopyFrom(template.rule)
        return rule
    try:
        return apply_update(template.rule, overrides, paths)
    except InvalidArgumentError as error:
        raise InvalidArgumentError("override_mask", str(error).removeprefix("update_mask: ")) from None
