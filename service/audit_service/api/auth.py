"""Authentication of every AuditService and AlertRuleService call, as an interceptor: the verified caller is put
in a context variable for the servicer (health and reflection stay open, for probes and grpcurl's list/describe)."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from ..auth.tokens import Principal, TokenVerifier
from ..errors import UnauthenticatedError

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("audit_caller")
_BEARER = "bearer "


def current_caller() -> Principal | None:
    """The verified caller of the current RPC; None when authentication is disabled.

    Raises:
        LookupError: outside an authenticated call (a wiring bug: fail closed).
    """
    return _caller.get()


def authenticate(verifier: TokenVerifier | None, context: aio.ServicerContext) -> None:
    """Verifies the call's bearer token and makes its caller current_caller() (None when verifier is None: no
    authentication). The gRPC port's interceptor and the HTTP port's adapter (api/connect.py) both call this.

    Raises:
        UnauthenticatedError: no token, a malformed header, or a token the verifier refuses.
    """
    _caller.set(None if verifier is None else verifier.verify(_bearer_token(context)))


def _bearer_token(context: aio.ServicerContext) -> str:
    values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
    if not values:
        raise UnauthenticatedError("missing authorization metadata: send 'authorization: Bearer <token>'")
    if len(values) > 1:
        raise UnauthenticatedError("more than one authorization header")
    value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
    if not value[: len(_BEARER)].lower() == _BEARER or not value[len(_BEARER) :].strip():
        raise UnauthenticatedError("authorization metadata must be 'Bearer <token>'")
    return value[len(_BEARER) :].strip()


class AuthInterceptor(aio.ServerInterceptor):
    """Verifies the bearer token of calls to `protected_services` (or lets everyone in when verifier is None)."""

    def __init__(self, verifier: TokenVerifier | None, *protected_services: str) -> None:
        self._verifier = verifier
        self._prefixes = tuple(f"/{service}/" for service in protected_services)

    def _authenticate(self, context: aio.ServicerContext) -> None:
        authenticate(self._verifier, context)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_behavior(request: Any, context: aio.ServicerContext) -> Any:
                self._authenticate(context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            stream = handler.unary_stream

            async def stream_behavior(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                self._authenticate(context)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{handler_call_details.method}: unsupported handler kind for authentication")
