"""CountEvents at the ends of the documented ranges: time bounds from 0001-01-01T00:00:00Z to
9999-12-31T23:59:59.999999999Z and intervals from 1s to google.protobuf.Duration's maximum. Every answer is exact,
agrees with ListEvents for the same filter and has its buckets from start_time, whichever source counts it."""

from __future__ import annotations

import collections
import datetime as dt

import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.core.filters import MAX_TIME_SECONDS, MIN_TIME_SECONDS
from google.protobuf import duration_pb2, timestamp_pb2

from ..conftest import store_events
from ..factories import make_event

SECOND = 1_000_000
HOUR = 3600 * SECOND
FIRST = MIN_TIME_SECONDS * SECOND
"""0001-01-01T00:00:00Z"""
END = timestamp_pb2.Timestamp(seconds=MAX_TIME_SECONDS, nanos=999_999_999)
"""9999-12-31T23:59:59.999999999Z, the latest end_time (the service counts in microseconds: up to ...59.999999)."""
LAST_HOUR = (MAX_TIME_SECONDS + 1) * SECOND - HOUR
"""9999-12-31T23:00:00Z"""
LONGEST = duration_pb2.Duration(seconds=315_576_000_000, nanos=999_999_999)
"""google.protobuf.Duration's largest value (10,000 years)."""
LEAP_YEAR = duration_pb2.Duration(seconds=366 * 86400)
"""Whole hours, so the projections can answer; 9,979 buckets over the whole range."""
WHOLE_HOURS = duration_pb2.Duration(seconds=315_576_000_000)

SOURCES = {
    # filter fields (besides the time range) -> the source that counts it with whole-hour bounds
    "tenant": ({"tenant": "acme"}, pb.COUNT_SOURCE_PROJECTION),  # the per-action projection
    "everything": ({}, pb.COUNT_SOURCE_PROJECTION),
    "cluster": ({"cluster_id": "cluster-a"}, pb.COUNT_SOURCE_LOG),  # not a projection column: from the log
}
GROUP_KEY = {
    pb.GROUP_BY_UNSPECIFIED: None,
    pb.GROUP_BY_ACTION: lambda event: event.action,
    pb.GROUP_BY_RESOURCE_TYPE: lambda event: event.resource.type,
    pb.GROUP_BY_ACTOR: lambda event: event.actor.id or event.actor.slug,
}


def timestamp(micros: int | timestamp_pb2.Timestamp) -> timestamp_pb2.Timestamp:
    if isinstance(micros, timestamp_pb2.Timestamp):
        return micros
    seconds, rest = divmod(micros, SECOND)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def micros_of(value: timestamp_pb2.Timestamp | duration_pb2.Duration) -> int:
    return value.seconds * SECOND + value.nanos // 1000


@pytest.fixture
async def stored(database):
    now = dt.datetime.now(dt.UTC)
    moments = [
        dt.datetime(2000, 1, 1, tzinfo=dt.UTC),  # the earliest occurred_at the service accepts
        dt.datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=dt.UTC),
        now - dt.timedelta(days=400),
        now - dt.timedelta(hours=2),
        now,
    ]
    events = []
    for index, moment in enumerate(moments):
        event = make_event(action=("api_key.create", "api_key.rotate", "Login")[index % 3])
        if index % 2:
            event.resource.type = "secret"
        event.occurred_at.FromDatetime(moment)
        events.append(event)
    await store_events(database, events)
    return events


