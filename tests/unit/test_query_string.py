"""The query string language, without any server."""

from __future__ import annotations

import pytest
from audit.v1 import event_pb2
from audit_service.core.filters import MATCH_ALL, And, AnyOf, Not, OccurredBetween, Or, Search
from audit_service.core.matching import compile_matcher
from audit_service.core.query_string import compile_query, tokenize
from audit_service.errors import InvalidArgumentError


def test_the_issue_example_compiles_to_the_filter_it_reads_as():
    expr = compile_query('action:CREATE_* actor:alice@example.com -resource.type:secret "rotated key"')
    assert expr == And(
        (
            Not(AnyOf("resource_type", ("secret",))),
            Search("rotated key"),
            AnyOf("action", prefixes=("CREATE_",)),
            Or(
                (
                    AnyOf("actor_id", ("alice@example.com",)),
                    AnyOf("actor_slug", ("alice@example.com",)),
                    AnyOf("actor_email", ("alice@example.com",)),
                )
            ),
        )
    )


def test_a_repeated_field_matches_any_of_its_values_and_different_fields_all():
    expr = compile_query("outcome:denied cluster:c1 outcome:FAILURE")
    assert expr == And(
        (
            Or((AnyOf("outcome", (event_pb2.OUTCOME_DENIED,)), AnyOf("outcome", (event_pb2.OUTCOME_FAILURE,)))),
            AnyOf("cluster_id", ("c1",)),
        )
    )


def test_words_phrases_times_and_exclusions():
    expr = compile_query(
        'Deploy -"dry run" after:2026-01-01T00:00:00Z before:2026-01-02T00:00:00+00:00 actor.type:system'
    )
    assert expr == And(
        (
            Search("Deploy"),  # as typed: the database folds case
            Not(Search("dry run")),
            OccurredBetween(1_767_225_600_000_000, None),
            OccurredBetween(None, 1_767_312_000_000_000),
            AnyOf("actor_type", (event_pb2.SUBJECT_TYPE_SYSTEM,)),
        )
    )


JAN_1, JAN_2, JAN_3 = 1_767_225_600_000_000, 1_767_312_000_000_000, 1_767_398_400_000_000
"""2026-01-01, -02 and -03T00:00:00Z in µs."""


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # The same field twice means either, for the time bounds too: the loosest of them.
        ("after:2026-01-02T00:00:00Z after:2026-01-01T00:00:00Z", OccurredBetween(JAN_1, None)),
        ("before:2026-01-02T00:00:00Z before:2026-01-03T00:00:00Z", OccurredBetween(None, JAN_3)),
        # -field:value is not: not after T is before T, not before T is after T.
        ("-after:2026-01-02T00:00:00Z", OccurredBetween(None, JAN_2)),
        ("-before:2026-01-02T00:00:00Z", OccurredBetween(JAN_2, None)),
        # Each negated term excludes (all must hold), as for any field.
        (
            "-after:2026-01-03T00:00:00Z -after:2026-01-02T00:00:00Z",
            And((OccurredBetween(None, JAN_3), OccurredBetween(None, JAN_2))),
        ),
        # Different fields, and a field with its negation, must all hold: a window.
        (
            "after:2026-01-01T00:00:00Z -after:2026-01-03T00:00:00Z",
            And((OccurredBetween(None, JAN_3), OccurredBetween(JAN_1, None))),
        ),
        (
            "after:2026-01-01T00:00:00Z before:2026-01-02T00:00:00Z after:2026-01-03T00:00:00Z",
            And((OccurredBetween(JAN_1, None), OccurredBetween(None, JAN_2))),
        ),
    ],
)
def test_time_bounds_follow_the_rules_of_every_field(query, expected):
    assert compile_query(query) == expected


@pytest.mark.parametrize(
    ("query", "matching_days"),
    [
        ("after:2026-01-03T00:00:00Z after:2026-01-02T00:00:00Z", [2, 3, 4]),
        ("before:2026-01-02T00:00:00Z before:2026-01-03T00:00:00Z", [0, 1, 2]),
        ("-after:2026-01-02T00:00:00Z", [0, 1]),
        ("-before:2026-01-02T00:00:00Z", [2, 3, 4]),
        ("after:2026-01-01T00:00:00Z -after:2026-01-03T00:00:00Z", [1, 2]),
        ("-after:2026-01-03T00:00:00Z -before:2026-01-02T00:00:00Z", [2]),
    ],
)
def test_a_time_query_selects_what_it_reads_as(query, matching_days):
    matcher = compile_matcher(compile_query(query))
    # One event on each of 2025-12-31 (day 0) to 2026-01-04 (day 4), at midnight.
    days = [day for day in range(5) if matcher({"occurred_at": JAN_1 + (day - 1) * 86_400_000_000})]
    assert days == matching_days


def test_quoted_values_and_escapes():
    terms = tokenize(r'resource.name:"my \"prod\" db"   msg')
    assert [(t.position, t.field, t.value) for t in terms] == [(1, "resource.name", 'my "prod" db'), (34, "", "msg")]


def test_an_empty_query_matches_everything():
    assert compile_query("   ") == MATCH_ALL


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("colour:red", "unknown field 'colour' at character 1"),
        ("action:a  oops:x", "unknown field 'oops' at character 11"),
        ('action:"unterminated', "unterminated quote at character 8"),
        ("action:", '"action:" has no value at character 1'),
        ("- action:x", 'a lone "-" at character 1'),
        (":x", 'a term cannot start with ":" at character 1'),
        ("outcome:maybe", "unknown value 'maybe' at character 1 (one of SUCCESS, FAILURE, DENIED)"),
        ("after:yesterday", "is not an RFC 3339 time"),
        ("after:2026-01-01T00:00:00", "has no time zone"),
        ("action:*", "an action prefix needs text before a single trailing * at character 1"),
        ("action:a*b", "* is only allowed at the end of an action"),
        ('ab"cd"', "a quote inside a word"),
        ('"a"b', "expected a space after a term at character 4"),
        ("x" * 2001, "longer than 2000 characters"),
    ],
)
def test_errors_name_the_query_and_point_at_the_bad_term(query, message):
    with pytest.raises(InvalidArgumentError) as error:
        compile_query(query)
    assert error.value.field == "filter.query"
    assert message in str(error.value)
