"""Alert rules without I/O: templates, group_by paths, validation naming fields, update masks, the JSON form."""

from __future__ import annotations

import pytest
from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import audit_service_pb2, event_pb2
from audit_service.core.alert_rule_templates import TEMPLATES, rule_from_template
from audit_service.core.alert_rules import (
    GROUP_BY_FIELDS,
    Placeholder,
    apply_update,
    compile_rule,
    event_value,
    group_by_path,
    parse_template,
    render_template,
    rule_filter,
    rule_from_json,
    rule_to_json,
    validate_rule,
)
from audit_service.core.matching import event_columns
from audit_service.core.reserved import reserved_field
from audit_service.errors import InvalidArgumentError
from google.protobuf import duration_pb2
from hypothesis import given
from hypothesis import strategies as st


def rule(**fields) -> pb.AlertRule:
    base = pb.AlertRule(
        display_name="Mass deletions",
        query="action:user.delete",
        threshold=pb.AlertThreshold(count=20, window=duration_pb2.Duration(seconds=300), group_by="actor.id"),
        severity=pb.ALERT_SEVERITY_HIGH,
        message_template="{actor.id} deleted {count} {resource.type}s",
    )
    base.MergeFrom(pb.AlertRule(**fields))
    return base


def refused_field(call, *args) -> str:
    with pytest.raises(InvalidArgumentError) as error:
        call(*args)
    return error.value.field


def test_a_template_is_parsed_into_text_and_placeholders_and_rendered():
    parts = parse_template("{actor.id} deleted {count} {resource.type}s in {{braces}} ({metadata.geo.country})")
    assert parts == (
        Placeholder("actor.id"),
        " deleted ",
        Placeholder("count"),
        " ",
        Placeholder("resource.type"),
        "s in {braces} (",
        Placeholder("metadata.geo.country"),
        ")",
    )
    values = {"actor.id": "u-7", "count": 25, "resource.type": "user", "metadata.geo.country": None}
    assert render_template(parts, values.get) == "u-7 deleted 25 users in {braces} ()"


@pytest.mark.parametrize(
    ("template", "detail"),
    [
        ("{actor.nope}", "unknown field 'actor.nope'"),
        ("{password}", "unknown field 'password'"),
        ("hello {actor.id", "unclosed '{' at character 7"),
        ("a } b", "unmatched '}' at character 3"),
        ("{}", "empty placeholder at character 1"),
        ("{metadata}", "metadata needs a key"),
        ("{metadata.a b}", "metadata key 'a b'"),
        ("x" * 2049, "longer than 2048 bytes"),
        ("é" * 1025, "longer than 2048 bytes"),
    ],
)
def test_a_bad_template_is_refused_naming_the_field_and_the_problem(template, detail):
    with pytest.raises(InvalidArgumentError) as error:
        parse_template(template)
    assert error.value.field == "alert_rule.message_template"
    assert detail in str(error.value)


# Templates arrive in protobuf strings, valid UTF-8: no lone surrogates (category Cs).
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="{}\x00"), max_size=200))
def test_text_without_braces_renders_as_itself(text):
    assert render_template(parse_template(text), lambda _: "x") == text


def test_group_by_accepts_event_fields_and_metadata_paths_only():
    assert group_by_path("") == ()
    for path in GROUP_BY_FIELDS:
        assert group_by_path(path) == tuple(path.split("."))
    assert group_by_path("metadata.geo.country_code") == ("metadata", "geo", "country_code")
    for bad in ("actor", "actor.password", "metadata", "metadata..x", "metadata.a/b", "metadata." + ".".join("k" * 9)):
        assert refused_field(group_by_path, bad) == "alert_rule.threshold.group_by", bad


def test_a_valid_rule_passes_and_its_json_form_round_trips():
    valid = rule(id="0190c0de-0000-7000-8000-000000000001", tenant="acme", revision=3, destinations=["siem"])
    validate_rule(valid)
    assert rule_from_json(rule_to_json(valid)) == valid
    # As a protobuf Struct holds it (numbers as doubles), it still comes back the same.
    struct_like = rule_to_json(valid) | {"threshold": {"count": 20.0, "window": "300s", "group_by": "actor.id"}}
    assert rule_from_json(struct_like) == valid
    assert rule_filter(valid) == audit_service_pb2.EventFilter(query="action:user.delete")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"display_name": " "}, "alert_rule.display_name"),
        ({"display_name": "a\nb"}, "alert_rule.display_name"),
        ({"query": "actor.shoe:9"}, "alert_rule.query"),
        ({"filter": audit_service_pb2.EventFilter(outcomes=[99])}, "alert_rule.filter.outcomes[0]"),
        ({"filter": audit_service_pb2.EventFilter(query="nope:1")}, "alert_rule.filter.query"),
        ({"threshold": pb.AlertThreshold(count=-1)}, "alert_rule.threshold.count"),
        (
            {"threshold": pb.AlertThreshold(count=1, window=duration_pb2.Duration(nanos=5))},
            "alert_rule.threshold.window",
        ),
        ({"severity": 9}, "alert_rule.severity"),
        ({"destinations": ["ok", "ok"]}, "alert_rule.destinations"),
        ({"destinations": [f"d{i}" for i in range(21)]}, "alert_rule.destinations"),
        ({"destinations": ["-dash"]}, "alert_rule.destinations[0]"),
    ],
)
def test_each_invalid_field_is_named(change, field):
    bad = rule()
    for name, value in change.items():
        if name in ("filter", "threshold"):
            getattr(bad, name).CopyFrom(value)
        elif name == "destinations":
            bad.destinations.extend(value)
        else:
            setattr(bad, name, value)
    assert refused_field(validate_rule, bad) == field