async def listed(api, request_filter: pb.EventFilter) -> list:
    events, token = [], ""
    while True:
        page = await api.ListEvents(pb.ListEventsRequest(filter=request_filter, page_size=1000, page_token=token))
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def assert_counted_as_listed(api, request_filter, interval, group_by, source=None) -> pb.CountEventsResponse:
    request = pb.CountEventsRequest(filter=request_filter, group_by=group_by)
    if interval is not None:
        request.interval.CopyFrom(interval)
    counted = await api.CountEvents(request)
    events = await listed(api, request_filter)
    assert counted.total == len(events)
    if source is not None:
        assert counted.source == source
    key = GROUP_KEY[group_by]
    if key is not None:
        assert {group.key: group.count for group in counted.groups} == collections.Counter(map(key, events))
    if interval is None:
        assert not counted.buckets
        return counted
    start, end, width = micros_of(request_filter.start_time), micros_of(request_filter.end_time), micros_of(interval)
    assert [micros_of(bucket.start_time) for bucket in counted.buckets] == list(range(start, end, width))
    in_bucket = collections.defaultdict(list)
    for event in events:
        in_bucket[(micros_of(event.occurred_at) - start) // width].append(event)
    assert [bucket.count for bucket in counted.buckets] == [len(in_bucket[i]) for i in range(len(counted.buckets))]
    if key is not None:
        for index, bucket in enumerate(counted.buckets):
            assert {group.key: group.count for group in bucket.groups} == collections.Counter(
                map(key, in_bucket[index])
            )
    return counted


@pytest.mark.parametrize("fields", sorted(SOURCES))
@pytest.mark.parametrize("group_by", sorted(GROUP_KEY))
@pytest.mark.parametrize(
    ("start", "end", "interval"),
    [
        pytest.param(FIRST, LAST_HOUR, None, id="whole-hours-no-interval"),
        pytest.param(FIRST, LAST_HOUR, LEAP_YEAR, id="whole-hours-366-days"),
        pytest.param(FIRST, LAST_HOUR, WHOLE_HOURS, id="whole-hours-one-bucket"),
        pytest.param(FIRST, END, LONGEST, id="everything-longest-interval"),
        pytest.param(FIRST, FIRST + HOUR, duration_pb2.Duration(seconds=1), id="first-hour-by-second"),
        pytest.param(FIRST, FIRST + 100 * HOUR, duration_pb2.Duration(seconds=3600), id="first-hours"),
        pytest.param(LAST_HOUR, END, duration_pb2.Duration(seconds=1), id="last-hour-by-second"),
        pytest.param(LAST_HOUR - 100 * HOUR, LAST_HOUR, duration_pb2.Duration(seconds=3600), id="last-hours"),
    ],
)
async def test_counts_at_the_ends_of_the_time_range_are_exact(api, stored, fields, group_by, start, end, interval):
    request_filter = pb.EventFilter(start_time=timestamp(start), end_time=timestamp(end), **SOURCES[fields][0])
    start, end = micros_of(request_filter.start_time), micros_of(request_filter.end_time)
    whole_hours = start % HOUR == end % HOUR == 0 and (interval is None or micros_of(interval) % HOUR == 0)
    projection_can_group = group_by != pb.GROUP_BY_ACTOR
    source = SOURCES[fields][1] if whole_hours and projection_can_group else pb.COUNT_SOURCE_LOG
    counted = await assert_counted_as_listed(api, request_filter, interval, group_by, source)
    if start == FIRST and end > stored[-1].occurred_at.seconds * SECOND:
        assert counted.total == len(stored)


async def test_a_bucket_starting_at_the_first_moment_holds_the_events_it_covers(api, stored):
    # The only bucket starts at 0001-01-01T00:00:00Z (PostgreSQL's answer for it must be read back exactly).
    for request_filter in (pb.EventFilter(), pb.EventFilter(search="created"), pb.EventFilter(tenant="acme")):
        request_filter.start_time.CopyFrom(timestamp(FIRST))
        request_filter.end_time.CopyFrom(timestamp(LAST_HOUR))
        counted = await api.CountEvents(
            pb.CountEventsRequest(filter=request_filter, interval=WHOLE_HOURS, group_by=pb.GROUP_BY_ACTION)
        )
        assert [(micros_of(bucket.start_time), bucket.count) for bucket in counted.buckets] == [(FIRST, counted.total)]
        assert counted.total == len(await listed(api, request_filter)) > 0
