"""The reactor's evaluation without I/O: one alert per matching event without a threshold; with one, a sliding
window over recorded_at per group, no storm, and the same alerts whatever the page splits or restarts."""

from __future__ import annotations

import uuid

from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import event_pb2
from audit_service.core.alert_rules import compile_rule, rule_to_json
from audit_service.core.reactor import Alert, Reactor, RuleChange, alert_id, recorded_micros, rule_change_of
from google.protobuf import duration_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

RULE_A = str(uuid.UUID(int=1))
RULE_B = str(uuid.UUID(int=2))
RULE_C = str(uuid.UUID(int=3))
SECOND = 1_000_000


def failed_logins(tenant: str = "acme", rule_id: str = RULE_A, count: int = 5, window: int = 600) -> pb.AlertRule:
    return pb.AlertRule(
        id=rule_id,
        tenant=tenant,
        revision=1,
        display_name="Failed logins",
        query="action:user.login outcome:failure",
        threshold=pb.AlertThreshold(count=count, window=duration_pb2.Duration(seconds=window), group_by="actor.id"),
        severity=pb.ALERT_SEVERITY_HIGH,
        message_template="{actor.id}: {count} failed logins",
    )


def deletions(tenant: str = "acme", rule_id: str = RULE_B) -> pb.AlertRule:
    return pb.AlertRule(
        id=rule_id,
        tenant=tenant,
        revision=3,
        display_name="Deletions",
        query="action:user.delete",
        severity=pb.ALERT_SEVERITY_LOW,
        message_template="{actor.id} deleted {resource.id}",
    )


def event(position: int, seconds: float, *, action="user.login", actor="u-1", tenant="acme", ok=False):
    result = event_pb2.AuditEvent(
        tenant=tenant,
        action=action,
        outcome=event_pb2.OUTCOME_SUCCESS if ok else event_pb2.OUTCOME_FAILURE,
        actor=event_pb2.Subject(id=actor, type=event_pb2.SUBJECT_TYPE_USER),
        resource=event_pb2.Resource(type="user", id=f"r-{position}"),
        position=position,
    )
    micros = int(seconds * SECOND)
    result.recorded_at.seconds, result.recorded_at.nanos = divmod(micros, SECOND)[0], micros % SECOND * 1000
    result.occurred_at.CopyFrom(result.recorded_at)
    return result


def run(rules, events) -> list[Alert]:
    reactor = Reactor([compile_rule(r) for r in rules])
    return [alert for e in events for alert in reactor.feed(e)]


def test_a_rule_without_threshold_raises_one_alert_per_matching_event():
    events = [event(1, 0, action="user.delete"), event(2, 1), event(3, 2, action="user.delete", actor="u-2")]
    alerts = run([deletions()], events)
    assert [a.event_positions for a in alerts] == [(1,), (3,)]
    assert alerts[0].id == str(uuid.uuid5(uuid.UUID(RULE_B), "1"))
    assert alerts[1].message == "u-2 deleted r-3"
    assert (alerts[1].rule_revision, alerts[1].severity, alerts[1].group_key) == (3, pb.ALERT_SEVERITY_LOW, "")


def test_five_failed_logins_by_one_actor_within_the_window_raise_one_alert_naming_them():
    events = [event(p, p * 60) for p in range(1, 6)]
    assert run([failed_logins()], events[:4]) == []
    [alert] = run([failed_logins()], events)
    assert alert.event_positions == (1, 2, 3, 4, 5)
    assert (alert.window_start, alert.window_end) == (60 * SECOND, 300 * SECOND)
    assert alert.group_key == "u-1"
    assert alert.message == "u-1: 5 failed logins"
    assert alert.id == alert_id(RULE_A, f"u-1|{60 * SECOND}|{300 * SECOND}")


def test_events_outside_the_window_other_groups_successes_and_other_tenants_do_not_count():
    events = [
        event(1, 0),
        event(2, 700),  # the first has left the 600 s window
        event(3, 701, actor="u-2"),
        event(4, 702, ok=True),
        event(5, 703, tenant="globex"),
        event(6, 704),
        event(7, 705),
    ]
    assert run([failed_logins(count=4)], events) == []
    [alert] = run([failed_logins(count=4)], [*events, event(8, 706)])
    assert alert.event_positions == (2, 6, 7, 8)


def test_no_storm_the_group_stays_quiet_until_the_window_has_passed():
    events = [event(p, p) for p in range(1, 31)]  # 30 failures in 30 s
    alerts = run([failed_logins()], events)
    assert [a.event_positions for a in alerts] == [(1, 2, 3, 4, 5)]
    later = [*events, *(event(30 + p, 600 + p) for p in range(1, 6))]  # the window from second 1 has passed
    alerts = run([failed_logins()], later)
    assert len(alerts) == 2
    # the first event after the quiet time raises, with the events of the quiet time still in its window
    assert alerts[1].event_positions == (27, 28, 29, 30, 31)
    assert alerts[1].window_start == 27 * SECOND


