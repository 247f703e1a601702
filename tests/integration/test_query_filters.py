"""Every filter against a plain Python evaluation of the same filter over the same data (property-based), on a
real PostgreSQL behind a real gRPC server. Also checks CountEvents totals, histograms and groups against it."""

from __future__ import annotations

import collections
import datetime as dt
import random
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_service.core.counts import HOUR_MICROS, CountSource
from audit_service.core.event_filter import UNRESTRICTED, compile_filter
from audit_service.core.matching import compile_matcher, event_columns
from audit_service.store.append import LogAppender
from audit_service.store.migrate import migrate
from audit_service.store.queries import CountQuery, count_source
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import bearer, store_events
from ..factories import content_of, make_event, stamp

TENANTS = ("t-one", "t-two")
ACTIONS = ("api_key.create", "api_key.delete", "secret.read", "Login", "deploy.create")
ACTORS = (  # (id, slug, email, display name, type)
    ("u-1", "alice", "alice@example.com", "Alice Ånström", event_pb2.SUBJECT_TYPE_USER),
    ("u-2", "bob", "bob@example.com", "Bob", event_pb2.SUBJECT_TYPE_USER),
    ("", "autopilot", "", "Autopilot", event_pb2.SUBJECT_TYPE_SYSTEM),
    ("sa-9", "", "", "", event_pb2.SUBJECT_TYPE_SERVICE_ACCOUNT),
)
RESOURCES = (  # (type, id, name, fqn)
    ("secret", "s-1", "db-password", "prod/ws-a/db-password"),
    ("api_key", "k-1", "CI Key", "prod/ws-a/ci-key"),
    ("api_key", "k-2", "deploy_key%", "stage/ws-b/deploy-key"),
    ("", "", "", ""),
)
PARENTS = (("workspace", "ws-a"), ("cluster", "c-1"), ("", ""))  # (type, id)
ROUTES = ("/api/v1/keys", "/api/v1/secrets/{id}", "")
IPS = ("10.0.0.1", "2001:db8::7", "")
CLUSTERS = ("c-1", "c-2", "")
WORKSPACES = ("ws-a", "")
TRACES = ("", "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")
OUTCOMES = (event_pb2.OUTCOME_SUCCESS, event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED)
MESSAGE_WORDS = ("Rotated", "key", "ÉLAN", "password", "reset", "100%", "under_score", "deployed", "Login", "ΟΔΟΣ")
SEARCH_WORDS = (
    *("rotated", "KEY", "élan", "pass", "100%", "under_", "alice", "ci key", "ws-a", "nothing", "o"),
    *("οδος", "ΟΔΟΣ", "Οδοσ"),  # a final sigma, typed lower or upper case, finds the word stored in capitals
)
BASE = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=4)
WINDOW_HOURS = 72


def build_events(count: int, seed: int) -> list[event_pb2.AuditEvent]:
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        actor_id, slug, email, display, actor_type = rng.choice(ACTORS)
        kind, resource_id, name, fqn = rng.choice(RESOURCES)
        event = event_pb2.AuditEvent(
            tenant=rng.choice(TENANTS),
            action=rng.choice(ACTIONS),
            outcome=rng.choice(OUTCOMES),
            actor=event_pb2.Subject(id=actor_id, slug=slug, email=email, display_name=display, type=actor_type),
            resource=event_pb2.Resource(type=kind, id=resource_id, name=name, fqn=fqn),
            cluster_id=rng.choice(CLUSTERS),
            workspace_id=rng.choice(WORKSPACES),
            message=" ".join(rng.sample(MESSAGE_WORDS, rng.randint(0, 4))),
            request=event_pb2.RequestContext(
                method=rng.choice(("GET", "POST", "")), route=rng.choice(ROUTES), ip_address=rng.choice(IPS)
            ),
        )
        parent_type, parent_id = rng.choice(PARENTS)
        if parent_id:
            event.parent_resource.type, event.parent_resource.id = parent_type, parent_id
        trace = rng.choice(TRACES)
        if trace:
            event.trace_id, event.span_id = trace, "00f067aa0ba902b7"
        micros = rng.randrange(WINDOW_HOURS * 3600 * 1_000_000)
        event.occurred_at.FromDatetime(BASE + dt.timedelta(microseconds=micros))
        events.append(stamp(event))
    return events


@dataclass
class Dataset:
    events: list[event_pb2.AuditEvent]
    positions: dict[str, int]


