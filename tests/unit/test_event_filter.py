"""Compiling EventFilter messages and scopes into filter expressions, and those into SQL; pure."""

from __future__ import annotations

import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_service.core.counts import (
    HOUR_MICROS,
    action_projection_can_answer,
    count_action_rows,
    histogram,
    hourly_counts,
    needs_actions,
    projection_can_answer,
)
from audit_service.core.event_filter import UNRESTRICTED, Scope, compile_filter
from audit_service.core.filters import And, AnyOf, Not, OccurredBetween, Or, Search
from audit_service.errors import InvalidArgumentError
from audit_service.store.filter_sql import FilterSql, Parameters

from ..factories import content_of, make_event, stamp


def test_fields_are_anded_and_repeated_values_ored():
    f = pb.EventFilter(actions=["api_key.*", "Login"], actor_ids=["u1", "u2"], outcomes=[event_pb2.OUTCOME_DENIED])
    assert compile_filter(f, Scope("acme")) == And(
        (
            AnyOf("tenant", ("acme",)),
            Or((AnyOf("action", prefixes=("api_key.",)), AnyOf("action", ("Login",)))),
            AnyOf("actor_id", ("u1", "u2")),
            AnyOf("outcome", (event_pb2.OUTCOME_DENIED,)),
        )
    )


def test_a_non_admin_scope_is_anded_with_whatever_the_filter_asks():
    f = pb.EventFilter(actor_ids=["someone-else"])
    expr = compile_filter(f, Scope("acme", actor_id="u-me"))
    assert expr == And((AnyOf("tenant", ("acme",)), AnyOf("actor_id", ("u-me",)), AnyOf("actor_id", ("someone-else",))))


def test_conditions_join_with_any_and_negate_with_not():
    f = pb.EventFilter(
        conditions=[
            pb.Condition(
                field=pb.CONDITION_FIELD_RESOURCE_TYPE, operator=pb.CONDITION_OPERATOR_NOT_EQUAL, values=["secret"]
            ),
            pb.Condition(
                field=pb.CONDITION_FIELD_ACTOR_TYPE, operator=pb.CONDITION_OPERATOR_IN, values=["system", "USER"]
            ),
        ],
        condition_join=pb.CONDITION_JOIN_ANY,
        search="Rotated  KEY",
    )
    assert compile_filter(f, UNRESTRICTED) == And(
        (
            Search("Rotated"),  # as typed: the database folds case, on both sides alike
            Search("KEY"),
            Or(
                (
                    Not(AnyOf("resource_type", ("secret",))),
                    AnyOf("actor_type", (event_pb2.SUBJECT_TYPE_SYSTEM, event_pb2.SUBJECT_TYPE_USER)),
                )
            ),
        )
    )


@pytest.mark.parametrize(
    ("f", "field"),
    [
        (pb.EventFilter(tenant="Bad Tenant"), "filter.tenant"),
        (pb.EventFilter(actor_slugs=["ok", ""]), "filter.actor_slugs[1]"),
        (pb.EventFilter(actions=["a"] * 101), "filter.actions"),
        (pb.EventFilter(resource_id="x" * 1025), "filter.resource_id"),
        (pb.EventFilter(search="   "), "filter.search"),
        (pb.EventFilter(search="a\x07b"), "filter.search"),
        (pb.EventFilter(condition_join=7), "filter.condition_join"),
        (
            pb.EventFilter(conditions=[pb.Condition(field=1, operator=1, values=["a", "b"])]),
            "filter.conditions[0].values",
        ),
        (pb.EventFilter(conditions=[pb.Condition(field=99, operator=1, values=["a"])]), "filter.conditions[0].field"),
        (pb.EventFilter(conditions=[pb.Condition(field=1, operator=3)]), "filter.conditions[0].values"),
    ],
)
def test_malformed_fields_are_named(f, field):
    with pytest.raises(InvalidArgumentError) as error:
        compile_filter(f, UNRESTRICTED)
    assert error.value.field == field


def test_the_time_range_must_not_be_empty():
    f = pb.EventFilter()
    f.start_time.seconds = 100
    f.end_time.seconds = 100
    with pytest.raises(InvalidArgumentError, match=r"filter\.end_time: must be after filter\.start_time"):
        compile_filter(f, UNRESTRICTED)


def test_sql_is_null_safe_under_not_and_escapes_like_patterns():
    params = Parameters()
    sql = FilterSql(params, "e").condition(
        And((Not(AnyOf("resource_type", ("secret", ""))), AnyOf("action", prefixes=("api_%key.",)), Search("50%_off")))
    )
    assert "NOT coalesce((e.resource_type = $1::text OR e.resource_type IS NULL), false)" in sql
    assert params.values[1] == "api\\_\\%key.%" and params.values[2] == "%50\\%\\_off%"


