"""What only the service itself writes into the log: its own configuration changes (alert rules). Pure.

Producers cannot publish events of these resource types or actions: the alert_rules read model is rebuilt from
the rules' resource streams, so a forged event must never enter them."""

from __future__ import annotations

ALERT_RULE_RESOURCE_TYPE = "audit.alert_rule"
"""The resource type of rule-change events; the resource id is the rule's id."""
ALERT_RULE_ACTION_PREFIX = "audit.alert_rule."
"""Rule-change actions: audit.alert_rule.create, .update and .delete."""


def reserved_field(resource_type: str, action: str) -> str | None:
    """The field of a published event that uses a name reserved for the service ("resource.type" or "action")."""
    if resource_type.lower() == ALERT_RULE_RESOURCE_TYPE:
        return "resource.type"
    if action.lower().startswith(ALERT_RULE_ACTION_PREFIX):
        return "action"
    return None