@pytest.fixture
async def dataset(database) -> Dataset:
    events = build_events(240, seed=7)
    conn = await asyncpg.connect(database.app_url)
    try:
        appender = LogAppender()
        for start in range(0, len(events), 60):
            await appender.append(conn, [content_of(event) for event in events[start : start + 60]])
        positions = {
            row["id"]: row["position"]
            for row in await conn.fetch("SELECT event_id::text AS id, position FROM audit_events")
        }
    finally:
        await conn.close()
    assert len(positions) == len(events)
    return Dataset(events, positions)


# --- the oracle: the filter's meaning, written directly over the protobuf events ---------------------------


def micros(timestamp) -> int:
    return timestamp.seconds * 1_000_000 + timestamp.nanos // 1000


def rfc3339_micros(text: str) -> int:
    return (dt.datetime.fromisoformat(text) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def searched_texts(event) -> list[str]:
    return [
        event.message,
        event.action,
        event.resource.name,
        event.resource.fqn,
        event.actor.slug,
        event.actor.email,
        event.actor.display_name,
    ]


def contains(event, term: str) -> bool:
    # Case folding (for the words used here, Python's full folding and PostgreSQL's simple folding agree).
    return any(term.casefold() in text.casefold() for text in searched_texts(event))


CONDITION_VALUE = {
    pb.CONDITION_FIELD_ACTION: lambda e: e.action,
    pb.CONDITION_FIELD_ACTOR_ID: lambda e: e.actor.id,
    pb.CONDITION_FIELD_ACTOR_SLUG: lambda e: e.actor.slug,
    pb.CONDITION_FIELD_ACTOR_EMAIL: lambda e: e.actor.email,
    pb.CONDITION_FIELD_RESOURCE_TYPE: lambda e: e.resource.type,
    pb.CONDITION_FIELD_RESOURCE_ID: lambda e: e.resource.id,
    pb.CONDITION_FIELD_RESOURCE_NAME: lambda e: e.resource.name,
    pb.CONDITION_FIELD_RESOURCE_FQN: lambda e: e.resource.fqn,
    pb.CONDITION_FIELD_PARENT_RESOURCE_TYPE: lambda e: e.parent_resource.type,
    pb.CONDITION_FIELD_PARENT_RESOURCE_ID: lambda e: e.parent_resource.id,
    pb.CONDITION_FIELD_REQUEST_ROUTE: lambda e: e.request.route,
    pb.CONDITION_FIELD_IP_ADDRESS: lambda e: e.request.ip_address,
    pb.CONDITION_FIELD_CLUSTER_ID: lambda e: e.cluster_id,
    pb.CONDITION_FIELD_WORKSPACE_ID: lambda e: e.workspace_id,
    pb.CONDITION_FIELD_TRACE_ID: lambda e: e.trace_id,
    pb.CONDITION_FIELD_REQUEST_METHOD: lambda e: e.request.method,
    pb.CONDITION_FIELD_OUTCOME: lambda e: event_pb2.Outcome.Name(e.outcome),
    pb.CONDITION_FIELD_ACTOR_TYPE: lambda e: event_pb2.SubjectType.Name(e.actor.type),
}
ENUM_PREFIX = {pb.CONDITION_FIELD_OUTCOME: "OUTCOME_", pb.CONDITION_FIELD_ACTOR_TYPE: "SUBJECT_TYPE_"}


def condition_holds(condition: pb.Condition, event) -> bool:
    value = CONDITION_VALUE[condition.field](event)
    prefix = ENUM_PREFIX.get(condition.field)
    wanted = {
        (v if v.startswith(prefix) else prefix + v) if prefix else v
        for v in (v.upper() if prefix else v for v in condition.values)
    }
    inside = value in wanted
    if condition.operator in (pb.CONDITION_OPERATOR_EQUAL, pb.CONDITION_OPERATOR_IN):
        return inside
    return not inside


QUERY_FIELDS = {
    "action": lambda e, v: e.action.startswith(v[:-1]) if v.endswith("*") else e.action == v,
    "actor": lambda e, v: v in (e.actor.id, e.actor.slug, e.actor.email) and v != "",
    "actor.id": lambda e, v: e.actor.id == v,
    "actor.slug": lambda e, v: e.actor.slug == v,
    "actor.email": lambda e, v: e.actor.email == v,
    "resource.id": lambda e, v: e.resource.id == v,
    "resource.name": lambda e, v: e.resource.name == v,
    "resource.fqn": lambda e, v: e.resource.fqn == v,
    "trace": lambda e, v: e.trace_id == v,
    "after": lambda e, v: micros(e.occurred_at) >= rfc3339_micros(v),
    "before": lambda e, v: micros(e.occurred_at) < rfc3339_micros(v),
    "actor.type": lambda e, v: event_pb2.SubjectType.Name(e.actor.type) == "SUBJECT_TYPE_" + v.upper(),
    "resource.type": lambda e, v: e.resource.type == v,
    "outcome": lambda e, v: event_pb2.Outcome.Name(e.outcome) == "OUTCOME_" + v.upper(),
    "cluster": lambda e, v: e.cluster_id == v,
    "workspace": lambda e, v: e.workspace_id == v,
}


@dataclass(frozen=True)
class QueryTerm:
    negated: bool
    field: str  # "" for a search term
    value: str

    def text(self) -> str:
        value = f'"{self.value}"' if " " in self.value else self.value
        return ("-" if self.negated else "") + (f"{self.field}:{value}" if self.field else value)


def query_holds(terms: list[QueryTerm], event) -> bool:
    """Every term holds, where a field given several times holds when one of its values does (the time bounds
    after and before included), and a negated term when its value does not."""
    by_field: dict[str, list[str]] = collections.defaultdict(list)
    for term in terms:
        matched = QUERY_FIELDS[term.field](event, term.value) if term.field else contains(event, term.value)
        if term.negated:
            if matched:
                return False
        elif term.field:
            by_field[term.field].append(term.value)
        elif not matched:
            return False
    return all(any(QUERY_FIELDS[field](event, value) for value in values) for field, values in by_field.items())


def matches(f: pb.EventFilter, terms: list[QueryTerm], event) -> bool:
    checks = [
        not f.tenant or event.tenant == f.tenant,
        not f.actions
        or any(event.action.startswith(a[:-1]) if a.endswith("*") else event.action == a for a in f.actions),
        all(contains(event, word) for word in f.search.split()),
        not f.resource_type or event.resource.type == f.resource_type,
        not f.resource_id or event.resource.id == f.resource_id,
        not f.resource_name or event.resource.name == f.resource_name,
        not f.resource_fqn or event.resource.fqn == f.resource_fqn,
        not f.cluster_id or event.cluster_id == f.cluster_id,
        not f.workspace_id or event.workspace_id == f.workspace_id,
        not f.actor_slugs or event.actor.slug in f.actor_slugs,
        not f.actor_ids or event.actor.id in f.actor_ids,
        not f.actor_types or event.actor.type in f.actor_types,
        not f.outcomes or event.outcome in f.outcomes,
        not f.HasField("start_time") or micros(event.occurred_at) >= micros(f.start_time),
        not f.HasField("end_time") or micros(event.occurred_at) < micros(f.end_time),
        not f.trace_id or event.trace_id == f.trace_id,
        query_holds(terms, event),
    ]
    if f.conditions:
        results = [condition_holds(c, event) for c in f.conditions]
        checks.append(any(results) if f.condition_join == pb.CONDITION_JOIN_ANY else all(results))
    return all(checks)


# --- random filters -------------------------------------------------------------------------------------------

_hour = st.integers(0, WINDOW_HOURS)


@st.composite
def time_bounds(draw):
    def moment(hours: int):
        offset = dt.timedelta(hours=hours, minutes=draw(st.sampled_from((0, 0, 17))))
        return BASE + offset

    start = draw(st.none() | _hour.map(moment))
    end = draw(st.none() | _hour.map(moment))
    if start is not None and end is not None and end <= start:
        start, end = end - dt.timedelta(hours=1), start + dt.timedelta(hours=1)
    return start, end


@st.composite
def conditions(draw):
    field = draw(st.sampled_from(sorted(CONDITION_VALUE)))
    operator = draw(
        st.sampled_from(
            (
                pb.CONDITION_OPERATOR_EQUAL,
                pb.CONDITION_OPERATOR_NOT_EQUAL,
                pb.CONDITION_OPERATOR_IN,
                pb.CONDITION_OPERATOR_NOT_IN,
            )
        )
    )
    pool = {
        pb.CONDITION_FIELD_ACTION: ACTIONS,
        pb.CONDITION_FIELD_ACTOR_ID: ("u-1", "u-2", "sa-9", ""),
        pb.CONDITION_FIELD_ACTOR_SLUG: ("alice", "autopilot", ""),
        pb.CONDITION_FIELD_ACTOR_EMAIL: ("bob@example.com", ""),
        pb.CONDITION_FIELD_RESOURCE_TYPE: ("secret", "api_key", ""),
        pb.CONDITION_FIELD_RESOURCE_ID: ("s-1", "k-2", ""),
        pb.CONDITION_FIELD_RESOURCE_NAME: ("CI Key", "deploy_key%", ""),
        pb.CONDITION_FIELD_RESOURCE_FQN: ("prod/ws-a/db-password", ""),
        pb.CONDITION_FIELD_PARENT_RESOURCE_TYPE: ("workspace", "cluster", ""),
        pb.CONDITION_FIELD_PARENT_RESOURCE_ID: ("ws-a", ""),
        pb.CONDITION_FIELD_REQUEST_ROUTE: ROUTES,
        pb.CONDITION_FIELD_IP_ADDRESS: IPS,
        pb.CONDITION_FIELD_CLUSTER_ID: CLUSTERS,
        pb.CONDITION_FIELD_WORKSPACE_ID: WORKSPACES,
        pb.CONDITION_FIELD_TRACE_ID: TRACES,
        pb.CONDITION_FIELD_REQUEST_METHOD: ("GET", "POST", ""),
        pb.CONDITION_FIELD_OUTCOME: ("SUCCESS", "OUTCOME_DENIED", "failure"),
        pb.CONDITION_FIELD_ACTOR_TYPE: ("SYSTEM", "SUBJECT_TYPE_USER"),
    }[field]
    single = operator in (pb.CONDITION_OPERATOR_EQUAL, pb.CONDITION_OPERATOR_NOT_EQUAL)
    values = [draw(st.sampled_from(pool))] if single else draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    return pb.Condition(field=field, operator=operator, values=values)


@st.composite
def query_terms(draw):
    terms = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("search", *QUERY_FIELDS)))
        negated = draw(st.booleans())
        value = {
            "search": st.sampled_from(SEARCH_WORDS),
            "action": st.sampled_from((*ACTIONS, "api_key.*", "deploy.*", "Log*")),
            "actor": st.sampled_from(("u-1", "bob", "alice@example.com", "autopilot", "nobody")),
            "actor.type": st.sampled_from(("system", "USER", "service_account")),
            "resource.type": st.sampled_from(("secret", "api_key")),
            "outcome": st.sampled_from(("success", "DENIED", "failure")),
            "cluster": st.sampled_from(("c-1", "c-2")),
            "workspace": st.just("ws-a"),
            "actor.id": st.sampled_from(("u-2", "sa-9")),
            "actor.slug": st.sampled_from(("alice", "autopilot")),
            "actor.email": st.just("bob@example.com"),
            "resource.id": st.sampled_from(("s-1", "k-2")),
            "resource.name": st.sampled_from(("CI Key", "db-password")),
            "resource.fqn": st.sampled_from(("stage/ws-b/deploy-key", "prod/ws-a/ci-key")),
            "trace": st.sampled_from(TRACES[1:]),
            "after": _hour.map(lambda hours: (BASE + dt.timedelta(hours=hours, minutes=7)).isoformat()),
            "before": _hour.map(lambda hours: (BASE + dt.timedelta(hours=hours)).isoformat()),
        }[kind]
        terms.append(QueryTerm(negated, "" if kind == "search" else kind, draw(value)))
    return terms


