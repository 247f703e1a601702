"""The console's ASGI application: the page at /, its files under /assets/ (shipped in the package: nothing is
loaded from another origin), and the export download (export.py).

Every answer carries a strict Content-Security-Policy: scripts and styles only from this origin (no inline script,
no eval), requests only to this origin, and Trusted Types required, so the page cannot hand a string to an HTML
sink (innerHTML and the like): events are written by other services and may be hostile, and the console renders
each field as text.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..api.servicer import AuditServicer
from ..auth.tokens import TokenVerifier
from .export import ExportDownload

STATIC_PACKAGE = ("audit_service.console", "static")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "frame-src 'self'",  # the hidden frame the export form posts to
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response of the wrapped application."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in names]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self._app(scope, receive, send_with_headers)


def _static_file(name: str) -> str:
    static = StaticFiles(packages=[STATIC_PACKAGE])
    return f"{static.all_directories[0]}/{name}"


def console_application(verifier: TokenVerifier | None, audit: AuditServicer) -> Any:
    """The console, served with the servicer (and the token verifier) of the gRPC port."""
    index = _static_file("index.html")

    async def page(_request: Any) -> FileResponse:
        # Revalidated on every load, so a new release's page never runs with an old script.
        return FileResponse(index, media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            # A bound method: Starlette calls it with the request (an object that is merely callable is taken for an
            # ASGI application).
            Route("/console/export", ExportDownload(verifier, audit).respond, methods=["POST"]),
            Mount("/assets", StaticFiles(packages=[STATIC_PACKAGE])),
        ]
    )
    return SecurityHeaders(app)
