"""The HTTP door: AuditService, AlertRuleService and DestinationService over the Connect protocol (JSON or
binary, unary and server streaming) and gRPC-Web, served by the Connect project's runtime (connectrpc) as an ASGI
application.

Nothing here answers an RPC: each call is handed to the gRPC port's servicer of its service, after the same
authentication (api/auth.authenticate with the same TokenVerifier), and whatever it raises becomes the Connect code
of the same name through the same mapping (api/errors.status_for). The runtime itself answers what never reaches
a handler: an unknown path (404), an unknown content type (415), a body that does not parse (invalid_argument),
one larger than MAX_REQUEST_BYTES (resource_exhausted). Every call that reaches a method is measured and traced
as on the gRPC port (api/http_telemetry.py).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
import orjson
from audit.v1 import alert_rules_pb2 as alert_rules_pb
from audit.v1 import audit_service_pb2 as audit_pb
from audit.v1 import destinations_pb2 as destinations_pb
from audit.v1.alert_rules_connect import AlertRuleService, AlertRuleServiceASGIApplication
from audit.v1.audit_service_connect import AuditService, AuditServiceASGIApplication
from audit.v1.destinations_connect import DestinationService, DestinationServiceASGIApplication
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from ..auth.tokens import TokenVerifier
from .alert_rules import AlertRuleServicer
from .auth import authenticate
from .destinations import DestinationServicer
from .errors import status_for
from .http_telemetry import RpcTelemetryInterceptor
from .servicer import AuditServicer

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest request message the HTTP port reads: what a gRPC server accepts by default, so both doors refuse the
same requests (resource_exhausted)."""

ASGIApplication = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

_RES = TypeVar("_RES")


def connect_error(error: BaseException) -> ConnectError:
    """The Connect error a client of the HTTP port gets for an error: the gRPC port's status, by its name."""
    status, message = status_for(error)
    code = Code.CANCELED if status is grpc.StatusCode.CANCELLED else Code[status.name]
    return ConnectError(code, message)


class HttpCallContext:
    """What AuditServicer and authentication use of a grpc.aio.ServicerContext, for a call that came over HTTP:
    the request headers as invocation metadata, and callbacks run when the call ends (a tail leaves the live feed
    there)."""

    def __init__(self, headers: Iterable[tuple[str, str]], peer: str = "") -> None:
        self._metadata = tuple((key.lower(), value) for key, value in headers)
        self._done_callbacks: list[Callable[[Any], object]] = []
        self._peer = peer

    @classmethod
    def of(cls, ctx: RequestContext[Any, Any]) -> HttpCallContext:
        """The context of a call connectrpc hands to a method."""
        return cls(ctx.request_headers.allitems(), ctx.client_address or "")

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def add_done_callback(self, callback: Callable[[Any], object]) -> None:
        self._done_callbacks.append(callback)

    def end(self) -> None:
        """Runs the done callbacks once, however the call ended."""
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(self)


