"""The Audit Logs console's views in a real headless Chromium (issue 18): the timeline with its filters and pages,
the graph narrowing the timeline, the details dialog with its side-by-side diff and the resource's history, bad
input shown in the page, keyboard use, and what a member (not an admin) sees.

Events go through NATS and the ingest worker; what the page shows is compared with what the gRPC API answers
for the same filter, as the same caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import Page, expect

from ..browser import Console, PageProblems, screenshot
from ..conftest import bearer, eventually, failure
from ..factories import make_event

WAIT_MS = 20_000
"""How long a page may take to show what a round trip to the API brings (a loaded 2-core machine)."""

DEPLOY, ROTATE, LOGIN = "deployment.create", "secret.rotate", "user.login"
PAGE_SIZE = 50


def person(name: str) -> event_pb2.Subject:
    return event_pb2.Subject(
        id=f"u-{name}",
        type=event_pb2.SUBJECT_TYPE_USER,
        slug=name,
        display_name=name.title(),
        email=f"{name}@example.com",
    )


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def an_event(action: str, who: str, resource_type: str, resource_id: str, **overrides: object) -> event_pb2.AuditEvent:
    return make_event(
        action=action,
        actor=person(who),
        resource=event_pb2.Resource(type=resource_type, id=resource_id, name=resource_id),
        message=f"{who} {action} {resource_id}",
        **overrides,
    )


def day_ago() -> Timestamp:
    """A start time before every event of these tests and after the start of the console's 24-hour range."""
    return timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(hours=23))


async def publish_stored(console: Console, events: list[event_pb2.AuditEvent]) -> None:
    """Publishes the events and waits until the API lists them all (each test has a database of its own)."""
    await console.publisher.publish_many(events)

    async def stored() -> bool:
        return len(await listed(console, pb.EventFilter())) == len(events)

    await eventually(stored, what=f"{len(events)} events stored")


async def listed(console: Console, event_filter: pb.EventFilter, token: str | None = None) -> list[str]:
    """The ids of every event ListEvents returns for the filter, newest first, as the caller of `token`."""
    ids: list[str] = []
    request = pb.ListEventsRequest(filter=event_filter, page_size=1000)
    while True:
        response = await console.grpc.ListEvents(request, metadata=bearer(token or console.token()))
        ids += [event.event_id for event in response.events]
        if not response.next_page_token:
            return ids
        request.page_token = response.next_page_token


async def rows(page: Page) -> list[str]:
    """The event ids of the timeline's rows, top to bottom."""
    return await page.locator("#events tbody tr").evaluate_all("rows => rows.map((row) => row.dataset.eventId)")


async def loaded_stamps(page: Page) -> list[str | None]:
    return await page.evaluate(
        "() => [document.getElementById('timeline-title').dataset.loaded,"
        " document.getElementById('chart').dataset.loaded]"
    )


async def reloaded(page: Page, action: Callable[[], Awaitable[object]]) -> None:
    """Does `action` and waits until the page has loaded the timeline and the graph again."""
    before = await loaded_stamps(page)
    await action()
    await page.wait_for_function(
        """([timeline, chart]) => document.getElementById('timeline-title').dataset.loaded !== timeline
             && document.getElementById('chart').dataset.loaded !== chart
             && !document.body.classList.contains('busy')""",
        arg=before,
        timeout=WAIT_MS,
    )


async def first_load(page: Page) -> None:
    await page.wait_for_function(
        """() => document.getElementById('timeline-title').dataset.loaded
             && document.getElementById('chart').dataset.loaded && !document.body.classList.contains('busy')""",
        timeout=WAIT_MS,
    )


async def apply(page: Page) -> None:
    await reloaded(page, lambda: page.click("#filters button[type=submit]"))


async def reset(page: Page) -> None:
    await reloaded(page, lambda: page.click("#reset"))