@st.composite
def filters(draw):
    f = pb.EventFilter()
    if draw(st.booleans()):
        f.tenant = draw(st.sampled_from(TENANTS))
    if draw(st.booleans()):
        f.actions.extend(draw(st.lists(st.sampled_from((*ACTIONS, "api_key.*", "se*")), max_size=2)))
    if draw(st.integers(0, 3)) == 0:
        f.search = " ".join(draw(st.lists(st.sampled_from(SEARCH_WORDS), min_size=1, max_size=2)))
    for name, pool in (
        ("resource_type", ("secret", "api_key")),
        ("resource_id", ("s-1", "k-1")),
        ("resource_name", ("CI Key", "deploy_key%")),
        ("resource_fqn", ("prod/ws-a/db-password", "stage/ws-b/deploy-key")),
        ("cluster_id", ("c-1", "c-2")),
        ("workspace_id", ("ws-a",)),
        ("trace_id", TRACES[1:]),
    ):
        if draw(st.integers(0, 4)) == 0:
            setattr(f, name, draw(st.sampled_from(pool)))
    if draw(st.integers(0, 3)) == 0:
        f.actor_slugs.extend(draw(st.lists(st.sampled_from(("alice", "bob", "autopilot")), min_size=1, max_size=2)))
    if draw(st.integers(0, 3)) == 0:
        f.actor_ids.extend(draw(st.lists(st.sampled_from(("u-1", "u-2", "sa-9")), min_size=1, max_size=2)))
    if draw(st.integers(0, 3)) == 0:
        f.actor_types.extend(draw(st.lists(st.sampled_from([a[4] for a in ACTORS]), min_size=1, max_size=2)))
    if draw(st.integers(0, 3)) == 0:
        f.outcomes.extend(draw(st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=2)))
    start, end = draw(time_bounds())
    if start is not None:
        f.start_time.FromDatetime(start)
    if end is not None:
        f.end_time.FromDatetime(end)
    f.conditions.extend(draw(st.lists(conditions(), max_size=3)))
    f.condition_join = draw(
        st.sampled_from((pb.CONDITION_JOIN_UNSPECIFIED, pb.CONDITION_JOIN_ALL, pb.CONDITION_JOIN_ANY))
    )
    terms = draw(query_terms())
    f.query = " ".join(term.text() for term in terms)
    return f, terms