class ConnectService:
    """The Connect form of a gRPC servicer, for the application connectrpc generates for its service: one
    snake_case method per RPC of the service descriptor (list_events for ListEvents), which authenticates the call,
    hands it to the servicer's method and turns what it raises into a Connect error. One adapter serves every
    service, so no RPC can be added to the gRPC port and forgotten on this one.

    Raises (constructor):
        TypeError: the generated Protocol does not name an RPC as expected (stubs and descriptor out of step).
    """

    def __init__(
        self, servicer: object, verifier: TokenVerifier | None, service: ServiceDescriptor, protocol: type
    ) -> None:
        self._verifier = verifier
        for method in service.methods:
            name = _snake_case(method.name)
            if not callable(getattr(protocol, name, None)):
                raise TypeError(f"{protocol.__name__} has no {name} for {service.full_name}.{method.name}")
            rpc = getattr(servicer, method.name)
            setattr(self, name, self._stream_of(rpc) if method.server_streaming else self._unary_of(rpc))

    def _unary_of(
        self, rpc: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]:
        async def unary(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            call = HttpCallContext.of(ctx)
            try:
                authenticate(self._verifier, call)  # type: ignore[arg-type]
                return await rpc(request, call)
            except Exception as error:
                raise connect_error(error) from None
            finally:
                call.end()

        return unary

    def _stream_of(
        self, rpc: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]:
        async def stream(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
            call = HttpCallContext.of(ctx)
            try:
                authenticate(self._verifier, call)  # type: ignore[arg-type]
                async with contextlib.aclosing(rpc(request, call)) as responses:  # type: ignore[type-var]
                    async for response in responses:
                        yield response
            except Exception as error:
                raise connect_error(error) from None
            finally:
                call.end()

        return stream


def _snake_case(method: str) -> str:
    """The name protoc-gen-connectrpc gives an RPC's method: ListAlertRules -> list_alert_rules."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()


class CompactJsonCodec:
    """connectrpc's protobuf JSON codec (a connectrpc.codec.Codec), writing each message on one line: its own
    indents by 2, which makes pages larger and a stream of messages (curl | a line reader) harder to read."""

    # Unknown fields and enum values are refused (invalid_argument naming them), as ProtoJSON parsers do by default:
    # a misspelled filter field ignored would widen the filter silently.
    _reader = google_protobuf_json_codec(ignore_unknown_fields=False)

    def name(self) -> str:
        return self._reader.name()

    def encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[_RES]) -> _RES:
        return self._reader.decode(data, message_class)


_GRPC_WITHOUT_TRAILERS = (
    b"gRPC needs HTTP/2 trailers, which this port does not send: call the gRPC port (AUDIT_GRPC_ADDRESS), or use "
    b"Connect or gRPC-Web here\n"
)


def _is_grpc(scope: dict[str, Any]) -> bool:
    content_type = next((value for name, value in scope.get("headers", ()) if name.lower() == b"content-type"), b"")
    content_type = content_type.split(b";")[0].strip().lower()
    return content_type == b"application/grpc" or content_type.startswith(b"application/grpc+")


def _undecodable_header(scope: dict[str, Any]) -> str | None:
    """The name of the first request header whose value is not UTF-8 (connectrpc decodes every header, and fails
    on one with an internal error), or None."""
    for name, value in scope.get("headers", ()):
        try:
            value.decode()
        except UnicodeDecodeError:
            return name.decode("latin-1").lower()
    return None


async def _send_header_error(send: Any, header: str) -> None:
    """A Connect error for a header that is not UTF-8: unauthenticated for the token's header (a bearer token is
    ASCII), invalid_argument for any other. The value is not repeated: it may be a token."""
    code, status = (Code.UNAUTHENTICATED, 401) if header == "authorization" else (Code.INVALID_ARGUMENT, 400)
    body = orjson.dumps({"code": code.value, "message": f"the {header} header is not UTF-8"})
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def connect_application(
    verifier: TokenVerifier | None,
    audit: AuditServicer,
    alert_rules: AlertRuleServicer,
    destinations: DestinationServicer,
) -> ASGIApplication:
    """The ASGI application of the HTTP port: each service at /<service>/<Method> (/audit.v1.AuditService/ListEvents),
    handled by the servicer the gRPC port uses."""

    # The only interceptor, so the first: it sees every call that reaches a method, however it ends.
    telemetry = RpcTelemetryInterceptor()

    def served(application: Any, servicer: object, descriptor: Any, service: str, protocol: type) -> Any:
        return application(
            ConnectService(servicer, verifier, descriptor.services_by_name[service], protocol),
            interceptors=(telemetry,),
            read_max_bytes=MAX_REQUEST_BYTES,
            codecs=(google_protobuf_binary_codec(), CompactJsonCodec()),
        )

    services = (
        served(AuditServiceASGIApplication, audit, audit_pb.DESCRIPTOR, "AuditService", AuditService),
        served(
            AlertRuleServiceASGIApplication,
            alert_rules,
            alert_rules_pb.DESCRIPTOR,
            "AlertRuleService",
            AlertRuleService,
        ),
        served(
            DestinationServiceASGIApplication,
            destinations,
            destinations_pb.DESCRIPTOR,
            "DestinationService",
            DestinationService,
        ),
    )
    by_path = {service.path: service for service in services}
    # Any of them answers a path of no service (404), as connectrpc does for an unknown method.
    fallback = services[0]

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # connectrpc raises (a traceback in the log, an empty answer) for gRPC on a server without trailers, such
        # as uvicorn: the client gets the HTTP answer to a content type this port does not serve instead.
        if scope["type"] == "http" and _is_grpc(scope) and "http.response.trailers" not in scope.get("extensions", {}):
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            await send({"type": "http.response.start", "status": 415, "headers": headers})
            await send({"type": "http.response.body", "body": _GRPC_WITHOUT_TRAILERS})
            return
        if scope["type"] == "http" and (header := _undecodable_header(scope)) is not None:
            await _send_header_error(send, header)
            return
        service = "/" + scope.get("path", "").lstrip("/").split("/", 1)[0]
        await by_path.get(service, fallback)(scope, receive, send)

    return application