def test_a_second_tenants_rule_never_sees_the_first_tenants_events():
    events = [event(p, p, action="user.delete") for p in range(1, 4)]
    assert run([deletions(tenant="globex")], events) == []
    assert len(run([deletions(tenant="globex"), deletions(rule_id=RULE_C)], events)) == 3


def resumed(rules, events, checkpoints: list[int]) -> list[Alert]:
    """Alerts of runs that stop after each checkpoint position and restart from it, as the process does: restore
    the stored alerts, warm with the events of the longest window before the checkpoint, then feed."""
    stored: list[Alert] = []
    start = 0
    for end in [*checkpoints, len(events)]:
        reactor = Reactor([compile_rule(r) for r in rules])
        if start:
            reactor.restore(stored)
            checkpoint_time = recorded_micros(events[start - 1])
            for e in events[:start]:
                if recorded_micros(e) >= checkpoint_time - reactor.longest_window:
                    reactor.warm(e)
        for e in events[start:end]:
            stored.extend(reactor.feed(e))
        start = end
    return stored


@st.composite
def logs(draw):
    size = draw(st.integers(1, 60))
    events, now = [], 0.0
    for position in range(1, size + 1):
        now += draw(st.sampled_from([0, 1, 30, 200, 700]))
        events.append(
            event(
                position,
                now,
                action=draw(st.sampled_from(["user.login", "user.delete"])),
                actor=draw(st.sampled_from(["u-1", "u-2"])),
                tenant=draw(st.sampled_from(["acme", "acme", "globex"])),
                ok=draw(st.booleans()),
            )
        )
    cuts = sorted(set(draw(st.lists(st.integers(1, size), max_size=5))))
    return events, [c for c in cuts if c < size]


RULES = [failed_logins(count=3, window=600), deletions(), failed_logins(tenant="globex", rule_id=RULE_C, count=2)]


@settings(max_examples=200, deadline=None)
@given(logs())
def test_restarts_at_any_checkpoints_give_the_alerts_of_one_uninterrupted_run(log):
    events, cuts = log
    assert resumed(RULES, events, cuts) == run(RULES, events)


def rule_change_event(position: int, seconds: float, verb: str, rule: pb.AlertRule | None, rule_id: str = RULE_A):
    result = event(position, seconds, action=f"audit.alert_rule.{verb}")
    result.resource.type, result.resource.id = "audit.alert_rule", rule_id
    if rule is not None:
        result.change.after.update(rule_to_json(rule))
    return result


def test_a_rule_change_event_says_the_rule_as_of_its_position_and_nothing_on_delete():
    rule = failed_logins(count=2)
    rule.revision = 4
    change = rule_change_of(rule_change_event(7, 0, "update", rule))
    assert change is not None and (change.tenant, change.rule_id) == ("acme", RULE_A)
    assert change.rule == rule  # numbers back to integers, enums by name
    assert rule_change_of(rule_change_event(8, 0, "delete", None)) == RuleChange("acme", RULE_A, None)
    assert rule_change_of(event(9, 0)) is None
    forged = event(10, 0, action="audit.alert_rule.update")  # not on the rule resource type
    assert rule_change_of(forged) is None


def test_applying_a_change_replaces_the_rule_and_starts_its_windows_afresh():
    reactor = Reactor([compile_rule(failed_logins(count=2)), compile_rule(deletions())])
    assert reactor.feed(event(1, 0)) == []
    changed = failed_logins(count=2)
    changed.revision = 2
    reactor.apply_rule_change("acme", RULE_A, compile_rule(changed))
    assert reactor.feed(event(2, 1)) == []  # the failure before the change no longer counts
    [alert] = reactor.feed(event(3, 2))
    assert (alert.rule_revision, alert.event_positions) == (2, (2, 3))
    reactor.apply_rule_change("acme", RULE_A, None)
    assert reactor.rule_ids == [RULE_B] and reactor.feed(event(4, 3)) == [] and reactor.feed(event(5, 4)) == []


def test_undecided_searches_match_only_where_the_database_confirmed():
    rule = deletions()
    rule.query = "ÉRIC"
    reactor = Reactor([compile_rule(rule)])
    events = [event(1, 0, action="user.delete"), event(2, 1, action="user.delete")]
    events[0].message, events[1].message = "éric", "eric"
    assert reactor.undecided(events) == {RULE_B: [1, 2]}
    assert reactor.feed(events[0]) == []  # undecided and not confirmed: no match
    [alert] = reactor.feed(events[1], confirmed={(RULE_B, 2)})
    assert alert.event_positions == (2,)


def test_restored_alerts_of_an_older_revision_are_ignored():
    reactor = Reactor([compile_rule(failed_logins(count=2))])
    older = Alert("acme", "x", RULE_A, 0, 0, "u-1", 0, 0, "", (1, 2))
    reactor.restore([older])  # revision 0, the rule is at 1: its group is not made quiet
    reactor.feed(event(3, 1))
    assert len(reactor.feed(event(4, 2))) == 1