async def list_all(api, request_filter: pb.EventFilter, order: int, page_size: int, metadata=()) -> list[str]:
    ids, token = [], ""
    while True:
        page = await api.ListEvents(
            pb.ListEventsRequest(filter=request_filter, page_size=page_size, page_token=token, order=order),
            metadata=metadata,
        )
        ids.extend(event.event_id for event in page.events)
        token = page.next_page_token
        if not token:
            return ids


GROUP_KEY = {
    pb.GROUP_BY_ACTOR: lambda e: e.actor.id or e.actor.slug,
    pb.GROUP_BY_ACTION: lambda e: e.action,
    pb.GROUP_BY_RESOURCE_TYPE: lambda e: e.resource.type,
    pb.GROUP_BY_OUTCOME: lambda e: event_pb2.Outcome.Name(e.outcome),
}


def with_whole_window(request_filter: pb.EventFilter) -> pb.EventFilter:
    """The filter with the bounds it lacks set around every event of the dataset (a histogram needs both)."""
    if not request_filter.HasField("start_time"):
        request_filter.start_time.FromDatetime(BASE - dt.timedelta(hours=1))
    if not request_filter.HasField("end_time"):
        request_filter.end_time.FromDatetime(BASE + dt.timedelta(hours=WINDOW_HOURS + 1))
    return request_filter


