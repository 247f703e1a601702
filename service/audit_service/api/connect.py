"""The HTTP door: AuditService over the Connect protocol (JSON or binary, unary and server streaming) and gRPC-Web,
served by the Connect project's runtime (connectrpc) as an ASGI application.

Nothing here answers an RPC: each call is handed to the gRPC port's AuditServicer, after the same authentication
(api/auth.authenticate with the same TokenVerifier), and whatever it raises becomes the Connect code of the same
name through the same mapping (api/errors.status_for). The runtime itself answers what never reaches a handler:
an unknown path (404), an unknown content type (415), a body that does not parse (invalid_argument), one larger
than MAX_REQUEST_BYTES (resource_exhausted).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1.audit_service_connect import AuditServiceASGIApplication
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import json_format
from google.protobuf.message import Message

from ..auth.tokens import TokenVerifier
from .auth import authenticate
from .errors import status_for
from .servicer import AuditServicer

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest request message the HTTP port reads: what a gRPC server accepts by default, so both doors refuse the
same requests (resource_exhausted)."""

ASGIApplication = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

_REQ = TypeVar("_REQ")
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

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        self._metadata = tuple((key.lower(), value) for key, value in ctx.request_headers.allitems())
        self._done_callbacks: list[Callable[[Any], object]] = []
        self._peer = ctx.client_address or ""

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


class ConnectAuditService:
    """The Connect AuditService (audit.v1.audit_service_connect.AuditService) in front of the gRPC servicer."""

    def __init__(self, servicer: AuditServicer, verifier: TokenVerifier | None) -> None:
        self._servicer = servicer
        self._verifier = verifier

    async def _unary(
        self, rpc: Callable[[_REQ, Any], Awaitable[_RES]], request: _REQ, ctx: RequestContext[Any, Any]
    ) -> _RES:
        call = HttpCallContext(ctx)
        try:
            authenticate(self._verifier, call)  # type: ignore[arg-type]
            return await rpc(request, call)
        except Exception as error:
            raise connect_error(error) from None
        finally:
            call.end()

    async def _stream(
        self, rpc: Callable[[_REQ, Any], AsyncIterator[_RES]], request: _REQ, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[_RES]:
        call = HttpCallContext(ctx)
        try:
            authenticate(self._verifier, call)  # type: ignore[arg-type]
            async with contextlib.aclosing(rpc(request, call)) as responses:
                async for response in responses:
                    yield response
        except Exception as error:
            raise connect_error(error) from None
        finally:
            call.end()

    async def list_events(self, request: pb.ListEventsRequest, ctx: RequestContext[Any, Any]) -> pb.ListEventsResponse:
        return await self._unary(self._servicer.ListEvents, request, ctx)

    async def get_event(self, request: pb.GetEventRequest, ctx: RequestContext[Any, Any]) -> pb.GetEventResponse:
        return await self._unary(self._servicer.GetEvent, request, ctx)

    async def list_resource_history(
        self, request: pb.ListResourceHistoryRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListResourceHistoryResponse:
        return await self._unary(self._servicer.ListResourceHistory, request, ctx)

    def export_events(
        self, request: pb.ExportEventsRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        return self._stream(self._servicer.ExportEvents, request, ctx)

    async def verify_chain(
        self, request: pb.VerifyChainRequest, ctx: RequestContext[Any, Any]
    ) -> pb.VerifyChainResponse:
        return await self._unary(self._servicer.VerifyChain, request, ctx)

    async def count_events(
        self, request: pb.CountEventsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CountEventsResponse:
        return await self._unary(self._servicer.CountEvents, request, ctx)

    def tail_events(
        self, request: pb.TailEventsRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.TailEventsResponse]:
        return self._stream(self._servicer.TailEvents, request, ctx)


class CompactJsonCodec:
    """connectrpc's protobuf JSON codec (a connectrpc.codec.Codec), writing each message on one line: its own
    indents by 2, which makes pages larger and a stream of messages (curl | a line reader) harder to read."""

    _reader = google_protobuf_json_codec()

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


def connect_application(servicer: AuditServicer, verifier: TokenVerifier | None) -> ASGIApplication:
    """The ASGI application of the HTTP port: AuditService at /audit.v1.AuditService/<Method>."""
    connect = AuditServiceASGIApplication(
        ConnectAuditService(servicer, verifier),
        read_max_bytes=MAX_REQUEST_BYTES,
        codecs=(google_protobuf_binary_codec(), CompactJsonCodec()),
    )

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # connectrpc raises (a traceback in the log, an empty answer) for gRPC on a server without trailers, such
        # as uvicorn: the client gets the HTTP answer to a content type this port does not serve instead.
        if scope["type"] == "http" and _is_grpc(scope) and "http.response.trailers" not in scope.get("extensions", {}):
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            await send({"type": "http.response.start", "status": 415, "headers": headers})
            await send({"type": "http.response.body", "body": _GRPC_WITHOUT_TRAILERS})
            return
        await connect(scope, receive, send)

    return application