async def add_condition(page: Page, field: str, operator: str, value: str) -> None:
    await page.click("#add-condition")
    row = page.locator("#condition-list li").last
    await row.locator("[name=cond-field]").select_option(field)
    await row.locator("[name=cond-operator]").select_option(operator)
    await row.locator("[name=cond-value]").fill(value)


def query_of(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def no_problems(*problems: PageProblems) -> None:
    for watched in problems:
        assert watched.errors == []


def diff_lines(yaml_diff: str) -> tuple[list[str], list[str]]:
    """The lines a unified diff removes and adds (its two header lines left out)."""
    lines = [line for line in yaml_diff.splitlines() if not line.startswith(("--- ", "+++ "))]
    return [line[1:] for line in lines if line.startswith("-")], [line[1:] for line in lines if line.startswith("+")]


async def table_lines(table) -> tuple[list[str], list[str]]:
    """The removed (left) and added (right) cells of a side-by-side diff table."""
    removed = await table.locator("td.code.removed").all_text_contents()
    added = await table.locator("td.code.added").all_text_contents()
    return removed, added


async def test_filters_and_pages_match_the_api_and_the_url_shares_the_view(console: Console) -> None:
    deployments = [an_event(DEPLOY, "alice", "deployment", f"dep-{n}") for n in range(60)]
    bob_rotations = [
        an_event(
            ROTATE,
            "bob",
            "secret",
            f"sec-{n}",
            outcome=event_pb2.OUTCOME_FAILURE if n < 2 else event_pb2.OUTCOME_SUCCESS,
        )
        for n in range(6)
    ]
    carol_rotations = [an_event(ROTATE, "carol", "secret", f"sec-c{n}") for n in range(3)]
    await publish_stored(console, deployments + bob_rotations + carol_rotations)
    everything = await listed(console, pb.EventFilter(start_time=day_ago()))
    assert len(everything) == 69

    page, problems = await console.signed_in()
    await first_load(page)
    assert await rows(page) == everything[:PAGE_SIZE]
    await expect(page.locator("#newer")).to_be_disabled()
    await screenshot(page, "timeline")

    await reloaded(page, lambda: page.click("#older"))
    assert await rows(page) == everything[PAGE_SIZE:]
    await expect(page.locator("#older")).to_be_disabled()
    await reloaded(page, lambda: page.click("#newer"))
    assert await rows(page) == everything[:PAGE_SIZE]

    # Action and user (an email: the field takes an id, slug or email).
    await page.fill("#filters [name=action]", ROTATE)
    await page.fill("#filters [name=user]", "bob@example.com")
    await apply(page)
    bobs = await listed(console, pb.EventFilter(start_time=day_ago(), actions=[ROTATE], actor_ids=["u-bob"]))
    assert len(bobs) == 6
    assert await rows(page) == bobs
    assert query_of(page) == {"action": [ROTATE], "user": ["bob@example.com"]}

    # A query string.
    await reset(page)
    query = "action:secret.* -outcome:failure"
    await page.fill("#filters [name=q]", query)
    await apply(page)
    rotations = await listed(console, pb.EventFilter(start_time=day_ago(), query=query))
    assert len(rotations) == 7
    assert await rows(page) == rotations
    assert query_of(page) == {"q": [query]}

    # An is-not-equal-to condition and an ANY join of two conditions, with the query string still applied.
    await page.select_option("#filters [name=join]", "ANY")
    await add_condition(page, "ACTION", "NOT_EQUAL", DEPLOY)
    await add_condition(page, "RESOURCE_ID", "EQUAL", "dep-7")
    await page.fill("#filters [name=q]", "-outcome:failure")
    await apply(page)
    conditions = [
        pb.Condition(field=pb.CONDITION_FIELD_ACTION, operator=pb.CONDITION_OPERATOR_NOT_EQUAL, values=[DEPLOY]),
        pb.Condition(field=pb.CONDITION_FIELD_RESOURCE_ID, operator=pb.CONDITION_OPERATOR_EQUAL, values=["dep-7"]),
    ]
    either = await listed(
        console,
        pb.EventFilter(
            start_time=day_ago(),
            query="-outcome:failure",
            conditions=conditions,
            condition_join=pb.CONDITION_JOIN_ANY,
        ),
    )
    assert len(either) == 4 + 3 + 1  # bob's successful rotations, carol's, and dep-7
    assert await rows(page) == either
    assert query_of(page) == {
        "q": ["-outcome:failure"],
        "join": ["ANY"],
        "cond": [f"ACTION~NOT_EQUAL~{DEPLOY}", "RESOURCE_ID~EQUAL~dep-7"],
    }
    await screenshot(page, "filtered")

    # The link, opened in a fresh tab (its own session) signed in, shows the same view.
    shared, shared_problems = await console.signed_in(query=f"?{urlsplit(page.url).query}")
    await first_load(shared)
    assert await rows(shared) == either
    assert await shared.input_value("#filters [name=q]") == "-outcome:failure"
    assert await shared.input_value("#filters [name=join]") == "ANY"
    assert await shared.locator("#condition-list [name=cond-operator]").evaluate_all(
        "selects => selects.map((select) => select.value)"
    ) == ["NOT_EQUAL", "EQUAL"]
    assert await shared.locator("#condition-list [name=cond-value]").evaluate_all(
        "inputs => inputs.map((input) => input.value)"
    ) == [DEPLOY, "dep-7"]
    no_problems(problems, shared_problems)


async def bar_counts(page: Page) -> list[tuple[int, int]]:
    """(start in seconds, count) of each bar of the graph."""
    bars = await page.locator("#chart .bar").evaluate_all(
        "bars => bars.map((bar) => [Number(bar.dataset.start), Number(bar.dataset.count)])"
    )
    return [(start, count) for start, count in bars]


def seconds(value: int) -> Timestamp:
    return Timestamp(seconds=value)


async def legend(page: Page) -> list[tuple[str, str]]:
    """(data-key, text) of the legend's series buttons."""
    buttons = await page.locator("#legend button.series").evaluate_all(
        "buttons => buttons.map((button) => [button.dataset.key, button.textContent])"
    )
    return [(key, text) for key, text in buttons]


async def test_the_graph_narrows_the_timeline_to_a_bucket_an_action_or_a_user(console: Console) -> None:
    now = dt.datetime.now(dt.UTC)

    def hours_ago(hours: float) -> Timestamp:
        return timestamp(now - dt.timedelta(hours=hours))

    events = (
        [an_event(DEPLOY, "alice", "deployment", f"dep-{n}", occurred_at=hours_ago(1.2)) for n in range(4)]
        + [an_event(ROTATE, "bob", "secret", f"sec-{n}", occurred_at=hours_ago(3.5)) for n in range(3)]
        + [an_event(DEPLOY, "alice", "deployment", f"dep-late-{n}", occurred_at=hours_ago(3.5)) for n in range(3)]
        + [an_event(ROTATE, "carol", "secret", f"sec-c{n}", occurred_at=hours_ago(6.5)) for n in range(2)]
        + [an_event(LOGIN, "bob", "session", f"ses-{n}", occurred_at=hours_ago(9.5)) for n in range(5)]
    )
    await publish_stored(console, events)
    page, problems = await console.signed_in()
    await first_load(page)

    # The bars are CountEvents' histogram over the graph's range, and add up to its total.
    bars = await bar_counts(page)
    assert len(bars) == 24
    start, end = bars[0][0], bars[-1][0] + 3600
    counted = await console.grpc.CountEvents(
        pb.CountEventsRequest(
            filter=pb.EventFilter(start_time=seconds(start), end_time=seconds(end)),
            interval=Duration(seconds=3600),
            group_by=pb.GROUP_BY_ACTOR,
        ),
        metadata=bearer(console.token()),
    )
    assert [(bucket.start_time.seconds, bucket.count) for bucket in counted.buckets] == bars
    assert sum(count for _, count in bars) == counted.total == len(events)
    assert len([count for _, count in bars if count]) == 4
    assert await legend(page) == [(group.key, f"{group.key} ({group.count})") for group in counted.groups]

    # A click on a bar: the timeline holds exactly that bucket's events.
    bucket_start, bucket_count = max(bars, key=lambda bar: bar[1])
    await reloaded(page, lambda: page.locator(f"#chart .bar[data-start='{bucket_start}']").click())
    in_bucket = await listed(
        console, pb.EventFilter(start_time=seconds(bucket_start), end_time=seconds(bucket_start + 3600))
    )
    assert len(in_bucket) == bucket_count == 6
    assert await rows(page) == in_bucket
    assert await page.input_value("#filters [name=preset]") == "custom"
    bucket_iso = dt.datetime.fromtimestamp(bucket_start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end_iso = dt.datetime.fromtimestamp(bucket_start + 3600, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert query_of(page) == {"preset": ["custom"], "from": [bucket_iso], "to": [end_iso]}
    await screenshot(page, "graph-narrowed")

    # The same with the keyboard: a focused bar and Enter.
    await reset(page)
    other_start, other_count = next(bar for bar in bars if bar[1] and bar[0] != bucket_start)
    await page.locator(f"#chart .bar[data-start='{other_start}']").focus()
    await reloaded(page, lambda: page.keyboard.press("Enter"))
    in_other = await listed(
        console, pb.EventFilter(start_time=seconds(other_start), end_time=seconds(other_start + 3600))
    )
    assert len(in_other) == other_count
    assert await rows(page) == in_other
    assert query_of(page)["from"] == [dt.datetime.fromtimestamp(other_start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]

    # A legend's series: by action, then by user (the two narrowings add up).
    await reset(page)
    await reloaded(page, lambda: page.select_option("#group-by", "action"))
    assert query_of(page) == {"group": ["action"]}
    by_action = await console.grpc.CountEvents(
        pb.CountEventsRequest(
            filter=pb.EventFilter(start_time=seconds(start), end_time=seconds(end)), group_by=pb.GROUP_BY_ACTION
        ),
        metadata=bearer(console.token()),
    )
    assert {key for key, _ in await legend(page)} == {DEPLOY, LOGIN, ROTATE}
    assert sorted(await legend(page)) == sorted(
        (group.key, f"{group.key} ({group.count})") for group in by_action.groups
    )
    await reloaded(page, lambda: page.click(f"#legend button.series[data-key='{ROTATE}']"))
    rotations = await listed(console, pb.EventFilter(start_time=day_ago(), actions=[ROTATE]))
    assert len(rotations) == 5
    assert await rows(page) == rotations
    assert await page.input_value("#filters [name=action]") == ROTATE

    await reloaded(page, lambda: page.select_option("#group-by", "actor"))
    assert {key for key, _ in await legend(page)} == {"u-bob", "u-carol"}
    await reloaded(page, lambda: page.click("#legend button.series[data-key='u-bob']"))
    bobs = await listed(console, pb.EventFilter(start_time=day_ago(), actions=[ROTATE], actor_ids=["u-bob"]))
    assert len(bobs) == 3
    assert await rows(page) == bobs
    assert query_of(page) == {"action": [ROTATE], "user": ["u-bob"]}

    # Back in the browser's history: the view grouped by action again, the grouping's select included.
    await reloaded(page, page.go_back)
    await reloaded(page, page.go_back)
    assert query_of(page) == {"action": [ROTATE], "group": ["action"]}
    assert await page.input_value("#group-by") == "action"
    assert [key for key, _ in await legend(page)] == [ROTATE]
    assert await rows(page) == rotations
    no_problems(problems)


def as_utc(stamp: Timestamp) -> str:
    return stamp.ToDatetime(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def test_details_show_every_field_and_the_diff_and_the_resource_history(console: Console) -> None:
    created = {"name": "orders", "spec": {"replicas": 1, "image": "orders:1.0"}, "labels": {"team": "core"}}
    scaled = {"name": "orders", "spec": {"replicas": 3, "image": "orders:1.1"}, "labels": {"team": "core"}}
    revisions = []
    for state, action in ((created, DEPLOY), (scaled, "deployment.update")):
        event = an_event(
            action,
            "alice",
            "deployment",
            "orders",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            span_id="00f067aa0ba902b7",
            request=event_pb2.RequestContext(
                route="/api/v1/deployments/orders", method="PATCH", ip_address="192.0.2.44", user_agent="curl/8.5.0"
            ),
        )
        event.ClearField("change")
        event.change.after.update(state)
        event.metadata.Clear()
        event.metadata.update({"ticket": "OPS-1234", "dry_run": False})
        revisions.append(event)
    # One after the other: the second revision's change.before is the first's change.after.
    for count, event in enumerate(revisions, start=1):
        await console.publisher.publish(event)

        async def stored(count: int = count) -> bool:
            return len(await listed(console, pb.EventFilter())) == count

        await eventually(stored, what=f"revision {count} stored")
    [update_id, create_id] = await listed(console, pb.EventFilter())
    answer = await console.grpc.GetEvent(pb.GetEventRequest(event_id=update_id), metadata=bearer(console.token()))
    event = answer.event
    removed, added = diff_lines(answer.yaml_diff)
    assert "  replicas: 1" in removed and "  replicas: 3" in added

    page, problems = await console.signed_in()
    await first_load(page)
    details = page.locator("#details")
    await page.click(f"#events tbody tr[data-event-id='{update_id}']")
    await expect(details).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#details-title")).to_have_text(f"deployment.update · {update_id}")
    body = page.locator("#details-body")
    sections = await body.evaluate(
        """(body) => Object.fromEntries([...body.querySelectorAll("section.detail-section")].map((section) => [
             section.querySelector("h3").textContent,
             Object.fromEntries([...section.querySelectorAll("dt")].map((name) => [name.textContent,
               name.nextElementSibling.textContent]))]))"""
    )
    assert sections["Event"]["Event id"] == event.event_id
    assert sections["Event"]["Action"] == "deployment.update"
    assert sections["Event"]["Tenant"] == "acme"
    assert sections["Event"]["Position"] == str(event.position)
    assert sections["Event"]["Time (UTC)"].startswith(as_utc(event.occurred_at))
    assert sections["Event"]["Cluster"] == event.cluster_id
    assert sections["Event"]["Workspace"] == event.workspace_id
    assert sections["User"]["Id"] == event.actor.id == "u-alice"
    assert sections["User"]["Email"] == event.actor.email
    assert sections["Resource"]["Type"] == "deployment" and sections["Resource"]["Id"] == "orders"
    assert sections["Request"] == {
        "IP address": "192.0.2.44",
        "User agent": "curl/8.5.0",
        "Method": "PATCH",
        "Route": "/api/v1/deployments/orders",
    }
    assert event.request.ip_address == "192.0.2.44" and event.request.user_agent == "curl/8.5.0"
    assert sections["Trace"] == {"Trace id": event.trace_id, "Span id": event.span_id}
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and event.span_id == "00f067aa0ba902b7"
    assert sections["Integrity"] == {"Hash": event.hash, "Previous hash": event.prev_hash}
    assert await body.locator(".summary").text_content() == event.message
    metadata = await body.locator("pre.json").text_content()
    assert '"ticket": "OPS-1234"' in metadata and '"dry_run": false' in metadata

    # The diff: the removed cells are the lines of the YAML before, the added ones those after.
    table = body.locator("table.diff")
    assert await table_lines(table) == (removed, added)
    await table.scroll_into_view_if_needed()
    await screenshot(page, "details-diff")
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()

    # The keyboard: Enter on a focused row opens it too.
    await page.locator(f"#events tbody tr[data-event-id='{create_id}']").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#details-title")).to_have_text(f"{DEPLOY} · {create_id}", timeout=WAIT_MS)
    await page.keyboard.press("Escape")
    await page.locator(f"#events tbody tr[data-event-id='{update_id}']").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#details-title")).to_have_text(f"deployment.update · {update_id}", timeout=WAIT_MS)

    # The whole history of the resource, as ListResourceHistory has it.
    history = await console.grpc.ListResourceHistory(
        pb.ListResourceHistoryRequest(
            resource_type="deployment", resource_id="orders", page_size=20, order=pb.ORDER_NEWEST_FIRST
        ),
        metadata=bearer(console.token()),
    )
    assert [revision.event.event_id for revision in history.revisions] == [update_id, create_id]
    await page.click("#open-history")
    dialog = page.locator("#history")
    await expect(dialog).to_be_visible(timeout=WAIT_MS)
    await expect(details).to_be_hidden()
    articles = page.locator("#history-body article.revision")
    await expect(articles).to_have_count(2)
    for index, revision in enumerate(history.revisions):
        article = articles.nth(index)
        heading = await article.locator("h3").text_content()
        assert heading.startswith(f"Revision {revision.event.stream_revision} · ")
        assert revision.event.action in heading
        assert await table_lines(article.locator("table.diff")) == diff_lines(revision.yaml_diff)
    await expect(page.locator("#history-more")).to_be_hidden()
    await screenshot(page, "history")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#console")).to_be_visible()
    no_problems(problems)


BAD_STATUS = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
"""What Chromium logs for a call the service refused (Connect answers invalid_argument with HTTP 400)."""


async def test_a_bad_query_shows_the_service_error_and_the_page_keeps_working(console: Console) -> None:
    await publish_stored(
        console,
        [an_event(DEPLOY, "alice", "deployment", f"dep-{n}") for n in range(3)]
        + [an_event(ROTATE, "bob", "secret", f"sec-{n}") for n in range(2)],
    )
    page, problems = await console.signed_in()
    await first_load(page)
    error = page.locator("#error")
    await expect(error).to_be_hidden()

    for bad_query in ("colour:red", 'action:secret.* "rotated key'):
        await page.fill("#filters [name=q]", bad_query)
        await page.click("#filters button[type=submit]")
        code, details = await failure(
            console.grpc.ListEvents(
                pb.ListEventsRequest(filter=pb.EventFilter(start_time=day_ago(), query=bad_query)),
                metadata=bearer(console.token()),
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("filter.query: ")
        await expect(error).to_have_text(f"invalid_argument: {details}", timeout=WAIT_MS)
        await expect(page.locator("#console")).to_be_visible()
        assert query_of(page) == {"q": [bad_query]}
        # Nothing of the previous view is left under the error to be taken for the refused query's answer.
        await expect(page.locator("#events tbody tr")).to_have_count(0)
        await expect(page.locator("#chart .bar")).to_have_count(0)

    await screenshot(page, "bad-query")
    await page.fill("#filters [name=q]", "action:secret.*")
    await apply(page)
    await expect(error).to_be_hidden()
    rotations = await listed(console, pb.EventFilter(start_time=day_ago(), query="action:secret.*"))
    assert len(rotations) == 2
    assert await rows(page) == rotations
    # Chromium logs each refused call (ListEvents and CountEvents, twice); nothing else went wrong in the page.
    assert problems.errors == [BAD_STATUS] * 4


FOCUSED = """() => {
  const element = document.activeElement;
  return { tag: element.tagName.toLowerCase(), id: element.id, name: element.getAttribute("name"),
    type: element.getAttribute("type"), class: element.getAttribute("class"),
    event: element.dataset?.eventId ?? null };
}"""


async def test_the_keyboard_reaches_filters_apply_bars_and_rows_and_opens_and_closes_details(
    console: Console,
) -> None:
    await publish_stored(console, [an_event(DEPLOY, "alice", "deployment", f"dep-{n}") for n in range(3)])
    newest_first = await listed(console, pb.EventFilter(start_time=day_ago()))
    page, problems = await console.signed_in()
    await first_load(page)

    # From the top of the page, Tab after Tab until a row has the focus.
    await page.evaluate("() => document.activeElement?.blur()")
    visited = []
    for _ in range(100):
        await page.keyboard.press("Tab")
        visited.append(await page.evaluate(FOCUSED))
        if visited[-1]["tag"] == "tr":
            break
    assert visited[-1] == {"tag": "tr", "id": "", "name": None, "type": None, "class": None, "event": newest_first[0]}

    def first(matches: Callable[[dict], bool]) -> int:
        return next(index for index, focused in enumerate(visited) if matches(focused))

    filters = [
        first(lambda focused, name=name: focused["name"] == name)
        for name in ("preset", "search", "q", "action", "resource_type", "user", "outcome", "join")
    ]
    apply_button = first(lambda focused: focused["tag"] == "button" and focused["type"] == "submit")
    bars = [index for index, focused in enumerate(visited) if focused["class"] == "bar"]
    assert filters == sorted(filters)
    assert filters[-1] < apply_button < bars[0]
    assert len(bars) == 24 and bars == list(range(bars[0], bars[0] + 24))
    assert bars[-1] < len(visited) - 1

    # Enter opens the row's details; Escape closes them and gives the focus back to the row.
    details = page.locator("#details")
    await page.keyboard.press("Enter")
    await expect(details).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#details-title")).to_have_text(f"{DEPLOY} · {newest_first[0]}")
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()
    assert (await page.evaluate(FOCUSED))["event"] == newest_first[0]

    # The page goes on working from there: the next row, and its details.
    await page.keyboard.press("Tab")
    assert (await page.evaluate(FOCUSED))["event"] == newest_first[1]
    await page.keyboard.press("Enter")
    await expect(page.locator("#details-title")).to_have_text(f"{DEPLOY} · {newest_first[1]}", timeout=WAIT_MS)
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()
    no_problems(problems)


async def test_a_member_sees_only_their_own_events_and_the_page_says_so(console: Console) -> None:
    await publish_stored(
        console,
        [an_event(DEPLOY, "alice", "deployment", f"dep-{n}") for n in range(4)]
        + [an_event(ROTATE, "bob", "secret", f"sec-{n}") for n in range(3)]
        + [an_event(LOGIN, "bob", "session", "ses-1")],
    )
    member = console.token(subject="u-bob", admin=False)
    as_member = await listed(console, pb.EventFilter(start_time=day_ago()), token=member)
    bobs = await listed(console, pb.EventFilter(start_time=day_ago(), actor_ids=["u-bob"]))
    assert as_member == bobs and len(bobs) == 4

    page, problems = await console.signed_in(token=member)
    await first_load(page)
    assert await rows(page) == as_member
    await expect(page.locator("#caller")).to_have_text("u-bob · tenant acme · member")
    await expect(page.locator("#scope-note")).to_contain_text("only their own")
    assert [key for key, _ in await legend(page)] == ["u-bob"]
    bars = await bar_counts(page)
    counted = await console.grpc.CountEvents(
        pb.CountEventsRequest(
            filter=pb.EventFilter(start_time=seconds(bars[0][0]), end_time=seconds(bars[-1][0] + 3600))
        ),
        metadata=bearer(member),
    )
    assert sum(count for _, count in bars) == counted.total == 4
    await screenshot(page, "member")

    # An admin of the same tenant sees everyone's events, and no such note.
    admin_page, admin_problems = await console.signed_in()
    await first_load(admin_page)
    assert len(await rows(admin_page)) == 8
    await expect(admin_page.locator("#caller")).to_have_text("u-alice · tenant acme · admin")
    await expect(admin_page.locator("#scope-note")).to_have_text("")
    no_problems(problems, admin_problems)