def assert_histogram(counted, matched, request_filter, interval, group_by) -> None:
    """`counted` has every bucket of the filter's range, each with the count (and groups) of `matched`."""
    start, end, width = micros(request_filter.start_time), micros(request_filter.end_time), interval.seconds * 1_000_000
    assert counted.total == len(matched)
    assert [micros(bucket.start_time) for bucket in counted.buckets] == list(range(start, end, width))
    per_bucket = collections.Counter((micros(event.occurred_at) - start) // width for event in matched)
    assert [bucket.count for bucket in counted.buckets] == [per_bucket[i] for i in range(len(counted.buckets))]
    if group_by != pb.GROUP_BY_UNSPECIFIED:
        key = GROUP_KEY[group_by]
        assert {g.key: g.count for g in counted.groups} == collections.Counter(key(e) for e in matched)
        for index, bucket in enumerate(counted.buckets):
            in_bucket = [e for e in matched if (micros(e.occurred_at) - start) // width == index]
            assert {g.key: g.count for g in bucket.groups} == collections.Counter(key(e) for e in in_bucket)


# The suite's profile (tests/conftest.py) suppresses too_slow; the fixtures are shared by the examples on purpose.
_SETTINGS = settings(
    max_examples=120, suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(
    drawn=filters(),
    order=st.sampled_from((pb.ORDER_UNSPECIFIED, pb.ORDER_NEWEST_FIRST, pb.ORDER_OLDEST_FIRST)),
    page_size=st.integers(1, 60),
)
async def test_list_and_count_return_exactly_what_the_filter_means(api, dataset, drawn, order, page_size):
    request_filter, terms = drawn
    expected = sorted(
        (event.event_id for event in dataset.events if matches(request_filter, terms, event)),
        key=dataset.positions.__getitem__,
        reverse=order != pb.ORDER_OLDEST_FIRST,
    )
    assert await list_all(api, request_filter, order, page_size) == expected

    counted = await api.CountEvents(pb.CountEventsRequest(filter=request_filter))
    assert counted.total == len(expected)
    first = await api.ListEvents(pb.ListEventsRequest(filter=request_filter, include_total_size=True))
    assert first.total_size == len(expected)


@_SETTINGS
@given(
    drawn=filters(),
    interval_hours=st.sampled_from((0.5, 1, 1.5, 6, 24)),
    group_by=st.sampled_from(
        (pb.GROUP_BY_UNSPECIFIED, pb.GROUP_BY_ACTOR, pb.GROUP_BY_ACTION, pb.GROUP_BY_RESOURCE_TYPE, pb.GROUP_BY_OUTCOME)
    ),
)
async def test_histograms_and_groups_add_up_to_the_listed_events(api, dataset, drawn, interval_hours, group_by):
    request_filter, terms = drawn
    with_whole_window(request_filter)
    interval = duration_pb2.Duration(seconds=int(interval_hours * 3600))
    matched = [event for event in dataset.events if matches(request_filter, terms, event)]

    counted = await api.CountEvents(pb.CountEventsRequest(filter=request_filter, interval=interval, group_by=group_by))

    assert_histogram(counted, matched, request_filter, interval, group_by)


def at_hour(hours: int) -> str:
    return (BASE + dt.timedelta(hours=hours)).isoformat()


@pytest.mark.parametrize(
    "terms",
    [
        [("", "after", at_hour(40)), ("", "after", at_hour(10))],  # either: after hour 10
        [("", "before", at_hour(10)), ("", "before", at_hour(40))],  # either: before hour 40
        [("-", "after", at_hour(30))],  # not after: before
        [("-", "before", at_hour(30))],  # not before: after
        [("", "after", at_hour(10)), ("-", "after", at_hour(40))],  # a window
        [("-", "after", at_hour(50)), ("-", "after", at_hour(20)), ("", "action", "api_key.*")],
    ],
)
@pytest.mark.parametrize("scope", [{}, {"tenant": "t-one"}, {"search": "key"}])
async def test_repeated_and_negated_time_bounds_mean_what_they_mean_for_any_field(api, dataset, terms, scope):
    query = [QueryTerm(negated == "-", field, value) for negated, field, value in terms]
    request_filter = pb.EventFilter(query=" ".join(term.text() for term in query), **scope)
    expected = [event.event_id for event in dataset.events if matches(request_filter, query, event)]
    assert 0 < len(expected) < len(dataset.events), "the bounds select some events, not all"

    assert sorted(await list_all(api, request_filter, pb.ORDER_OLDEST_FIRST, 100)) == sorted(expected)
    counted = await api.CountEvents(pb.CountEventsRequest(filter=request_filter, group_by=pb.GROUP_BY_ACTION))
    assert counted.total == len(expected)
    histogram = await api.CountEvents(
        pb.CountEventsRequest(filter=with_whole_window(request_filter), interval=duration_pb2.Duration(seconds=3600))
    )
    assert histogram.total == len(expected)


async def test_counts_come_from_the_projection_when_it_can_answer_and_agree_with_the_log(api, dataset):
    day = pb.EventFilter(tenant="t-one", actions=["api_key.*"], resource_type="api_key")
    day.start_time.FromDatetime(BASE)
    day.end_time.FromDatetime(BASE + dt.timedelta(hours=48))
    hourly = duration_pb2.Duration(seconds=3600)
    from_projection = await api.CountEvents(
        pb.CountEventsRequest(filter=day, interval=hourly, group_by=pb.GROUP_BY_ACTION)
    )
    assert from_projection.source == pb.COUNT_SOURCE_PROJECTION

    by_actor = await api.CountEvents(pb.CountEventsRequest(filter=day, interval=hourly, group_by=pb.GROUP_BY_ACTOR))
    assert by_actor.source == pb.COUNT_SOURCE_LOG  # actors are not in the projection
    searched = pb.EventFilter()
    searched.CopyFrom(day)
    searched.search = "a"  # in every action of the filter, so the same events, counted from the log
    from_log = await api.CountEvents(
        pb.CountEventsRequest(filter=searched, interval=hourly, group_by=pb.GROUP_BY_ACTION)
    )
    assert from_log.source == pb.COUNT_SOURCE_LOG
    assert from_projection.total == from_log.total == by_actor.total > 0
    assert list(from_projection.buckets) == list(from_log.buckets)

    unaligned = pb.EventFilter()
    unaligned.CopyFrom(day)
    unaligned.start_time.FromDatetime(BASE + dt.timedelta(minutes=30))
    assert (await api.CountEvents(pb.CountEventsRequest(filter=unaligned))).source == pb.COUNT_SOURCE_LOG


async def test_search_ignores_case_beyond_ascii(api, database):
    messages = ("Rebuilt ΟΔΟΣ ΑΘΗΝΑΣ index", "Opened the İstanbul office", "Closed Rue de l'Élysée")
    await store_events(database, [make_event(message=message) for message in messages])

    async def found(search: str) -> list[str]:
        page = await api.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(search=search)))
        return [event.message for event in page.events]

    # The stored word, and the same word typed in other cases (a final or a medial small sigma, a plain i).
    for search in ("ΟΔΟΣ", "οδος", "Οδοσ", "αθηνας"):
        assert await found(search) == [messages[0]], search
    for search in ("İstanbul", "istanbul", "ISTANBUL"):
        assert await found(search) == [messages[1]], search
    for search in ("élysée", "ÉLYSÉE"):
        assert await found(search) == [messages[2]], search
    assert await found("elysee") == [], "accents are not ignored, only case"


async def test_the_search_fold_migration_refolds_an_existing_log(api, database, owner):
    [event_id] = await store_events(database, [make_event(message="Rebuilt ΟΔΟΣ index")])
    # As on a database migrated before 0004: text folded by lower(), so a final sigma typed in lower case misses.
    await owner.execute(
        """
        CREATE OR REPLACE FUNCTION audit_search_fold(value text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT RETURN lower(value COLLATE "pg_c_utf8")
        """
    )
    await owner.execute("REINDEX TABLE audit_events")  # its own statement: not in a transaction block
    await owner.execute("DELETE FROM audit_schema_migrations WHERE version = 4")
    searched = pb.ListEventsRequest(filter=pb.EventFilter(search="οδος"))
    assert not (await api.ListEvents(searched)).events

    assert [migration.name for migration in await migrate(owner)] == ["search_casefold"]
    assert [e.event_id for e in (await api.ListEvents(searched)).events] == [event_id]


# --- the per-action projection --------------------------------------------------------------------------------


@st.composite
def tenant_action_filters(draw):
    """Filters the per-action projection answers: a tenant, actions, conditions and query terms on the
    action, whole-hour time bounds."""
    f = pb.EventFilter(tenant=draw(st.sampled_from(TENANTS)))
    f.actions.extend(draw(st.lists(st.sampled_from((*ACTIONS, "api_key.*", "se*", "nothing")), max_size=2)))
    for _ in range(draw(st.integers(0, 2))):
        operator = draw(st.sampled_from(sorted(pb.ConditionOperator.values())[1:]))
        single = operator in (pb.CONDITION_OPERATOR_EQUAL, pb.CONDITION_OPERATOR_NOT_EQUAL)
        values = draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=1 if single else 3))
        f.conditions.append(pb.Condition(field=pb.CONDITION_FIELD_ACTION, operator=operator, values=values))
    f.condition_join = draw(st.sampled_from((pb.CONDITION_JOIN_ALL, pb.CONDITION_JOIN_ANY)))
    terms = [
        QueryTerm(draw(st.booleans()), "action", draw(st.sampled_from((*ACTIONS, "api_key.*", "Log*"))))
        for _ in range(draw(st.integers(0, 2)))
    ]
    f.query = " ".join(term.text() for term in terms)
    first, last = sorted(draw(st.lists(_hour, min_size=2, max_size=2, unique=True)))
    f.start_time.FromDatetime(BASE + dt.timedelta(hours=first - 1))
    f.end_time.FromDatetime(BASE + dt.timedelta(hours=last + 1))
    return f, terms


