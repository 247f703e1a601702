"""Alert evaluation without I/O: committed events in position order and the compiled enabled rules in, alerts out.

Windows use recorded_at (commit time), not occurred_at: positions and recorded_at only move forward together, so
an event can never arrive "late" into a window that was already evaluated, and the alerts are a function of the
log alone (a replay gives the same alerts, whatever the page boundaries).

A rule without a threshold raises one alert per matching event. A rule with a threshold (count N within window W,
grouped by group_by) keeps, per group, the matching events of the last W; when the N-th arrives and the group is
not quiet, it raises one alert naming those N positions, forgets them, and keeps the group quiet until the
alert's window (from its oldest event) has fully passed: no alert storm. That state is rebuildable: warm() feeds
the events of the last W before a checkpoint without raising, and restore() applies the group's latest stored
alert (what a run would have done at that alert).

The rule set is a function of the log too: the caller applies each rule-change event (rule_change_of) with
apply_rule_change() before that event is evaluated, so every event is evaluated with the rules as of its position,
and a replay raises the same alerts whenever the reactor noticed the change.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import event_pb2
from google.protobuf import json_format

from .alert_rules import CompiledRule, rule_from_json
from .matching import event_columns
from .records import timestamp_micros
from .reserved import ALERT_RULE_ACTION_PREFIX, ALERT_RULE_RESOURCE_TYPE


@dataclass(frozen=True, slots=True)
class Alert:
    tenant: str
    id: str
    rule_id: str
    rule_revision: int
    severity: int
    group_key: str
    window_start: int
    """recorded_at of the oldest event that raised it, in µs since the epoch."""
    window_end: int
    """recorded_at of the newest (the one that raised it), in µs."""
    message: str
    event_positions: tuple[int, ...]
    destinations: tuple[str, ...] = ()
    """The rule's destinations when it raised the alert: where it is delivered."""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """What a rule-change event of the log says: the rule as of its position (None: deleted)."""

    tenant: str
    rule_id: str
    rule: pb.AlertRule | None


def rule_change_of(event: event_pb2.AuditEvent) -> RuleChange | None:
    """The rule change an event records, or None when it is not one (only the service appends those: producers'
    are dead-lettered, core/reserved.py). The rule's tenant is the event's."""
    if event.resource.type != ALERT_RULE_RESOURCE_TYPE or not event.action.startswith(ALERT_RULE_ACTION_PREFIX):
        return None
    rule = None
    if event.change.HasField("after"):
        rule = rule_from_json(json_format.MessageToDict(event.change.after))
        rule.tenant, rule.id = event.tenant, event.resource.id
    return RuleChange(event.tenant, event.resource.id, rule)


def alert_id(rule_id: str, name: str) -> str:
    """The deterministic id of a rule's alert: a UUIDv5 in the rule's id namespace."""
    return str(uuid.uuid5(uuid.UUID(rule_id), name))


def recorded_micros(event: event_pb2.AuditEvent) -> int:
    return timestamp_micros(event.recorded_at.seconds, event.recorded_at.nanos)


def window_micros(rule: pb.AlertRule) -> int:
    return rule.threshold.window.seconds * 1_000_000 if rule.HasField("threshold") else 0


@dataclass(slots=True)
class _Group:
    events: deque[tuple[int, int]] = field(default_factory=deque)
    """(recorded_at µs, position) of the matching events not yet in an alert, oldest first."""
    quiet_until: int = 0
    """No alert for this group from an event recorded before this (µs)."""
    cleared_through: int = 0
    """Position of the event that raised the group's latest alert (warm() ignores events up to it)."""


