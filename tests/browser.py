"""The console's test harness: Debian's Chromium driven by Playwright (async, in the tests' event loop), and the
API with its HTTP port, authentication on, and an ingest worker, so events reach the page as they do in
production: published on NATS, appended by the worker, read over Connect.

Chromium comes from Debian (`apt-get install chromium`, which the README's test command does): Playwright's own
browser download cannot reach its host here. Missing, the tests fail; they never skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from audit.v1 import audit_service_pb2_grpc
from audit_client.publisher import Publisher
from audit_service.auth.tokens import mint_token
from audit_service.config import AuthConfig
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Headless, as root in CI, on a machine without outside network: no sandbox (root), and none of Chromium's own
# background connections (refused here, slowly).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SCREENSHOTS = Path(os.environ.get("AUDIT_TEST_SCREENSHOTS", Path(__file__).parent.parent / "test-results" / "console"))
"""Where the tests keep screenshots of the console's main views (test-results/ is not committed)."""


def require_chromium() -> None:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (the README's test command does)")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageProblems:
    """What went wrong inside a page: uncaught errors, and console errors (a CSP violation is one)."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))


@dataclass
class Console:
    """A running API with its console, and what a test needs to drive it as users do."""

    url: str
    """The HTTP port's base URL (http://127.0.0.1:<port>)."""
    auth: AuthConfig
    grpc: audit_service_pb2_grpc.AuditServiceStub
    channel: grpc.aio.Channel
    publisher: Publisher
    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)

    def token(self, tenant: str = "acme", subject: str = "u-alice", *, admin: bool = True, ttl: int = 600) -> str:
        return mint_token(self.auth, subject=subject, tenant=tenant, admin=admin, ttl_seconds=ttl)

    async def new_page(self, *, timezone: str = "UTC") -> tuple[Page, PageProblems]:
        """A fresh tab (its own session storage), watched for script errors."""
        context = await self.browser.new_context(
            viewport={"width": 1400, "height": 1000}, accept_downloads=True, timezone_id=timezone
        )
        self.contexts.append(context)
        page = await context.new_page()
        problems = PageProblems()
        problems.watch(page)
        return page, problems

    async def signed_in(self, token: str | None = None, query: str = "") -> tuple[Page, PageProblems]:
        """A tab opened on the console (with `query`, e.g. "?preset=7d"), signed in with `token` (an admin of
        acme by default) through the fragment, as the dev stack's link does."""
        page, problems = await self.new_page()
        await page.goto(f"{self.url}/{query}#token={token or self.token()}")
        await page.wait_for_selector("#console:not([hidden])")
        return page, problems

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


async def screenshot(page: Page, name: str) -> Path:
    """Keeps a screenshot of the page as test-results/console/<name>.png."""
    path = screenshot_path(name)
    await page.screenshot(path=str(path), full_page=True)
    return path
