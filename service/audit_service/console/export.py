"""The console's Export button: ExportEvents as a file download the browser streams to disk.

A browser saves a response to disk as it arrives only when it navigates to it, and a navigation cannot carry an
authorization header: the console posts a form (to a hidden frame) with the token and the request in its body,
never in the URL. The call then goes through the gRPC port's servicer exactly as a Connect call does (the same
authentication, access rules and error mapping); its chunks are written to the response as the servicer yields
them, so nothing is held beyond one chunk.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import orjson
from audit.v1 import audit_service_pb2 as pb
from connectrpc.code import Code
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..api.auth import authenticate
from ..api.connect import HttpCallContext, connect_error
from ..api.servicer import AuditServicer
from ..auth.tokens import TokenVerifier
from ..errors import InvalidArgumentError, ResourceExhaustedError

MAX_FORM_BYTES = 64 * 1024
"""Largest form the export reads: a token and an ExportEventsRequest in JSON are a few KiB."""

_FILES = {
    pb.EXPORT_FORMAT_CSV: ("text/csv; charset=utf-8", "csv"),
    pb.EXPORT_FORMAT_NDJSON: ("application/x-ndjson", "ndjson"),
    pb.EXPORT_FORMAT_LOG_LINES: ("text/plain; charset=utf-8", "log"),
}

# The HTTP statuses of the Connect protocol's error codes (connectrpc keeps its table private).
_HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.CANCELED: 499,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}


def error_response(error: BaseException) -> Response:
    """The error of a download, as a Connect unary error (JSON {code, message}, its HTTP status): the console reads
    it from the frame it posted to and shows the message."""
    connect = connect_error(error)
    body = orjson.dumps({"code": connect.code.value, "message": connect.message})
    return Response(body, status_code=_HTTP_STATUS.get(connect.code, 500), media_type="application/json")


async def _read_form(request: Request) -> dict[str, str]:
    """The form's fields (the last value of each).

    Raises:
        ResourceExhaustedError: the body is larger than MAX_FORM_BYTES.
        InvalidArgumentError: it is not a UTF-8 form.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ResourceExhaustedError(f"the export form is larger than {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidArgumentError("form", f"not a UTF-8 form: {error}") from None
    return {name: values[-1] for name, values in fields.items()}


def _export_request(fields: dict[str, str]) -> pb.ExportEventsRequest:
    try:
        return json_format.Parse(fields.get("request", ""), pb.ExportEventsRequest())
    except json_format.ParseError as error:
        raise InvalidArgumentError("request", f"not an ExportEventsRequest in JSON: {error}") from None


class ExportDownload:
    """POST /console/export (form fields `token` and `request`): the export as an attachment."""

    def __init__(self, verifier: TokenVerifier | None, audit: AuditServicer) -> None:
        self._verifier = verifier
        self._audit = audit

    async def respond(self, request: Request) -> Response:
        call: HttpCallContext | None = None
        try:
            form = await _read_form(request)
            token = form.get("token", "")
            peer = f"{request.client.host}:{request.client.port}" if request.client else ""
            call = HttpCallContext([("authorization", f"Bearer {token}")] if token else [], peer)
            authenticate(self._verifier, call)  # type: ignore[arg-type]
            export_request = _export_request(form)
            chunks = self._audit.ExportEvents(export_request, call)  # type: ignore[arg-type]
            # The first chunk before the response starts: a request the servicer refuses is an error status.
            first = await anext(chunks, None)
        except Exception as error:
            if call is not None:
                call.end()
            return error_response(error)
        media_type, extension = _FILES[export_request.format]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "content-disposition": f'attachment; filename="audit-events-{stamp}.{extension}"',
            "cache-control": "no-store",
        }
        return StreamingResponse(_data(first, chunks, call), media_type=media_type, headers=headers)


async def _data(
    first: pb.ExportEventsResponse | None, chunks: AsyncIterator[Any], call: HttpCallContext
) -> AsyncIterator[bytes]:
    """The export's bytes. An error after the first chunk ends the response without its last chunk, so the browser
    marks the download failed rather than keeping a file that looks whole."""
    try:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            if first is not None:
                yield first.data
            async for chunk in chunks:
                yield chunk.data
    finally:
        call.end()
