"""What only the service itself writes into the log: its own configuration changes (alert rules, destinations).
Pure.

Producers cannot publish events of these resource types or actions: the alert_rules and destinations read models
are rebuilt from their resource streams, so a forged event must never enter them."""

from __future__ import annotations

ALERT_RULE_RESOURCE_TYPE = "audit.alert_rule"
"""The resource type of rule-change events; the resource id is the rule's id."""
ALERT_RULE_ACTION_PREFIX = "audit.alert_rule."
"""Rule-change actions: audit.alert_rule.create, .update and .delete."""

DESTINATION_RESOURCE_TYPE = "audit.destination"
"""The resource type of destination-change events; the resource id is the destination's name."""
DESTINATION_ACTION_PREFIX = "audit.destination."
"""Destination-change actions: audit.destination.create, .update, .delete, .pause, .resume and .replay."""

_RESERVED_TYPES = (ALERT_RULE_RESOURCE_TYPE, DESTINATION_RESOURCE_TYPE)
_RESERVED_ACTION_PREFIXES = (ALERT_RULE_ACTION_PREFIX, DESTINATION_ACTION_PREFIX)


def reserved_field(resource_type: str, action: str) -> str | None:
    """The field of a published event that uses a name reserved for the service ("resource.type" or "action")."""
    if resource_type.lower() in _RESERVED_TYPES:
        return "resource.type"
    if action.lower().startswith(_RESERVED_ACTION_PREFIXES):
        return "action"
    return None
