"""The one place where failures become gRPC statuses: an interceptor around every RPC.

Domain errors map to their codes with their message; a statement over the query time limit is
DEADLINE_EXCEEDED; an unreachable database is UNAVAILABLE; anything else is logged with its traceback here
and reaches the client as INTERNAL with a reference, never a trace.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from ..errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ShuttingDownError,
    UnauthenticatedError,
    UnavailableError,
)
from ..store.pool import CONNECTION_FAILURES

log = logging.getLogger(__name__)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for an error."""
    if isinstance(error, InvalidArgumentError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED, str(error)
    if isinstance(error, PermissionDeniedError):
        return grpc.StatusCode.PERMISSION_DENIED, str(error)
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, AbortedError):
        return grpc.StatusCode.ABORTED, str(error)
    if isinstance(error, AlreadyExistsError):
        return grpc.StatusCode.ALREADY_EXISTS, str(error)
    if isinstance(error, FailedPreconditionError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    # A statement over AUDIT_QUERY_TIMEOUT_SECONDS (before OSError, TimeoutError's base), or cancelled by the server:
    # its statement_timeout, an operator's pg_cancel_backend (SQLSTATE 57014), as ingest/storage_errors.timed_out.
    if isinstance(error, TimeoutError | asyncpg.QueryCanceledError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, (
            "the query ran longer than the service allows and was cancelled; narrow the filter "
            "(a shorter time range, an actor or a resource) and retry"
        )
    if isinstance(error, ShuttingDownError):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, ResourceExhaustedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, (UnavailableError, *CONNECTION_FAILURES)):
        return grpc.StatusCode.UNAVAILABLE, "the audit log database is unavailable; retry later"
    reference = uuid.uuid4().hex[:12]
    log.error("internal error (ref %s)", reference, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error (ref {reference})"


Deserializer = Callable[[bytes], Any] | None


def _parse(deserializer: Deserializer, raw: bytes) -> Any:
    """The request message, parsed here rather than by grpc, which answers a malformed one with UNKNOWN."""
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except DecodeError as error:
        raise InvalidArgumentError("request", f"{error} (string fields must be valid UTF-8)") from None


def _wrap_coroutine(
    behavior: Callable[..., Awaitable[Any]], deserializer: Deserializer
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(raw: bytes, context: aio.ServicerContext) -> Any:
        try:
            return await behavior(_parse(deserializer, raw), context)
        except aio.AbortError:
            raise
        except Exception as error:
            await context.abort(*status_for(error))

    return wrapper


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], deserializer: Deserializer
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(raw: bytes, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(_parse(deserializer, raw), context):
                yield response
        except aio.AbortError:
            raise
        except Exception as error:
            await context.abort(*status_for(error))

    return wrapper


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Maps exceptions escaping any RPC handler, and requests that do not parse, to a gRPC status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        # The wrappers get the request's bytes (no deserializer here) and parse them themselves.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_coroutine(handler.unary_unary, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            behavior, deserializer = handler.unary_stream, handler.request_deserializer
            # Async generators yield their responses; coroutines (grpc's Health.Watch) use context.write().
            wrapped = (
                _wrap_stream(behavior, deserializer)
                if inspect.isasyncgenfunction(behavior)
                else _wrap_coroutine(behavior, deserializer)
            )
            return grpc.unary_stream_rpc_method_handler(wrapped, response_serializer=handler.response_serializer)
        return handler