class Reactor:
    """The evaluation state of a set of rules. Feed every committed event once, in position order."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self._by_tenant: dict[str, list[CompiledRule]] = {}
        for compiled in rules:
            self._by_tenant.setdefault(compiled.rule.tenant, []).append(compiled)
        self._groups: dict[tuple[str, str], _Group] = {}

    @property
    def rule_ids(self) -> list[str]:
        return [c.rule.id for rules in self._by_tenant.values() for c in rules]

    @property
    def longest_window(self) -> int:
        """The longest threshold window of the rules, in µs (0 without thresholds): how far back to warm."""
        return max((window_micros(c.rule) for rules in self._by_tenant.values() for c in rules), default=0)

    def rule(self, rule_id: str) -> CompiledRule | None:
        for rules in self._by_tenant.values():
            for compiled in rules:
                if compiled.rule.id == rule_id:
                    return compiled
        return None

    def apply_rule_change(self, tenant: str, rule_id: str, compiled: CompiledRule | None) -> None:
        """The rule set from here on: the tenant's rule `rule_id` is `compiled` (None: gone, disabled or broken).
        The groups of the rule's former revision are dropped: the new one starts with empty windows."""
        rules = [c for c in self._by_tenant.get(tenant, ()) if c.rule.id != rule_id]
        if compiled is not None:
            rules.append(compiled)
        if rules:
            self._by_tenant[tenant] = rules
        else:
            self._by_tenant.pop(tenant, None)
        for key in [key for key in self._groups if key[0] == rule_id]:
            del self._groups[key]

    def undecided(self, events: Iterable[event_pb2.AuditEvent]) -> dict[str, list[int]]:
        """The positions of the events each rule's matcher cannot decide, by rule id: a free-text search where
        the event or the term is outside ASCII, which only the database folds exactly as ListEvents' search does.
        The caller asks it, and passes what it confirmed to feed() or warm()."""
        undecided: dict[str, list[int]] = {}
        for event in events:
            rules = self._by_tenant.get(event.tenant)
            if not rules:
                continue
            columns = event_columns(event)
            for compiled in rules:
                if compiled.matcher(columns) is None:
                    undecided.setdefault(compiled.rule.id, []).append(event.position)
        return undecided

    def _matching(self, event: event_pb2.AuditEvent, confirmed: Collection[tuple[str, int]]) -> Iterable[CompiledRule]:
        rules = self._by_tenant.get(event.tenant)
        if not rules:
            return ()
        columns = event_columns(event)
        matching = []
        for compiled in rules:
            verdict = compiled.matcher(columns)
            if verdict is True or (verdict is None and (compiled.rule.id, event.position) in confirmed):
                matching.append(compiled)
        return matching

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Applies stored alerts (each group's latest suffices) as if this reactor had raised them, before or after
        warm(). Alerts of another revision than the rule's are ignored: a change started its groups afresh."""
        for alert in alerts:
            compiled = self.rule(alert.rule_id)
            if compiled is None or alert.rule_revision != compiled.rule.revision:
                continue
            group = self._groups.setdefault((alert.rule_id, alert.group_key), _Group())
            last = max(alert.event_positions)
            if last > group.cleared_through:
                window = self._window(alert.rule_id)
                group.cleared_through = last
                group.quiet_until = alert.window_start + window
                group.events = deque(e for e in group.events if e[1] > last)

    def _window(self, rule_id: str) -> int:
        compiled = self.rule(rule_id)
        return 0 if compiled is None else window_micros(compiled.rule)

    def warm(self, event: event_pb2.AuditEvent, confirmed: Collection[tuple[str, int]] = ()) -> None:
        """Feeds an event already evaluated before the checkpoint: it fills windows but raises nothing.

        Args:
            confirmed: (rule id, position) pairs the database found matching among undecided() ones.
        """
        for compiled in self._matching(event, confirmed):
            if compiled.rule.HasField("threshold"):
                group = self._groups.setdefault((compiled.rule.id, compiled.group_key(event)), _Group())
                if event.position > group.cleared_through:
                    self._add(group, recorded_micros(event), event.position, window_micros(compiled.rule))

    @staticmethod
    def _add(group: _Group, recorded: int, position: int, window: int) -> None:
        group.events.append((recorded, position))
        while group.events and recorded - group.events[0][0] >= window:
            group.events.popleft()

    def feed(self, event: event_pb2.AuditEvent, confirmed: Collection[tuple[str, int]] = ()) -> list[Alert]:
        """The alerts this event raises.

        Args:
            confirmed: (rule id, position) pairs the database found matching among undecided() ones.
        """
        alerts = []
        for compiled in self._matching(event, confirmed):
            rule = compiled.rule
            if not rule.HasField("threshold"):
                alerts.append(
                    Alert(
                        tenant=rule.tenant,
                        id=alert_id(rule.id, f"{event.position}"),
                        rule_id=rule.id,
                        rule_revision=rule.revision,
                        severity=rule.severity,
                        group_key="",
                        window_start=recorded_micros(event),
                        window_end=recorded_micros(event),
                        message=compiled.message(event, count=1, group=""),
                        event_positions=(event.position,),
                        destinations=tuple(rule.destinations),
                    )
                )
                continue
            key = compiled.group_key(event)
            group = self._groups.setdefault((rule.id, key), _Group())
            recorded, window = recorded_micros(event), window_micros(rule)
            self._add(group, recorded, event.position, window)
            count = rule.threshold.count
            if len(group.events) < count or recorded < group.quiet_until:
                continue
            raised = list(group.events)[-count:]
            start = raised[0][0]
            alerts.append(
                Alert(
                    tenant=rule.tenant,
                    id=alert_id(rule.id, f"{key}|{start}|{recorded}"),
                    rule_id=rule.id,
                    rule_revision=rule.revision,
                    severity=rule.severity,
                    group_key=key,
                    window_start=start,
                    window_end=recorded,
                    message=compiled.message(event, count=count, group=key),
                    event_positions=tuple(position for _, position in raised),
                    destinations=tuple(rule.destinations),
                )
            )
            group.events.clear()
            group.cleared_through = event.position
            group.quiet_until = start + window
        return alerts