@_SETTINGS
@given(
    drawn=tenant_action_filters(),
    interval_hours=st.sampled_from((None, 1, 3, 24)),
    group_by=st.sampled_from((pb.GROUP_BY_UNSPECIFIED, pb.GROUP_BY_ACTION)),
)
async def test_the_per_action_projection_counts_exactly_what_the_filter_means(
    api, dataset, drawn, interval_hours, group_by
):
    request_filter, terms = drawn
    request = pb.CountEventsRequest(filter=request_filter, group_by=group_by)
    start, end = micros(request_filter.start_time), micros(request_filter.end_time)
    histogram_range = None
    if interval_hours is not None:
        request.interval.seconds = interval_hours * 3600
        histogram_range = (start, end, interval_hours * HOUR_MICROS)
    where = compile_filter(request_filter, UNRESTRICTED)
    grouping = "action" if group_by == pb.GROUP_BY_ACTION else None
    assert count_source(CountQuery(where, grouping, histogram_range)) is CountSource.ACTION_PROJECTION
    matched = [event for event in dataset.events if matches(request_filter, terms, event)]

    counted = await api.CountEvents(request)

    assert counted.source == pb.COUNT_SOURCE_PROJECTION
    assert counted.total == len(matched)
    by_action = collections.Counter(event.action for event in matched)
    expected_groups = sorted(by_action.items(), key=lambda kv: (-kv[1], kv[0])) if grouping else []
    assert [(g.key, g.count) for g in counted.groups] == expected_groups
    if interval_hours is None:
        assert not counted.buckets
        return
    width = interval_hours * HOUR_MICROS
    assert [micros(bucket.start_time) for bucket in counted.buckets] == list(range(start, end, width))
    for index, bucket in enumerate(counted.buckets):
        in_bucket = collections.Counter(e.action for e in matched if (micros(e.occurred_at) - start) // width == index)
        assert bucket.count == in_bucket.total()
        ranked = sorted(in_bucket.items(), key=lambda kv: (-kv[1], kv[0])) if grouping else []
        assert [(g.key, g.count) for g in bucket.groups] == ranked


# --- the same, under bearer tokens: the caller's scope narrows every answer ---------------------------------

CALLERS = (  # (tenant, subject, admin)
    ("t-one", "admin-1", True),
    ("t-two", "admin-2", True),
    ("t-one", "u-1", False),
    ("t-two", "u-2", False),
    ("t-one", "sa-9", False),
)


@_SETTINGS
@given(
    drawn=st.one_of(filters(), tenant_action_filters()),
    caller=st.sampled_from(CALLERS),
    group_by=st.sampled_from((pb.GROUP_BY_UNSPECIFIED, pb.GROUP_BY_ACTION, pb.GROUP_BY_ACTOR)),
)
async def test_under_a_token_every_answer_is_the_filter_within_the_callers_scope(
    secured, dataset, drawn, caller, group_by
):
    stub = secured.stub
    request_filter, terms = drawn
    tenant, subject, admin = caller
    metadata = bearer(secured.token(tenant, subject, admin=admin))
    if request_filter.tenant and request_filter.tenant != tenant:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ListEvents(pb.ListEventsRequest(filter=request_filter), metadata=metadata)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        return

    def visible(event) -> bool:
        return event.tenant == tenant and (admin or event.actor.id == subject)

    expected = sorted(
        (e.event_id for e in dataset.events if visible(e) and matches(request_filter, terms, e)),
        key=dataset.positions.__getitem__,
        reverse=True,
    )
    assert await list_all(stub, request_filter, pb.ORDER_NEWEST_FIRST, 25, metadata) == expected

    hourly = duration_pb2.Duration(seconds=3600)
    with_whole_window(request_filter)
    matched = [e for e in dataset.events if visible(e) and matches(request_filter, terms, e)]
    counted = await stub.CountEvents(
        pb.CountEventsRequest(filter=request_filter, interval=hourly, group_by=group_by), metadata=metadata
    )
    assert_histogram(counted, matched, request_filter, hourly, group_by)


@_SETTINGS
@given(drawn=filters())
async def test_the_live_tail_matcher_decides_each_event_as_the_database_does(api, dataset, drawn):
    request_filter, _ = drawn
    matcher = compile_matcher(compile_filter(request_filter, UNRESTRICTED))
    selected = set(await list_all(api, request_filter, pb.ORDER_OLDEST_FIRST, 1000))
    stored = (await api.ListEvents(pb.ListEventsRequest(order=pb.ORDER_OLDEST_FIRST, page_size=1000))).events
    assert len(stored) == len(dataset.events)
    for event in stored:
        verdict = matcher(event_columns(event))
        if verdict is None:  # only a search outside ASCII is left to the database
            terms = request_filter.search + request_filter.query
            assert not terms.isascii() or any(not text.isascii() for text in searched_texts(event))
        else:
            assert verdict == (event.event_id in selected), event
