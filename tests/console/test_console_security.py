"""The console's security (issue 18), in Chromium against the real stack: hostile event fields stay text, the
page's headers (strict CSP with Trusted Types) and same-origin loading, CORS only for configured origins, the
token kept in the tab's session storage and never in a URL, and GetCaller over gRPC and Connect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_client import new_event_id
from audit_service.auth.tokens import mint_token
from audit_service.config import load_config
from audit_service.errors import ConfigError
from playwright.async_api import Browser, Page, Request, expect

from ..browser import Console, screenshot
from ..conftest import JWT_SECRET, bearer, serving_api
from ..factories import make_event

PAYLOADS = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    '"><svg onload="window.__pwned=3">',
)
TOKEN_KEY = "audit-console-token"
"""The session storage key of the console's token (session.js)."""
LISTED_LOAD_FAILURE = "Failed to load resource: the server responded with a status of 401"
"""What Chromium logs for a call answered 401 (an expired or invalid token): expected, not a script error."""

# Keeps every CSP violation the page reports in window.__violations.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective}: ${event.blockedURI}`);
});
"""


def hostile_event() -> event_pb2.AuditEvent:
    event = make_event(event_id=new_event_id(), action="secret.update", message=" ".join(PAYLOADS))
    event.actor.display_name = PAYLOADS[1]
    event.actor.email = ""  # the timeline shows the email first, then the display name
    event.actor.slug = ""
    event.resource.name = PAYLOADS[2]
    event.metadata.update({"note": PAYLOADS[0], "tags": list(PAYLOADS)})
    event.change.before.update({"name": PAYLOADS[0]})
    event.change.after.Clear()
    event.change.after.update({"name": PAYLOADS[2], "label": PAYLOADS[1]})
    return event


async def test_hostile_event_fields_are_shown_as_text_and_never_run(console: Console) -> None:
    event = hostile_event()
    await console.publisher.publish(event)
    page, problems = await console.new_page()
    await page.add_init_script(RECORD_VIOLATIONS)
    await page.goto(f"{console.url}/#token={console.token()}")
    row = page.locator(f'#events tbody tr[data-event-id="{event.event_id}"]')
    await expect(row).to_have_count(1)
    await expect(row.locator("td").nth(1)).to_have_text(PAYLOADS[1])
    await expect(row.locator("td").nth(3)).to_have_text(f"{event.resource.type} {PAYLOADS[2]}")
    await screenshot(page, "hostile-event-timeline")

    await row.click()
    body = page.locator("#details-body")
    await expect(page.locator("#details")).to_be_visible()
    await expect(body.locator(".summary")).to_have_text(" ".join(PAYLOADS))
    await expect(body.locator("dd", has_text=PAYLOADS[1]).first).to_have_text(PAYLOADS[1])
    await expect(body.locator("dd", has_text=PAYLOADS[2]).first).to_have_text(PAYLOADS[2])
    metadata = await body.locator("pre.json").text_content() or ""
    assert "window.__pwned=1" in metadata and "window.__pwned=2" in metadata and "window.__pwned=3" in metadata
    diff = await body.locator("table.diff").text_content() or ""
    assert "window.__pwned=1" in diff and "window.__pwned=2" in diff and "window.__pwned=3" in diff
    await screenshot(page, "hostile-event-details")

    found = await page.evaluate(
        """() => ({
          pwned: typeof window.__pwned,
          images: document.querySelectorAll("img").length,
          scripts: [...document.scripts].map((script) => script.getAttribute("src")),
          strayGraphics: [...document.querySelectorAll("svg")].filter((svg) => !svg.closest("#chart")).length,
          handlers: [...document.querySelectorAll("*")].filter((element) => [...element.attributes].some(
            (attribute) => attribute.name.startsWith("on"))).length,
          violations: window.__violations,
        })"""
    )
    assert found == {
        "pwned": "undefined",
        "images": 0,
        "scripts": ["/assets/js/main.js"],
        "strayGraphics": 0,
        "handlers": 0,
        "violations": [],
    }
    assert problems.errors == []

    # The control: the page refuses markup handed to an HTML sink, and the watchers above see that refusal.
    refused = await page.evaluate(
        """() => {
          try {
            document.createElement("div").innerHTML = "<b>markup</b>";
            return "assigned";
          } catch (error) {
            return error.name;
          }
        }"""
    )
    assert refused == "TypeError"
    assert await page.evaluate("window.__violations") == ["require-trusted-types-for: trusted-types-sink"]
    assert len(problems.errors) == 1 and "TrustedHTML" in problems.errors[0]


async def test_the_page_and_its_files_carry_the_security_headers_and_load_nothing_from_elsewhere(
    console: Console,
) -> None:
    async with httpx.AsyncClient(base_url=console.url) as http:
        answers = [await http.get("/"), await http.get("/assets/js/main.js")]
    for answer in answers:
        assert answer.status_code == 200
        policy = answer.headers["content-security-policy"]
        directives = {part.split()[0]: part.split()[1:] for part in policy.split("; ")}
        assert directives["script-src"] == ["'self'"]
        assert directives["default-src"] == ["'none'"]
        assert directives["require-trusted-types-for"] == ["'script'"]
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"

    await console.publisher.publish(make_event(event_id=new_event_id()))
    page, problems = await console.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(f"{console.url}/#token={console.token()}")
    await page.locator("#events tbody tr").first.click()
    await expect(page.locator("#details")).to_be_visible()
    await page.click("#open-history")
    await expect(page.locator("#history")).to_be_visible()
    assert len(requested) > 5
    assert [url for url in requested if not url.startswith(f"{console.url}/")] == []
    assert problems.errors == []


@contextlib.asynccontextmanager
async def blank_pages() -> AsyncIterator[int]:
    """An HTTP server on 127.0.0.1 answering every GET with an empty page: another origin for the browser (and a
    third one as http://localhost:<port>). Yields its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            body = b"<!doctype html><title>another origin</title>"
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(body)}\r\nconnection: close"
            writer.write(head.encode() + b"\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# From a page of another origin: ListEvents read with fetch, or the error fetch threw.
FETCH_LIST_EVENTS = """
async ([url, token]) => {
  try {
    const response = await fetch(`${url}/audit.v1.AuditService/ListEvents`, { method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` }, body: "{}" });
    return { status: response.status, body: await response.json() };
  } catch (error) {
    return { error: `${error.name}: ${error.message}` };
  }
}
"""


async def read_list_events_from(browser: Browser, page_url: str, api_url: str, token: str) -> dict:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(page_url)
        return await page.evaluate(FETCH_LIST_EVENTS, [api_url, token])
    finally:
        await context.close()


async def preflight(url: str, origin: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.options(
            f"{url}/audit.v1.AuditService/ListEvents",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,connect-protocol-version",
            },
        )


async def test_without_cors_origins_no_other_origin_can_call_the_services(console: Console) -> None:
    refused = await preflight(console.url, "https://evil.example")
    assert "access-control-allow-origin" not in refused.headers
    async with httpx.AsyncClient() as http:
        simple = await http.post(
            f"{console.url}/audit.v1.AuditService/ListEvents",
            json={},
            headers={"origin": "https://evil.example", "authorization": f"Bearer {console.token()}"},
        )
    assert simple.status_code == 200  # answered, but a browser may not hand it to the page
    assert "access-control-allow-origin" not in simple.headers

    async with blank_pages() as port:
        read = await read_list_events_from(console.browser, f"http://127.0.0.1:{port}/", console.url, console.token())
    assert read == {"error": "TypeError: Failed to fetch"}


@pytest.fixture
async def cors_api(service_env: dict[str, str]) -> AsyncIterator[tuple[str, str, int]]:
    """An API whose HTTP port allows https://console.example.com and the blank pages at http://127.0.0.1:<port>:
    its URL, a token of acme's admin, and the blank pages' port."""
    async with blank_pages() as port:
        env = {key: value for key, value in service_env.items() if key != "AUDIT_AUTH_DISABLED"} | {
            "AUDIT_AUTH_JWT_SECRET": JWT_SECRET,
            "AUDIT_HTTP_ADDRESS": "127.0.0.1:0",
            "AUDIT_HTTP_CORS_ORIGINS": f"https://console.example.com, http://127.0.0.1:{port}",
        }
        config = load_config(env=env)
        async with serving_api(config) as server:
            assert server.http is not None
            token = mint_token(config.auth, subject="u-alice", tenant="acme", admin=True, ttl_seconds=600)
            yield f"http://127.0.0.1:{server.http.port}", token, port


async def test_cors_origins_may_call_the_services_and_no_other(
    browser: Browser, cors_api: tuple[str, str, int]
) -> None:
    url, token, port = cors_api
    allowed = await preflight(url, "https://console.example.com")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://console.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = await preflight(url, "https://evil.example")
    assert "access-control-allow-origin" not in refused.headers

    read = await read_list_events_from(browser, f"http://127.0.0.1:{port}/", url, token)
    assert read == {"status": 200, "body": {}}  # an empty log: ListEvents' answer, read by the page
    elsewhere = await read_list_events_from(browser, f"http://localhost:{port}/", url, token)
    assert elsewhere == {"error": "TypeError: Failed to fetch"}


@pytest.mark.parametrize(
    "origins", ["*", "https://x.example/path", "ftp://x", "https://ok.example, *", "https://x.example:abc"]
)
def test_bad_cors_origins_are_a_one_line_configuration_error(origins: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env={"AUDIT_AUTH_DISABLED": "true", "AUDIT_HTTP_CORS_ORIGINS": origins})
    assert raised.value.setting == "AUDIT_HTTP_CORS_ORIGINS"
    assert str(raised.value).startswith("AUDIT_HTTP_CORS_ORIGINS: ")
    assert "\n" not in str(raised.value)


def carrying_token(requests: list[Request], token: str) -> list[str]:
    """The URLs of the requests with the token in their URL or body."""
    return [request.url for request in requests if token in request.url or token in (request.post_data or "")]


async def signed_out_reason(page: Page) -> str:
    await expect(page.locator("#sign-in")).to_be_visible()
    await expect(page.locator("#console")).to_be_hidden()
    return await page.locator("#sign-in-reason").text_content() or ""


async def test_the_token_stays_in_the_tab_and_out_of_every_url(console: Console) -> None:
    token = console.token()
    page, problems = await console.new_page()
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    await page.goto(f"{console.url}/?preset=7d#token={token}")
    await expect(page.locator("#console")).to_be_visible()
    await expect(page.locator("#caller")).to_have_text("u-alice · tenant acme · admin")
    assert page.url == f"{console.url}/?preset=7d"
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == token
    assert await page.evaluate("localStorage.length") == 0
    assert await page.context.cookies() == []
    calls = [request for request in requests if "/audit.v1." in request.url]
    assert calls and all(request.headers.get("authorization") == f"Bearer {token}" for request in calls)
    assert carrying_token(requests, token) == []

    same_browser = await page.context.new_page()  # a new tab: its own session storage
    await same_browser.goto(f"{console.url}/")
    assert await signed_out_reason(same_browser) == "This service requires a bearer token."
    other, _ = await console.new_page()
    await other.goto(f"{console.url}/")
    assert await signed_out_reason(other) == "This service requires a bearer token."

    await page.click("#sign-out")
    assert await signed_out_reason(page) == "Signed out."
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    await page.reload()
    assert await signed_out_reason(page) == "This service requires a bearer token."
    assert [error for error in problems.errors if not error.startswith(LISTED_LOAD_FAILURE)] == []


async def test_an_expired_or_invalid_token_asks_to_sign_in_again(console: Console) -> None:
    page, problems = await console.new_page()
    expired = console.token(ttl=-60)  # past the verifier's 30 s leeway
    await page.goto(f"{console.url}/#token={expired}")
    reason = await signed_out_reason(page)
    assert "the bearer token has expired" in reason
    assert page.url == f"{console.url}/"

    await page.fill("#token", "not-a-token")
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#sign-in-reason")).to_contain_text("invalid bearer token")
    await expect(page.locator("#console")).to_be_hidden()

    await page.fill("#token", console.token())
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#console")).to_be_visible()
    await expect(page.locator("#sign-in")).to_be_hidden()
    assert [error for error in problems.errors if not error.startswith(LISTED_LOAD_FAILURE)] == []


async def test_get_caller_over_grpc_and_connect(console: Console, service_env: dict[str, str]) -> None:
    member = console.token(tenant="globex", subject="u-bob", admin=False)
    admin = console.token()
    over_grpc = await console.grpc.GetCaller(pb.GetCallerRequest(), metadata=bearer(member))
    assert (over_grpc.authenticated, over_grpc.tenant, over_grpc.subject, over_grpc.admin) == (
        True,
        "globex",
        "u-bob",
        False,
    )
    async with httpx.AsyncClient(base_url=console.url) as http:
        as_admin = await http.post(
            "/audit.v1.AuditService/GetCaller", json={}, headers={"authorization": f"Bearer {admin}"}
        )
        anonymous = await http.post("/audit.v1.AuditService/GetCaller", json={})
    assert as_admin.json() == {"authenticated": True, "tenant": "acme", "subject": "u-alice", "admin": True}
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await console.grpc.GetCaller(pb.GetCallerRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    config = load_config(env=service_env | {"AUDIT_HTTP_ADDRESS": "127.0.0.1:0"})  # auth disabled
    async with serving_api(config) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert server.http is not None
        open_grpc = await audit_service_pb2_grpc.AuditServiceStub(channel).GetCaller(pb.GetCallerRequest())
        assert open_grpc == pb.GetCallerResponse(authenticated=False)
        async with httpx.AsyncClient() as http:
            open_connect = await http.post(
                f"http://127.0.0.1:{server.http.port}/audit.v1.AuditService/GetCaller", json={}
            )
        assert open_connect.status_code == 200
        assert open_connect.json().get("authenticated", False) is False

        page, problems = await console.new_page()
        await page.goto(f"http://127.0.0.1:{server.http.port}/")
        await expect(page.locator("#caller")).to_have_text("authentication disabled: every tenant is visible")
        await expect(page.locator("#sign-out")).to_be_hidden()
        assert problems.errors == []
