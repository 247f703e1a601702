"""The HTTP port's telemetry: for every call over Connect or gRPC-Web, rpc.server.call.duration and a server span,
as the gRPC port's interceptors give its calls, from one connectrpc interceptor rather than in every method.

It is a metadata interceptor placed first, which connectrpc runs before it reads the request and ends after the
call with the error the client gets: a body that does not parse (invalid_argument), one too large
(resource_exhausted), a deadline or a client that went away (canceled) are measured too, as the handler's own
errors are (already Connect errors, api/connect.connect_error). What never reaches a method (an unknown path, an
unsupported content type) is answered before any interceptor, unmeasured, as the gRPC port leaves UNIMPLEMENTED.

Attributes follow the RPC semantic conventions in the version api/rpc_metrics.py follows (v1.44.0, release
candidate, https://github.com/open-telemetry/semantic-conventions/blob/v1.44.0/docs/rpc/connect-rpc.md):
- Connect: rpc.system.name=connectrpc (the deprecated rpc.system spelled it connect_rpc); rpc.response.status_code
  is the Connect error code as on the wire (`unauthenticated`, `not_found`), left out when the call succeeded
  (Connect has no code for success: "conditionally required if available"); error.type is that code for the ones
  the convention counts as server errors (unknown, deadline_exceeded, unimplemented, internal, unavailable,
  data_loss).
- gRPC-Web has no convention of its own: it is gRPC's protocol and status codes over HTTP/1.1, so its calls are
  recorded as the gRPC port's are (rpc.system.name=grpc, status names such as OK, CANCELLED).
The span is named after rpc.method (`audit.v1.AuditService/ListEvents`, rpc-spans.md "Name"), is a child of the
request's W3C traceparent when there is one (the globally configured propagator, as the gRPC instrumentation
does), and has status ERROR exactly when error.type is set (a client's mistake is not the server's error).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..telemetry import metrics
from .rpc_metrics import SERVER_ERRORS, call_attributes

_tracer = trace.get_tracer("audit_service.api.http")

_SERVER_ERRORS = frozenset(Code[code.name] for code in SERVER_ERRORS)
"""The same codes as the gRPC port's: their names are the same in Connect (all but CANCELLED, not among them)."""


def _grpc_status_name(code: Code | None) -> str:
    if code is None:
        return grpc.StatusCode.OK.name
    return grpc.StatusCode.CANCELLED.name if code is Code.CANCELED else code.name


@dataclass
class _Call:
    started: float
    system: str
    method: str
    span: trace.Span
    token: object


class RpcTelemetryInterceptor:
    """A connectrpc MetadataInterceptor: on_start opens the call's server span (current while the handler runs),
    on_end records its duration and ends the span with the final code."""

    async def on_start(self, ctx: RequestContext[Any, Any]) -> _Call:
        headers = ctx.request_headers
        content_type = (headers.get("content-type") or "").lower()
        system = "grpc" if content_type.startswith("application/grpc-web") else "connectrpc"
        method = f"{ctx.method.service_name}/{ctx.method.name}"
        carrier = {key.lower(): value for key, value in headers.items()}
        attributes: dict[str, str | int] = {"rpc.system.name": system, "rpc.method": method}
        host, _, port = (ctx.client_address or "").rpartition(":")
        if host and port.isdigit():
            attributes["network.peer.address"] = host.removeprefix("[").removesuffix("]")
            attributes["network.peer.port"] = int(port)
        span = _tracer.start_span(
            method, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return _Call(time.perf_counter(), system, method, span, token)

    async def on_end(self, call: _Call, ctx: RequestContext[Any, Any], error: Exception | None) -> None:
        if error is None:
            code = None
        elif isinstance(error, ConnectError):
            code = error.code
        elif isinstance(error, asyncio.CancelledError):
            code = Code.CANCELED
        else:  # connectrpc answers what is not a ConnectError as unknown
            code = Code.UNKNOWN
        server_error = code in _SERVER_ERRORS
        status = _grpc_status_name(code) if call.system == "grpc" else (None if code is None else code.value)
        attributes = call_attributes(call.system, call.method, status, server_error)
        metrics.RPC_SERVER_CALL_DURATION.record(time.perf_counter() - call.started, attributes)
        try:
            call.span.set_attributes(attributes)
            if server_error:
                call.span.set_status(Status(StatusCode.ERROR, str(error)))
            call.span.end()
        finally:
            otel_context.detach(call.token)  # type: ignore[arg-type]