def test_a_rule_too_large_for_its_change_event_is_refused():
    huge = rule(filter=audit_service_pb2.EventFilter(actor_ids=[f"{i:04d}" + "x" * 1000 for i in range(70)]))
    assert refused_field(validate_rule, huge) == "alert_rule"


def test_a_rule_without_filter_or_query_is_refused():
    bad = rule()
    bad.ClearField("selector")
    assert refused_field(validate_rule, bad) == "alert_rule.filter"


def test_an_update_mask_changes_only_what_it_names():
    current = rule(destinations=["a", "b"], enabled=True)
    change = pb.AlertRule(display_name="New", destinations=["c"], filter=audit_service_pb2.EventFilter(actions=["x.y"]))
    updated = apply_update(current, change, ["display_name", "destinations"])
    assert (updated.display_name, list(updated.destinations), updated.query) == ("New", ["c"], current.query)
    assert updated.enabled and updated.threshold == current.threshold
    # Naming filter replaces the query; naming threshold with none set removes it.
    updated = apply_update(current, change, ["filter", "threshold"])
    assert updated.WhichOneof("selector") == "filter" and list(updated.filter.actions) == ["x.y"]
    assert not updated.HasField("threshold")
    # An empty mask replaces every updatable field.
    updated = apply_update(current, change, [])
    assert updated.display_name == "New" and not updated.enabled and updated.severity == pb.ALERT_SEVERITY_UNSPECIFIED
    assert refused_field(apply_update, current, change, ["revision"]) == "update_mask"


def test_rule_change_names_are_reserved_for_the_service():
    assert reserved_field("audit.alert_rule", "x.create") == "resource.type"
    assert reserved_field("AUDIT.ALERT_RULE", "x.create") == "resource.type"
    assert reserved_field("api_key", "audit.alert_rule.delete") == "action"
    assert reserved_field("api_key", "audit.retention.purge") is None


def test_the_four_templates_are_valid_rules_and_take_overrides():
    assert set(TEMPLATES) == {"multiple_failed_logins", "mass_deletions", "permission_escalations", "new_api_tokens"}
    for name, template in TEMPLATES.items():
        validate_rule(rule_from_template(name, pb.AlertRule(), []))
        assert template.description
    tuned = rule_from_template(
        "multiple_failed_logins",
        pb.AlertRule(threshold=pb.AlertThreshold(count=3, window={"seconds": 60}), destinations=["siem"]),
        ["threshold", "destinations"],
    )
    assert (tuned.threshold.count, tuned.threshold.window.seconds, tuned.threshold.group_by) == (3, 60, "")
    assert list(tuned.destinations) == ["siem"] and tuned.query == TEMPLATES["multiple_failed_logins"].rule.query
    assert not TEMPLATES["multiple_failed_logins"].rule.destinations  # the template itself is untouched
    assert refused_field(rule_from_template, "nope", pb.AlertRule(), []) == "template"
    assert refused_field(rule_from_template, "mass_deletions", pb.AlertRule(), ["id"]) == "override_mask"


def login(tenant: str = "acme", outcome: int = event_pb2.OUTCOME_FAILURE, **metadata) -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        tenant=tenant,
        action="user.login",
        outcome=outcome,
        actor=event_pb2.Subject(id="u-7", type=event_pb2.SUBJECT_TYPE_USER),
        resource=event_pb2.Resource(type="session", id="s-1"),
        request=event_pb2.RequestContext(ip_address="10.0.0.9"),
        message="login failed",
    )
    event.occurred_at.FromJsonString("2026-12-06T10:00:00Z")
    if metadata:
        event.metadata.update(metadata)
    return event


def test_a_compiled_rule_matches_its_tenants_events_groups_them_and_renders_its_message():
    failed = rule(
        id="0190c0de-0000-7000-8000-000000000001",
        tenant="acme",
        query="action:user.login outcome:failure",
        message_template="{actor.id} from {request.ip_address}: {count} x {outcome} ({group}, {window}, {severity})",
    )
    compiled = compile_rule(failed)
    assert compiled.matcher(event_columns(login())) is True
    assert compiled.matcher(event_columns(login(outcome=event_pb2.OUTCOME_SUCCESS))) is False
    assert compiled.matcher(event_columns(login(tenant="globex"))) is False  # never another tenant's events
    assert compiled.group_key(login()) == "u-7"
    assert compiled.message(login(), count=5, group="u-7") == "u-7 from 10.0.0.9: 5 x OUTCOME_FAILURE (u-7, 300s, HIGH)"


def test_event_values_at_field_paths():
    event = login(geo={"country": "FR", "asn": 3215}, tags=["a"])
    assert event_value(event, "actor.type") == "SUBJECT_TYPE_USER"
    assert event_value(event, "request.ip_address") == "10.0.0.9"
    assert event_value(event, "metadata.geo.country") == "FR"
    assert event_value(event, "metadata.geo.asn") == "3215"
    assert event_value(event, "metadata.geo") == '{"asn":3215,"country":"FR"}'
    assert event_value(event, "metadata.tags") == '["a"]'
    assert event_value(event, "metadata.geo.city") is None and event_value(event, "metadata.nope.x") is None
    assert event_value(event, "cluster_id") is None
    assert event_value(event, "occurred_at") == "2026-12-06T10:00:00Z"
    for path in GROUP_BY_FIELDS:
        event_value(event, path)  # every path a rule may name resolves on an event
