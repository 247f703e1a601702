"""Queries under stress: pages walked while the worker keeps committing, and fuzzed requests that must never
produce INTERNAL or UNKNOWN."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_service.core.filters import MAX_TIME_SECONDS, MIN_TIME_SECONDS
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label_example
from hypothesis import strategies as st

from ..conftest import eventually
from ..factories import make_event

MATCHING_ACTIONS = ("api_key.create", "api_key.rotate")


async def walk(api, request_filter: pb.EventFilter, order: int, page_size: int, between_pages=None) -> list[int]:
    positions, token = [], ""
    while True:
        page = await api.ListEvents(
            pb.ListEventsRequest(filter=request_filter, order=order, page_size=page_size, page_token=token)
        )
        positions.extend(event.position for event in page.events)
        for event in page.events:
            assert event.action in MATCHING_ACTIONS and event.outcome != event_pb2.OUTCOME_DENIED
        token = page.next_page_token
        if not token:
            return positions
        if between_pages is not None:
            await between_pages()


async def matching_positions(owner) -> list[int]:
    rows = await owner.fetch(
        "SELECT position FROM audit_events WHERE action LIKE 'api\\_key.%' AND outcome <> $1 ORDER BY position",
        event_pb2.OUTCOME_DENIED,
    )
    return [row["position"] for row in rows]


async def test_walking_pages_while_events_are_ingested_yields_each_match_once_in_order(
    api, publisher, start_worker, owner
):
    await start_worker()
    actions = (*MATCHING_ACTIONS, "secret.read")
    outcomes = (event_pb2.OUTCOME_SUCCESS, event_pb2.OUTCOME_DENIED, event_pb2.OUTCOME_FAILURE)

    async def produce(count: int) -> None:
        for i in range(count):
            await publisher.publish(make_event(action=actions[i % 3], outcome=outcomes[i % 5 % 3]))
            if i % 10 == 0:
                await asyncio.sleep(0.005)

    await produce(90)
    request_filter = pb.EventFilter(tenant="acme", actions=["api_key.*"], query="-outcome:denied")

    async def at_least(count: int) -> bool:
        return len(await matching_positions(owner)) >= count

    await eventually(lambda: at_least(30), what="a first set of matching events")
    producing = asyncio.create_task(produce(300))
    waits = 3

    async def until_more_are_committed() -> None:
        # After each of the first pages, more matches are published and committed before the next page is read
        # (besides those of the producer running throughout): the walk certainly overlaps ingest.
        nonlocal waits
        if waits:
            waits -= 1
            seen = len(await matching_positions(owner))
            await produce(10)
            await eventually(lambda: at_least(seen + 1), what="more matching events committed during the walk")

    try:
        newest_first = await walk(api, request_filter, pb.ORDER_NEWEST_FIRST, 7, until_more_are_committed)
        waits = 3
        oldest_first = await walk(api, request_filter, pb.ORDER_OLDEST_FIRST, 7, until_more_are_committed)
    finally:
        await producing
    committed = await matching_positions(owner)

    # Newest first: exactly the matches that existed when the walk began (newer ones are ahead of the cursor).
    assert newest_first == sorted(newest_first, reverse=True)
    assert newest_first == [p for p in reversed(committed) if p <= newest_first[0]]
    # Oldest first: every match up to the last one seen, once each, in order; none skipped while others commit.
    assert oldest_first == [p for p in committed if p <= oldest_first[-1]]
    assert oldest_first[-1] > newest_first[0], "the oldest-first walk reached events committed during the walks"


_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
_enum = st.integers(-3, 40)
_INT64 = st.integers(-(2**63), 2**63 - 1)
_TIMESTAMP_SECONDS = (MIN_TIME_SECONDS, MAX_TIME_SECONDS)
_timestamp = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(st.integers(_TIMESTAMP_SECONDS[0] - 10, _TIMESTAMP_SECONDS[1] + 10), _INT64),
    nanos=st.integers(-(2**31), 2**31 - 1),
)
_duration = st.builds(
    duration_pb2.Duration,
    seconds=st.one_of(st.integers(-(2**40), 2**40), _INT64),
    nanos=st.integers(-(2**31), 2**31 - 1),
)
_query = st.lists(
    st.one_of(
        _text,
        st.sampled_from(
            (
                "action:",
                "-",
                '"',
                "actor.type:ROBOT",
                "after:yesterday",
                "before:2026-01-01T00:00:00Z",
                "after:0001-01-01T00:00:00+01:00",
                "before:9999-12-31T23:59:59-01:00",
                "after:2026-01-01T00:00:00+23:59",
                "x:y",
                '-"a b"',
            )
        ),
        st.builds(lambda f, v: f"{f}:{v}", st.sampled_from(("action", "actor", "outcome", "resource.type")), _text),
    ),
    max_size=6,
).map(" ".join)


def rarely(strategy, default):
    """`strategy` one time in four, else `default`: most fields stay valid, so requests get to the database."""
    return st.one_of(st.just(default), st.just(default), st.just(default), strategy)


_VALID_ENUM = st.integers(1, 3)


@st.composite
def event_filters(draw) -> pb.EventFilter:
    f = pb.EventFilter(
        tenant=draw(rarely(st.one_of(st.just("acme"), _text), "")),
        actions=draw(rarely(st.lists(st.one_of(_text, st.just("api_key.*"), st.just("*")), max_size=3), [])),
        search=draw(rarely(_text, "")),
        resource_id=draw(rarely(_text, "")),
        resource_type=draw(rarely(_text, "")),
        cluster_id=draw(rarely(_text, "")),
        actor_slugs=draw(rarely(st.lists(_text, max_size=3), [])),
        actor_ids=draw(rarely(st.lists(_text, max_size=3), [])),
        actor_types=draw(rarely(st.lists(st.one_of(_VALID_ENUM, _enum), max_size=3), [])),
        outcomes=draw(rarely(st.lists(st.one_of(_VALID_ENUM, _enum), max_size=3), [])),
        trace_id=draw(rarely(_text, "")),
        condition_join=draw(rarely(_enum, 0)),
        query=draw(rarely(_query, "")),
    )
    if draw(st.booleans()):  # a valid window, so histograms reach the database
        start = draw(st.integers(_TIMESTAMP_SECONDS[0], _TIMESTAMP_SECONDS[1] - 1))
        f.start_time.seconds = start
        f.end_time.seconds = draw(st.integers(start + 1, _TIMESTAMP_SECONDS[1]))
    else:
        for name in ("start_time", "end_time"):
            if draw(st.booleans()):
                getattr(f, name).CopyFrom(draw(_timestamp))
    for _ in range(draw(rarely(st.integers(1, 3), 0))):
        f.conditions.add(
            field=draw(st.one_of(_VALID_ENUM, _enum)),
            operator=draw(st.one_of(_VALID_ENUM, _enum)),
            values=draw(st.lists(_text, max_size=3)),
        )
    return f


_ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


async def outcome_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() in _ALLOWED, (error.code(), error.details())
        assert "Traceback" not in (error.details() or "")
        label_example(f"status {error.code().name}")
        return error.code()
    label_example("status OK")
    return grpc.StatusCode.OK


# The suite's profile (tests/conftest.py) suppresses too_slow; the fixtures are shared by the examples on purpose.
@settings(
    max_examples=300, suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
)
@given(
    request_filter=event_filters(),
    page_size=st.integers(-(2**31), 2**31 - 1),
    page_token=st.one_of(st.just(""), _text),
    order=_enum,
    interval=st.one_of(st.none(), _duration),
    group_by=_enum,
    event_id=_text,
    include_total_size=st.booleans(),
)
async def test_fuzzed_requests_get_a_clear_status_never_internal(
    api, request_filter, page_size, page_token, order, interval, group_by, event_id, include_total_size
):
    await outcome_of(
        api.ListEvents(
            pb.ListEventsRequest(
                filter=request_filter,
                page_size=page_size,
                page_token=page_token,
                order=order,
                include_total_size=include_total_size,
            )
        )
    )
    count = pb.CountEventsRequest(filter=request_filter, group_by=group_by)
    if interval is not None:
        count.interval.CopyFrom(interval)
    await outcome_of(api.CountEvents(count))
    await outcome_of(api.GetEvent(pb.GetEventRequest(event_id=event_id)))


@pytest.mark.parametrize(
    ("request_filter", "field"),
    [
        (pb.EventFilter(actions=["bad action!"]), "filter.actions[0]"),
        (pb.EventFilter(actions=["ok", "*"]), "filter.actions[1]"),
        (pb.EventFilter(actor_types=[99]), "filter.actor_types[0]"),
        (pb.EventFilter(outcomes=[0]), "filter.outcomes[0]"),
        (pb.EventFilter(trace_id="XYZ"), "filter.trace_id"),
        (pb.EventFilter(search="a\x00b"), "filter.search"),
        (pb.EventFilter(start_time=timestamp_pb2.Timestamp(seconds=10**13)), "filter.start_time"),
        (pb.EventFilter(conditions=[pb.Condition(field=1, operator=9, values=["x"])]), "filter.conditions[0].operator"),
        (
            pb.EventFilter(conditions=[pb.Condition(field=14, operator=1, values=["MAYBE"])]),
            "filter.conditions[0].values[0]",
        ),
        (pb.EventFilter(query='action:a "unterminated'), "filter.query"),
        (pb.EventFilter(query="colour:red"), "filter.query"),
        (pb.EventFilter(query="after:0001-01-01T00:00:00+01:00"), "filter.query"),  # before year 1 in UTC
        (pb.EventFilter(query="before:9999-12-31T23:59:59-01:00"), "filter.query"),  # after 9999 in UTC
    ],
)
async def test_each_malformed_filter_field_is_named(api, request_filter, field):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.ListEvents(pb.ListEventsRequest(filter=request_filter))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:"), error.value.details()


async def test_count_arguments_are_checked(api):
    day = pb.EventFilter(start_time=timestamp_pb2.Timestamp(seconds=0), end_time=timestamp_pb2.Timestamp(seconds=86400))
    searched_day = pb.EventFilter(search="x", start_time=day.start_time, end_time=day.end_time)  # counted from the log
    cases = [
        (pb.CountEventsRequest(interval=duration_pb2.Duration(seconds=3600)), "filter.start_time"),
        (pb.CountEventsRequest(filter=day, interval=duration_pb2.Duration(seconds=0, nanos=5)), "interval"),
        (pb.CountEventsRequest(filter=day, interval=duration_pb2.Duration(seconds=1)), "interval"),  # 86,400 buckets
        (pb.CountEventsRequest(filter=day, group_by=17), "group_by"),
        (pb.CountEventsRequest(filter=day, interval=duration_pb2.Duration(seconds=10**14)), "interval"),
        (pb.CountEventsRequest(filter=searched_day, interval=duration_pb2.Duration(seconds=2**62)), "interval"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.CountEvents(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(f"{field}:"), error.value.details()


async def test_a_request_that_does_not_parse_is_invalid_argument_not_unknown(api):
    # ListEventsRequest{filter: {search: <the bytes ff fe>}}: not UTF-8, so not a valid proto3 string.
    malformed = b"\x0a\x04\x1a\x02\xff\xfe"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        raw_call = channel.unary_unary("/audit.v1.AuditService/ListEvents")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await raw_call(malformed)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("request: ") and "UTF-8" in error.value.details()
        assert pb.ListEventsResponse.FromString(await raw_call(b"")).next_page_token == "", "an empty request is fine"
