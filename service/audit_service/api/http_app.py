"""The HTTP port's application: the services over Connect and gRPC-Web (api/connect.py) at /audit.v1.*/<Method>,
and the console (console/app.py) at every other path.

Browsers on other origins may call the services only when AUDIT_HTTP_CORS_ORIGINS names them: without it no
answer carries CORS headers, so a page elsewhere can neither read an answer nor send a preflighted call (every
Connect call is one: it sends JSON, or an authorization header).
"""

from __future__ import annotations

from typing import Any

from starlette.middleware.cors import CORSMiddleware

from .connect import ASGIApplication

CORS_ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
)
CORS_EXPOSED_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
SERVICE_PATH_PREFIX = "/audit.v1."


def http_application(
    services: ASGIApplication, console: ASGIApplication, cors_origins: tuple[str, ...] = ()
) -> ASGIApplication:
    """Routes each request by its path: to `services` (with CORS for `cors_origins`, when any) or to `console`."""
    api: Any = services
    if cors_origins:
        api = CORSMiddleware(
            services,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_ALLOWED_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
            max_age=3600,
        )

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # no websockets here; lifespan is off
            return
        if scope.get("path", "").startswith(SERVICE_PATH_PREFIX):
            await api(scope, receive, send)
        else:
            await console(scope, receive, send)

    return application
