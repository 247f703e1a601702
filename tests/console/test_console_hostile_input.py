"""The console and the HTTP port against hostile or extreme input, in Chromium against the real stack: an event at
the client's limits in 4-byte characters (timeline, details, side-by-side diff, export), crafted view URLs,
tokens no header can carry, and header bytes that are not UTF-8."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_client import new_event_id
from audit_client.validation import DEFAULT_LIMITS
from google.protobuf import json_format
from playwright.async_api import expect

from ..browser import Console, screenshot
from ..conftest import bearer, eventually
from ..factories import make_event

WAIT_MS = 20_000
"""How long a page may take to show what a round trip to the API brings (a loaded 2-core machine)."""
UNAUTHENTICATED_LOAD = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
"""What Chromium logs for a call answered 401: expected when the page opens without a token."""
FOUR_BYTES = "\U0001f30d"
"""A character of 4 bytes in UTF-8 (2 UTF-16 code units in the page)."""


async def stored(console: Console, count: int) -> bool:
    request = pb.CountEventsRequest(filter=pb.EventFilter())
    return (await console.grpc.CountEvents(request, metadata=bearer(console.token()))).total >= count


def event_at_the_limits() -> event_pb2.AuditEvent:
    """Every text field at its byte limit in 4-byte characters, the longest message, metadata keys and values in
    4-byte characters, and a change whose YAML has lines starting with "--" and "++" (as a diff's header does)."""
    most = DEFAULT_LIMITS.max_text_bytes // 4
    event = make_event(
        event_id=new_event_id(), action="secret.update", message="\U0001f9ea" * DEFAULT_LIMITS.max_message_chars
    )
    event.actor.CopyFrom(
        event_pb2.Subject(
            id="u-" + "\U0001f98a" * (most - 1), type=event_pb2.SUBJECT_TYPE_USER, display_name="\U0001f600" * most
        )
    )
    event.resource.CopyFrom(event_pb2.Resource(type="secret", id="s-1", name=FOUR_BYTES * most))
    event.metadata.Clear()
    event.metadata.update({"\U0001f511" * 60 + str(index): "\U0001f4a5" * 1000 for index in range(40)})
    event.change.before.update({"--flag": 1, "a": 2, "emoji\U0001f600": "\U0001f600" * 300})
    event.change.after.Clear()
    event.change.after.update({"++new": "x", "--flag": 2, "a": 2, "emoji\U0001f600": "\U0001f601" * 300})
    return event


async def test_an_event_at_the_limits_in_four_byte_characters_is_shown_and_exported_whole(console: Console) -> None:
    event = event_at_the_limits()
    assert event.ByteSize() > DEFAULT_LIMITS.max_event_bytes * 0.8
    await console.publisher.publish(event)
    await eventually(lambda: stored(console, 1), what="the event stored")
    page, problems = await console.signed_in()

    row = page.locator(f'#events tbody tr[data-event-id="{event.event_id}"]')
    await expect(row.locator("td").nth(1)).to_have_text(event.actor.display_name, timeout=WAIT_MS)
    await expect(row.locator("td").nth(3)).to_have_text(f"secret {event.resource.name}")
    await row.click()
    body = page.locator("#details-body")
    await expect(body.locator(".summary")).to_have_text(event.message, timeout=WAIT_MS)
    await expect(body).to_contain_text(event.actor.id)
    metadata = json.loads(await body.locator("pre.json").text_content())
    assert metadata == json.loads(json_format.MessageToJson(event.metadata))
    # Every line of the change, on its side with its number: "---flag: 1" is the removed line "--flag: 1".
    rows = await body.locator("table.diff tbody tr").evaluate_all(
        "rows => rows.map((row) => [...row.cells].map((cell) => cell.textContent))"
    )
    before, after = "\U0001f600" * 300, "\U0001f601" * 300
    assert rows == [
        ["1", "--flag: 1", "1", "++new: x"],
        ["", "", "2", "--flag: 2"],
        ["2", "a: 2", "3", "a: 2"],
        ["3", f"emoji\U0001f600: {before}", "4", f"emoji\U0001f600: {after}"],
    ]
    await screenshot(page, "event-at-the-limits")

    await page.click("#close-details")
    async with page.expect_download() as waiting:
        await page.click("#export-ndjson")
    exported = json.loads((await (await waiting.value).path()).read_bytes())
    assert exported["message"] == event.message
    assert exported["resource"]["name"] == event.resource.name
    assert problems.errors == []


CRAFTED_VIEWS = (
    "?preset=toString",
    "?preset=__proto__",
    "?preset=custom&from=%2B275760-09-13T00:00:00Z",
    "?preset=custom&from=2020-01-01T00:00:00Z&to=%2B100000-01-01T00:00:00Z",
    "?outcome=BOGUS",
)


async def test_a_crafted_view_url_falls_back_to_the_defaults_and_every_button_works(console: Console) -> None:
    event = make_event(event_id=new_event_id(), action="deploy.create", message="the crafted views' event")
    await console.publisher.publish(event)
    await eventually(lambda: stored(console, 1), what="the event stored")
    for query in CRAFTED_VIEWS:
        page, problems = await console.signed_in(query=query)
        await expect(page.locator(f'#events tbody tr[data-event-id="{event.event_id}"]')).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#chart .bar").first).to_be_attached()
        assert await page.locator("[name=outcome]").input_value() == ""
        await page.click("#live")
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        async with page.expect_download() as waiting:
            await page.click("#export-csv")
        assert event.message.encode() in (await (await waiting.value).path()).read_bytes()
        await expect(page.locator("#error")).to_be_hidden()
        assert problems.errors == [], query
        await page.context.close()


async def test_header_bytes_that_are_not_utf8_are_a_client_error_not_a_crash(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    get_caller = f"{console.url}/audit.v1.AuditService/GetCaller"
    json_call = {"content-type": "application/json"}
    token = console.token()
    with caplog.at_level(logging.INFO):
        async with httpx.AsyncClient() as http:
            latin1_token = await http.post(
                get_caller, content=b"{}", headers={**json_call, "authorization": b"Bearer \xe9t\xe9"}
            )
            other_header = await http.post(
                get_caller,
                content=b"{}",
                headers={**json_call, "authorization": f"Bearer {token}", "x-note": b"caf\xe9"},
            )
            stream = await http.post(
                f"{console.url}/audit.v1.AuditService/TailEvents",
                content=b"\0\0\0\0\x02{}",
                headers={"content-type": "application/connect+json", "authorization": b"Bearer \xff"},
            )
            accepted = await http.post(
                get_caller, content=b"{}", headers={**json_call, "authorization": f"Bearer {token}"}
            )
    for refused in (latin1_token, stream):
        assert refused.status_code == 401
        assert refused.json() == {"code": "unauthenticated", "message": "the authorization header is not UTF-8"}
    assert other_header.status_code == 400
    assert other_header.json() == {"code": "invalid_argument", "message": "the x-note header is not UTF-8"}
    assert accepted.json()["tenant"] == "acme"
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("stray", ["\u200b", "\u20ac"], ids=["zero-width space", "euro sign"])
async def test_a_token_with_a_character_no_header_can_carry_asks_to_sign_in_again(console: Console, stray: str) -> None:
    page, problems = await console.new_page()
    await page.goto(f"{console.url}/")
    await page.fill("#token", console.token()[:20] + stray + console.token()[20:])
    await page.click("#sign-in-form button[type=submit]")
    reason = "Not signed in: the token holds a space or a character that is not ASCII. Sign in with a valid token."
    await expect(page.locator("#sign-in-reason")).to_have_text(reason)
    # Kept in the tab, it is refused again on reload, with the form to sign in (not an error alone on the page).
    await page.reload()
    await expect(page.locator("#sign-in-reason")).to_have_text(reason)
    await expect(page.locator("#error")).to_be_hidden()
    await page.fill("#token", console.token())
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#console")).to_be_visible(timeout=WAIT_MS)
    # The only failed load is the first page's GetCaller without a token.
    assert problems.errors == [UNAUTHENTICATED_LOAD]
