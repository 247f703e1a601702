"""rpc.server.call.duration for every call the server handles, as an interceptor (the outermost one, so it sees
the status the error mapper and authentication chose).

Attributes follow the RPC semantic conventions (release candidate): rpc.system.name=grpc, rpc.method as
`package.Service/Method`, rpc.response.status_code as the status name, and error.type (the status name) for the
codes the gRPC conventions count as server errors. A streaming call is measured until its stream ends, so it is
counted then, with the status it ended with (CANCELLED when the client went away).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from ..telemetry import metrics

SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""Codes that make a server call an error (semantic conventions for gRPC, server side)."""


def call_attributes(system: str, method: str, status: str | None, server_error: bool) -> dict[str, str]:
    """The attributes of one call of rpc.server.call.duration (and of its server span): `system` for
    rpc.system.name, `method` as `package.Service/Method`, `status` for rpc.response.status_code (left out when
    None: the system has no code for it), and error.type (the status) when it is a server error."""
    attributes = {"rpc.system.name": system, "rpc.method": method}
    if status is not None:
        attributes["rpc.response.status_code"] = status
        if server_error:
            attributes["error.type"] = status
    return attributes


class _Method:
    """The attributes of one method's calls, by final status: built once per method and status."""

    def __init__(self, full_method: str) -> None:
        self._method = full_method.lstrip("/")
        self._by_code: dict[grpc.StatusCode, dict[str, str]] = {}

    def record(self, started: float, code: grpc.StatusCode) -> None:
        attributes = self._by_code.get(code)
        if attributes is None:
            attributes = call_attributes("grpc", self._method, code.name, code in SERVER_ERRORS)
            self._by_code[code] = attributes
        metrics.RPC_SERVER_CALL_DURATION.record(time.perf_counter() - started, attributes)


def _final_code(context: aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: what the handler or an interceptor set, else what the error implies."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if error is not None:
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


def _measure_coroutine(behavior: Callable[..., Awaitable[Any]], method: _Method) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: aio.ServicerContext) -> Any:
        started, error = time.perf_counter(), None
        try:
            return await behavior(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            method.record(started, _final_code(context, error))

    return wrapper


def _measure_stream(behavior: Callable[..., AsyncIterator[Any]], method: _Method) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        recorded = False

        def record(error: BaseException | None) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                method.record(started, _final_code(context, error))

        # grpc does not close a handler's generator when the call ends mid-write (the client went away): the
        # call's end is recorded then, by this callback, with CANCELLED unless a status was set.
        context.add_done_callback(lambda _: record(asyncio.CancelledError()))
        error = None
        try:
            async for response in behavior(request, context):
                yield response
        except BaseException as raised:
            error = raised
            raise
        finally:
            record(error)

    return wrapper


def _measure(behavior: Callable[..., Any], method: _Method) -> Callable[..., Any]:
    # Async generators yield their responses; coroutines return one or write them with context.write().
    if inspect.isasyncgenfunction(behavior):
        return _measure_stream(behavior, method)
    return _measure_coroutine(behavior, method)


class RpcMetricsInterceptor(aio.ServerInterceptor):
    """Records rpc.server.call.duration for every call of a registered method."""

    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # not a method of this server: grpc answers UNIMPLEMENTED, unmeasured
            return handler
        name = handler_call_details.method
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = _Method(name)
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_measure(handler.unary_unary, method), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_measure(handler.unary_stream, method), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_measure(handler.stream_unary, method), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_measure(handler.stream_stream, method), **serializers)
        return handler