def test_projection_answers_only_what_it_can_answer_exactly():
    tenant_and_action = And((AnyOf("tenant", ("acme",)), AnyOf("action", prefixes=("api_key.",))))
    assert projection_can_answer(tenant_and_action, "action", HOUR_MICROS * 24)
    assert projection_can_answer(And((tenant_and_action, OccurredBetween(HOUR_MICROS * 5, None))), None, None)
    assert not projection_can_answer(And((tenant_and_action, OccurredBetween(HOUR_MICROS * 5 + 1, None))), None, None)
    assert not projection_can_answer(tenant_and_action, "actor", None)
    assert not projection_can_answer(tenant_and_action, None, HOUR_MICROS // 2)
    assert not projection_can_answer(And((tenant_and_action, AnyOf("actor_id", ("u",)))), None, None)
    assert not projection_can_answer(Search("x"), None, None)


def test_hourly_counts_of_a_batch():
    hour = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
    events = [stamp(make_event("acme")) for _ in range(3)] + [stamp(make_event("globex"))]
    for event in events:
        event.occurred_at.FromMicroseconds(hour + HOUR_MICROS * 10 + 5)
    events[2].ClearField("resource")
    counts = hourly_counts(content_of(event) for event in events)
    user, success = event_pb2.SUBJECT_TYPE_USER, event_pb2.OUTCOME_SUCCESS
    assert counts == {
        ("acme", hour + HOUR_MICROS * 10, "api_key.create", "api_key", success, user): 2,
        ("acme", hour + HOUR_MICROS * 10, "api_key.create", None, success, user): 1,
        ("globex", hour + HOUR_MICROS * 10, "api_key.create", "api_key", success, user): 1,
    }


def test_histograms_include_empty_buckets_and_a_short_last_one():
    buckets = histogram([(0, ["a"], [2]), (2, ["a", "b"], [1, 1])], start=0, end=25, interval=10, grouped=True)
    assert [(b.start, b.count, b.groups) for b in buckets] == [
        (0, 2, (("a", 2),)),
        (10, 0, ()),
        (20, 2, (("a", 1), ("b", 1))),
    ]


def test_the_per_action_projection_answers_a_tenant_over_whole_hours_by_action_or_in_total():
    tenant = AnyOf("tenant", ("acme",))
    by_action = And((tenant, Not(AnyOf("action", prefixes=("api_key.",))), OccurredBetween(HOUR_MICROS, None)))
    assert action_projection_can_answer(by_action, "action", HOUR_MICROS * 6)
    assert action_projection_can_answer(by_action, None, None)
    assert not action_projection_can_answer(by_action, "outcome", None)  # not in this projection
    assert not action_projection_can_answer(AnyOf("action", ("a",)), None, None)  # no tenant: all tenants' rows
    assert not action_projection_can_answer(AnyOf("tenant", prefixes=("ac",)), None, None)
    assert action_projection_can_answer(And((AnyOf("tenant", prefixes=("ac",)), tenant)), None, None)
    assert not action_projection_can_answer(And((tenant, AnyOf("outcome", (1,)))), None, None)
    assert not action_projection_can_answer(And((tenant, OccurredBetween(HOUR_MICROS + 1, None))), None, None)
    # A time bound under OR is not a bound on whole rows.
    within_or = And((tenant, Or((AnyOf("action", ("a",)), OccurredBetween(HOUR_MICROS, None)))))
    assert not action_projection_can_answer(within_or, None, None)


def test_counting_per_action_rows_filters_actions_merges_hours_into_buckets_and_ranks_groups():
    h = HOUR_MICROS
    rows = [  # (tenant, hour, events, actions, counts): actions ranked, as stored
        ("acme", 0, 5, ["b", "a", "c"], [3, 1, 1]),
        ("acme", h, 4, ["a", "c"], [2, 2]),
        ("acme", 3 * h, 1, ["b"], [1]),
        ("acme", 9 * h, 7, ["a"], [7]),  # beyond the end
    ]
    expr = And((AnyOf("tenant", ("acme",)), Not(AnyOf("action", ("c",))), OccurredBetween(0, 4 * h)))
    total, buckets, groups = count_action_rows(rows, expr, histogram_range=(0, 4 * h, 2 * h), grouped=True)
    assert total == 7
    assert groups == (("b", 4), ("a", 3))
    assert [(b.start, b.count, b.groups) for b in buckets] == [(0, 6, (("a", 3), ("b", 3))), (2 * h, 1, (("b", 1),))]

    totals_only = [(tenant, hour, events, None, None) for tenant, hour, events, _, _ in rows]
    every_action = And((AnyOf("tenant", ("acme",)), OccurredBetween(0, 4 * h)))
    assert count_action_rows(totals_only, every_action, histogram_range=None, grouped=False) == (10, [], ())
    assert not needs_actions(every_action, grouped=False) and needs_actions(expr, grouped=False)
