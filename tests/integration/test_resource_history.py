"""Resource streams end to end: producers that send only change.after, through NATS and the ingest worker, get
revisions, change.before filled from the previous state, diffs in GetEvent and ListResourceHistory, secrets
masked before anything is stored, and a projection that the rebuild reproduces exactly."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_service.core.masking import MASK
from audit_service.store.projections import rebuild_projections
from google.protobuf import json_format

from ..conftest import bearer, eventually, serving_stub
from ..factories import make_event, stamp

TENANT, RESOURCE_TYPE, RESOURCE_ID = "acme", "database", "orders-db"
ALICE, BOB = "u-alice", "u-bob"
STREAM_ROWS = "SELECT * FROM audit_resource_heads ORDER BY tenant, resource_type, resource_id"
COUNT_ROWS = "SELECT * FROM audit_counts_hourly ORDER BY tenant, hour, action, resource_type, outcome, actor_type"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")

CREATED = {
    "name": "orders",
    "db": {"host": "db-1", "password": "hunter2"},
    "apiKey": "sk_live_abc",
    "spec": {"replicas": 1, "ports": [5432]},
    "labels": {"app.kubernetes.io/name": "orders"},
}


def updated(state: dict, **changes) -> dict:
    return json.loads(json.dumps(state)) | changes


# Each update changes different fields (nested, list items, keys that are not identifiers); producers send the
# whole new state as change.after, secrets included, and nothing as change.before.
STATES = [CREATED]
STATES.append(updated(STATES[-1], spec={"replicas": 3, "ports": [5432]}))
STATES.append(updated(STATES[-1], spec={"replicas": 3, "ports": [5432, 6432]}))
STATES.append(updated(STATES[-1], labels={"team": "core"}))
STATES.append(updated(STATES[-1], db={"host": "db-2", "password": "hunter2"}))
STATES.append(updated(STATES[-1], name="orders-v2", spec={"replicas": 3, "ports": [5433, 6432]}))

A, R, M = pb.CHANGE_KIND_ADDED, pb.CHANGE_KIND_REMOVED, pb.CHANGE_KIND_MODIFIED
# (path, kind, old, new) per revision, as stored: the secrets masked.
EXPECTED_CHANGES = [
    [
        ("apiKey", A, None, MASK),
        ("db", A, None, {"host": "db-1", "password": MASK}),
        ("labels", A, None, {"app.kubernetes.io/name": "orders"}),
        ("name", A, None, "orders"),
        ("spec", A, None, {"ports": [5432], "replicas": 1}),
    ],
    [("spec.replicas", M, 1, 3)],
    [("spec.ports[1]", A, None, 6432)],
    [('labels["app.kubernetes.io/name"]', R, "orders", None), ("labels.team", A, None, "core")],
    [("db.host", M, "db-1", "db-2")],
    [("name", M, "orders", "orders-v2"), ("spec.ports[0]", M, 5432, 5433)],
]
# The lines the YAML diff of each revision removes and adds.
EXPECTED_YAML_LINES = [
    (
        [],
        [
            f"apiKey: '{MASK}'",
            "db:",
            "  host: db-1",
            f"  password: '{MASK}'",
            "labels:",
            "  app.kubernetes.io/name: orders",
            "name: orders",
            "spec:",
            "  ports:",
            "  - 5432",
            "  replicas: 1",
        ],
    ),
    (["  replicas: 1"], ["  replicas: 3"]),
    ([], ["  - 6432"]),
    (["  app.kubernetes.io/name: orders"], ["  team: core"]),
    (["  host: db-1"], ["  host: db-2"]),
    (["name: orders", "  - 5432"], ["name: orders-v2", "  - 5433"]),
]


def event_of(
    actor_id: str, action: str, *, after: dict | None = None, before: dict | None = None, tenant: str = TENANT
) -> event_pb2.AuditEvent:
    event = make_event(
        tenant,
        action=action,
        actor=event_pb2.Subject(id=actor_id, slug=actor_id, type=event_pb2.SUBJECT_TYPE_USER),
        resource=event_pb2.Resource(type=RESOURCE_TYPE, id=RESOURCE_ID, name="orders"),
    )
    event.ClearField("change")
    if after is not None:
        event.change.after.update(after)
    if before is not None:
        event.change.before.update(before)
    event.metadata.update({"apiKey": "sk_live_abc", "client": {"session_token": "hunter2", "ip": "10.0.0.1"}})
    return event


async def publish_all(publisher, owner, events) -> None:
    before = await owner.fetchval("SELECT count(*) FROM audit_events")
    for event in events:  # one at a time: JetStream keeps their order, so do the positions
        event.event_id = (await publisher.publish(event)).event_id

    async def stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") == before + len(events)

    await eventually(stored, what=f"{len(events)} events stored")


@pytest.fixture
async def stream(publisher, start_worker, owner) -> list[event_pb2.AuditEvent]:
    """A create and five updates of one resource by alice and bob in turn (only change.after), with an event
    of another resource and one of the same resource id in another tenant around them."""
    await start_worker()
    events = [
        event_of((ALICE, BOB)[i % 2], "database.create" if i == 0 else "database.update", after=state)
        for i, state in enumerate(STATES)
    ]
    other_resource = make_event(TENANT)
    other_tenant = event_of(ALICE, "database.create", after={"name": "not this one"}, tenant="globex")
    await publish_all(publisher, owner, [other_resource, *events[:3], other_tenant, *events[3:]])
    return events


def changes_of(message: pb.GetEventResponse | pb.ResourceRevision) -> list[tuple]:
    def value(change: pb.FieldChange, field: str):
        return json_format.MessageToDict(getattr(change, field)) if change.HasField(field) else None

    return [(c.path, c.kind, value(c, "old_value"), value(c, "new_value")) for c in message.changes]


def yaml_lines(diff: str) -> tuple[list[str], list[str]]:
    lines = diff.splitlines()
    assert lines[:2] == ["--- before", "+++ after"] and lines[2].startswith("@@ ")
    removed = [line[1:] for line in lines[2:] if line.startswith("-")]
    added = [line[1:] for line in lines[2:] if line.startswith("+")]
    return removed, added


async def history_of(stub, *, page_size: int = 0, metadata=None, **fields) -> list[pb.ResourceRevision]:
    request = pb.ListResourceHistoryRequest(
        tenant=TENANT, resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID, page_size=page_size
    )
    for name, value in fields.items():
        setattr(request, name, value)
    revisions = []
    while True:
        page = await stub.ListResourceHistory(request, metadata=metadata)
        revisions.extend(page.revisions)
        if not page.next_page_token:
            return revisions
        request.page_token = page.next_page_token


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def test_five_after_only_updates_show_five_revisions_with_their_diffs(api, stream):
    revisions = await history_of(api)
    assert [revision.event.event_id for revision in revisions] == [event.event_id for event in stream]
    assert [revision.event.stream_revision for revision in revisions] == [1, 2, 3, 4, 5, 6]
    for number, revision in enumerate(revisions):
        assert changes_of(revision) == EXPECTED_CHANGES[number], f"revision {number + 1}"
        assert yaml_lines(revision.yaml_diff) == EXPECTED_YAML_LINES[number], f"revision {number + 1}"
        # change.before was filled from the previous revision's state; the secrets are masked in both.
        after = json_format.MessageToDict(revision.event.change.after)
        assert after["db"]["password"] == MASK and after["apiKey"] == MASK
        assert revision.event.metadata["apiKey"] == MASK and revision.event.metadata["client"]["session_token"] == MASK
        if number == 0:
            assert not revision.event.change.HasField("before")
        else:
            assert revision.event.change.before == revisions[number - 1].event.change.after

    assert revisions[1].yaml_diff == (
        "--- before\n+++ after\n@@ -8,4 +8,4 @@\n spec:\n   ports:\n   - 5432\n-  replicas: 1\n+  replicas: 3\n"
    )
    newest_first = await history_of(api, order=pb.ORDER_NEWEST_FIRST, page_size=4)
    assert [revision.event.stream_revision for revision in newest_first] == [6, 5, 4, 3, 2, 1]
    assert [changes_of(revision) for revision in newest_first] == EXPECTED_CHANGES[::-1]


async def test_get_event_returns_the_same_diff_as_the_history(api, stream):
    revisions = await history_of(api)
    for revision in (revisions[0], revisions[3], revisions[5]):
        response = await api.GetEvent(pb.GetEventRequest(event_id=revision.event.event_id))
        assert response.event == revision.event
        assert list(response.changes) == list(revision.changes)
        assert response.yaml_diff == revision.yaml_diff
    # Another type or id is another stream.
    assert await history_of(api, resource_type="api_key") == []
    assert await history_of(api, resource_id="no-such-resource") == []


async def test_secrets_never_reach_the_tables_in_clear(stream, owner):
    rows = [row[0] for row in await owner.fetch("SELECT e::text FROM audit_events e")]
    heads = [row[0] for row in await owner.fetch("SELECT h::text FROM audit_resource_heads h")]
    assert len(rows) == 8 and len(heads) == 3
    for text in rows + heads:
        assert "hunter2" not in text and "sk_live_abc" not in text, text
    states = await owner.fetch(
        "SELECT change_after, metadata FROM audit_events WHERE resource_id = $1 AND tenant = $2", RESOURCE_ID, TENANT
    )
    for after, metadata in states:
        assert json.loads(after)["db"]["password"] == MASK and json.loads(after)["apiKey"] == MASK
        assert json.loads(metadata)["client"] == {"session_token": MASK, "ip": "10.0.0.1"}
    state = await owner.fetchval(
        "SELECT state FROM audit_resource_heads WHERE (tenant, resource_type, resource_id) = ($1, $2, $3)",
        TENANT,
        RESOURCE_TYPE,
        RESOURCE_ID,
    )
    assert json.loads(state)["db"] == {"host": "db-2", "password": MASK}


async def test_pages_follow_the_revisions_and_their_tokens_are_bound_to_the_request(api, stream):
    request = pb.ListResourceHistoryRequest(
        tenant=TENANT, resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID, page_size=2
    )
    pages = []
    while True:
        page = await api.ListResourceHistory(request)
        pages.append([revision.event.stream_revision for revision in page.revisions])
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
        token = page.next_page_token
    assert pages == [[1, 2], [3, 4], [5, 6]]

    def reused(**changes) -> pb.ListResourceHistoryRequest:
        other = pb.ListResourceHistoryRequest(
            tenant=TENANT, resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID, page_size=2, page_token=token
        )
        for name, value in changes.items():
            setattr(other, name, value)
        return other

    # The same request with another page size continues where the token says; anything else is refused.
    assert [r.event.stream_revision for r in (await api.ListResourceHistory(reused(page_size=10))).revisions] == [5, 6]
    for changes in ({"resource_id": "other"}, {"resource_type": "api_key"}, {"order": pb.ORDER_NEWEST_FIRST}):
        code, details = await status_of(api.ListResourceHistory(reused(**changes)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token"), changes
    for bad in ({"page_size": -1}, {"page_token": "garbage"}, {"order": 99}, {"resource_id": ""}, {"tenant": ""}):
        code, details = await status_of(api.ListResourceHistory(reused(**bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(next(iter(bad))), (bad, details)


async def test_large_states_split_pages(publisher, start_worker, owner, service_env):
    await start_worker()
    states = [{"blob": f"{i}" + "x" * 2500, "n": i} for i in range(4)]
    await publish_all(publisher, owner, [event_of(ALICE, "database.update", after=state) for state in states])
    async with serving_stub(service_env | {"AUDIT_MAX_RESPONSE_BYTES": "16384"}) as stub:
        revisions = await history_of(stub, page_size=100)
        page = await stub.ListResourceHistory(
            pb.ListResourceHistoryRequest(tenant=TENANT, resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID)
        )
    # Each revision carries before, after and the diff (~10 kB from the second on): short pages, none lost.
    assert [revision.event.stream_revision for revision in revisions] == [1, 2, 3, 4]
    assert len(page.revisions) < 4 and page.next_page_token and page.ByteSize() <= 16384


async def test_access_is_scoped_like_list_events(secured, stream):
    stub = secured.stub
    admin = bearer(secured.token(TENANT, "u-carol", admin=True))
    alice = bearer(secured.token(TENANT, ALICE))
    assert [r.event.stream_revision for r in await history_of(stub, metadata=admin)] == [1, 2, 3, 4, 5, 6]
    assert [r.event.stream_revision for r in await history_of(stub, metadata=admin, tenant="")] == [1, 2, 3, 4, 5, 6]
    # Non-admins see only what they did (with the diffs of those events).
    own = await history_of(stub, metadata=alice, page_size=1)
    assert [r.event.stream_revision for r in own] == [1, 3, 5]
    assert [changes_of(r) for r in own] == EXPECTED_CHANGES[0::2]
    assert await history_of(stub, metadata=bearer(secured.token(TENANT, "u-nobody"))) == []

    code, details = await status_of(
        stub.ListResourceHistory(
            pb.ListResourceHistoryRequest(tenant="globex", resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID),
            metadata=admin,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and details.startswith("tenant")
    code, details = await status_of(
        stub.ListResourceHistory(pb.ListResourceHistoryRequest(resource_type=RESOURCE_TYPE), metadata=admin)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("resource_id")
    globex = await history_of(stub, metadata=bearer(secured.token("globex", ALICE)), tenant="")
    assert [json_format.MessageToDict(r.event.change.after) for r in globex] == [{"name": "not this one"}]

    # A page token of one caller is refused to another.
    first = await stub.ListResourceHistory(
        pb.ListResourceHistoryRequest(resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID, page_size=1),
        metadata=alice,
    )
    code, details = await status_of(
        stub.ListResourceHistory(
            pb.ListResourceHistoryRequest(
                resource_type=RESOURCE_TYPE, resource_id=RESOURCE_ID, page_size=1, page_token=first.next_page_token
            ),
            metadata=admin,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token")
    # GetEvent's diffs follow the same visibility.
    hidden = stream[1].event_id
    code, _ = await status_of(stub.GetEvent(pb.GetEventRequest(event_id=hidden), metadata=alice))
    assert code == grpc.StatusCode.NOT_FOUND
    shown = await stub.GetEvent(pb.GetEventRequest(event_id=stream[2].event_id), metadata=alice)
    assert changes_of(shown) == EXPECTED_CHANGES[2]


async def test_a_deletion_clears_the_state_and_a_new_creation_starts_from_nothing(api, stream, publisher, owner):
    deleted = event_of(BOB, "database.delete", before=STATES[-1])
    recreated = event_of(ALICE, "database.create", after={"name": "orders", "spec": {"replicas": 1}})
    await publish_all(publisher, owner, [deleted])
    head = await owner.fetchrow(
        "SELECT revision, state FROM audit_resource_heads WHERE resource_id = $1 AND tenant = $2", RESOURCE_ID, TENANT
    )
    assert tuple(head) == (7, None)
    await publish_all(publisher, owner, [recreated])

    revisions = await history_of(api)
    assert [revision.event.stream_revision for revision in revisions] == [1, 2, 3, 4, 5, 6, 7, 8]
    deletion, creation = revisions[6], revisions[7]
    assert [(path, kind) for path, kind, _, _ in changes_of(deletion)] == [
        ("apiKey", R),
        ("db", R),
        ("labels", R),
        ("name", R),
        ("spec", R),
    ]
    assert yaml_lines(deletion.yaml_diff)[1] == []
    assert not creation.event.change.HasField("before")
    assert changes_of(creation) == [("name", A, None, "orders"), ("spec", A, None, {"replicas": 1})]
    assert yaml_lines(creation.yaml_diff) == ([], ["name: orders", "spec:", "  replicas: 1"])
    stored_before = await owner.fetchval(
        "SELECT change_before FROM audit_events WHERE event_id = $1::uuid", recreated.event_id
    )
    assert stored_before is None


async def test_rebuild_reproduces_the_resource_heads_exactly(stream, publisher, owner):
    await publish_all(publisher, owner, [event_of(BOB, "database.delete", before=STATES[-1])])
    online = [tuple(row) for row in await owner.fetch(STREAM_ROWS)]
    assert [row[3] for row in online if row[2] == RESOURCE_ID] == [7, 1]  # acme's and globex's stream

    await owner.execute("DELETE FROM audit_resource_heads WHERE tenant = 'globex'")
    await owner.execute("UPDATE audit_resource_heads SET revision = revision + 3, state = '{\"x\": 1}'")
    assert [tuple(row) for row in await owner.fetch(STREAM_ROWS)] != online
    report = await rebuild_projections(owner, chunk_size=3)
    assert report.streams == 3 and report.events == 9
    assert [tuple(row) for row in await owner.fetch(STREAM_ROWS)] == online


async def test_grpcurl_shows_the_yaml_diff_of_an_event(api, stream):
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        "-d",
        json.dumps({"eventId": stream[1].event_id}),
        f"127.0.0.1:{api.port}",
        "audit.v1.AuditService/GetEvent",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    response = json.loads(stdout)
    assert response["changes"] == [
        {"path": "spec.replicas", "kind": "CHANGE_KIND_MODIFIED", "old_value": 1, "new_value": 3}
    ]
    assert "-  replicas: 1\n+  replicas: 3\n" in response["yaml_diff"]


async def test_a_resource_named_without_a_type_is_stored_counted_found_and_has_a_history(
    api, publisher, start_worker, owner, nc, config
):
    """The contract asks for no resource.type: an event naming a resource (or its parent) by id, name or FQN
    alone is stored, counted, found by filters and listed in the stream of type "", from any producer."""
    await start_worker()

    def bucket_event(
        action: str, after: dict, resource: event_pb2.Resource, parent: event_pb2.Resource | None = None
    ) -> event_pb2.AuditEvent:
        event = make_event(TENANT, action=action, resource=resource, parent_resource=parent or event_pb2.Resource())
        event.ClearField("change")
        event.change.after.update(after)
        return event

    created = bucket_event(
        "bucket.create",
        {"versioning": False},
        event_pb2.Resource(id="bucket-9", name="audit-logs"),
        event_pb2.Resource(fqn="eu/west"),
    )
    updated = bucket_event("bucket.update", {"versioning": True}, event_pb2.Resource(id="bucket-9"))
    typed = bucket_event("bucket.update", {"versioning": True}, event_pb2.Resource(type="bucket", id="bucket-9"))
    parent_only = make_event(TENANT, action="org.read", parent_resource=event_pb2.Resource(id="org-1"))
    parent_only.ClearField("resource")
    named_only = make_event(
        TENANT,
        action="bucket.read",
        resource=event_pb2.Resource(name="audit-logs"),
        parent_resource=event_pb2.Resource(),
    )
    # The first through NATS alone, as protobuf JSON from a producer in any language: the worker takes it.
    js = nc.jetstream()
    created = stamp(created)
    await js.publish(
        f"{config.nats.events_subject_prefix}.{TENANT}",
        json_format.MessageToJson(created).encode(),
        headers={"Content-Type": "application/json", "Nats-Msg-Id": created.event_id},
    )

    async def dead_letters() -> int:
        return (await js.stream_info(config.nats.dead_stream)).state.messages

    async def handled() -> bool:
        return await dead_letters() > 0 or await owner.fetchval("SELECT count(*) FROM audit_events") == 1

    await eventually(handled, what="the worker storing or dead-lettering the event")
    if await dead_letters():
        dead = await js.get_msg(config.nats.dead_stream, 1)
        pytest.fail(f"dead-lettered: {dead.headers['Audit-Dead-Field']}: {dead.headers['Audit-Dead-Detail']}")
    # The others through the Python publisher, which checks events as the worker does.
    await publish_all(publisher, owner, [updated, typed, parent_only, named_only])
    assert await dead_letters() == 0
    rows = await owner.fetch(
        "SELECT resource_type, resource_id, resource_name, parent_resource_type, parent_resource_id, "
        "parent_resource_fqn, stream_revision FROM audit_events ORDER BY position"
    )
    assert [tuple(row) for row in rows] == [
        (None, "bucket-9", "audit-logs", None, None, "eu/west", 1),
        (None, "bucket-9", None, None, None, None, 2),
        ("bucket", "bucket-9", None, None, None, None, 1),  # another stream: the same id with a type
        (None, None, None, None, "org-1", None, None),
        (None, None, "audit-logs", None, None, None, None),
    ]

    # Counted, from the projection (its rows with a NULL resource type) and from the log alike.
    window = pb.EventFilter(tenant=TENANT)
    hour = await owner.fetchval("SELECT date_trunc('hour', min(occurred_at)) FROM audit_events")
    window.start_time.FromDatetime(hour - dt.timedelta(hours=1))
    window.end_time.FromDatetime(hour + dt.timedelta(hours=2))
    from_projection = await api.CountEvents(pb.CountEventsRequest(filter=window, group_by=pb.GROUP_BY_RESOURCE_TYPE))
    assert from_projection.source == pb.COUNT_SOURCE_PROJECTION
    searched = pb.EventFilter(search="key")  # in every message: the same events, counted from the log
    searched.MergeFrom(window)
    from_log = await api.CountEvents(pb.CountEventsRequest(filter=searched, group_by=pb.GROUP_BY_RESOURCE_TYPE))
    assert from_log.source == pb.COUNT_SOURCE_LOG
    for counted in (from_projection, from_log):
        assert counted.total == 5
        assert [(group.key, group.count) for group in counted.groups] == [("", 4), ("bucket", 1)]
    assert await owner.fetchval("SELECT sum(events) FROM audit_counts_hourly WHERE resource_type IS NULL") == 4

    # Found by filters: fields, conditions (an empty value matches an empty field) and the query string.
    async def found(request_filter: pb.EventFilter) -> list[str]:
        page = await api.ListEvents(pb.ListEventsRequest(filter=request_filter, order=pb.ORDER_OLDEST_FIRST))
        return [event.event_id for event in page.events]

    def condition(field: int, value: str) -> pb.Condition:
        return pb.Condition(field=field, operator=pb.CONDITION_OPERATOR_EQUAL, values=[value])

    ids = [event.event_id for event in (created, updated, typed, parent_only, named_only)]
    assert await found(pb.EventFilter(resource_id="bucket-9")) == ids[:3]
    assert await found(pb.EventFilter(resource_name="audit-logs")) == [ids[0], ids[4]]
    assert await found(pb.EventFilter(resource_fqn="eu/west")) == []  # the parent's FQN is not the resource's
    untyped = [condition(pb.CONDITION_FIELD_RESOURCE_TYPE, ""), condition(pb.CONDITION_FIELD_RESOURCE_ID, "bucket-9")]
    assert await found(pb.EventFilter(conditions=untyped)) == ids[:2]
    parent = [
        condition(pb.CONDITION_FIELD_PARENT_RESOURCE_TYPE, ""),
        condition(pb.CONDITION_FIELD_PARENT_RESOURCE_ID, "org-1"),
    ]
    assert await found(pb.EventFilter(conditions=parent)) == [ids[3]]
    assert await found(pb.EventFilter(query="resource.id:bucket-9 -resource.type:bucket")) == ids[:2]
    assert await found(pb.EventFilter(search="audit-logs")) == [ids[0], ids[4]]

    # The stream of type "": its two revisions, change.before filled from the previous state.
    history = await history_of(api, resource_type="", resource_id="bucket-9")
    assert [revision.event.event_id for revision in history] == ids[:2]
    assert [revision.event.stream_revision for revision in history] == [1, 2]
    assert not history[0].event.resource.type and history[0].event.parent_resource.fqn == "eu/west"
    assert json_format.MessageToDict(history[1].event.change.before) == {"versioning": False}
    assert changes_of(history[1]) == [("versioning", M, False, True)]
    typed_history = await history_of(api, resource_type="bucket", resource_id="bucket-9")
    assert [revision.event.event_id for revision in typed_history] == [ids[2]]

    # The projections of such events are rebuilt exactly.
    online = [[tuple(row) for row in await owner.fetch(query)] for query in (STREAM_ROWS, COUNT_ROWS)]
    assert ("acme", "", "bucket-9", 2) in [row[:4] for row in online[0]]
    await rebuild_projections(owner)
    assert [[tuple(row) for row in await owner.fetch(query)] for query in (STREAM_ROWS, COUNT_ROWS)] == online
