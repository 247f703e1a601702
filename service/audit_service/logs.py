"""Process-wide logging: one line per record, to stderr, as text (the default) or as one JSON object.

Both formats carry the ids of the span that is recording where the record is made, so a log line leads to its
trace: text appends ` trace_id=... span_id=...`, JSON has `trace_id` and `span_id` fields.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

import orjson
from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
"""What could end a text line or drive a terminal (tabs are left alone)."""


def escape_controls(text: str) -> str:
    """`text` with line breaks, ANSI escapes and other control characters written as Python escapes (\\n,
    \\x1b...), so that text from outside (a producer's payload in a dead-letter reason) cannot forge log lines."""
    return _CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the span recording in this context, or None."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class TextFormatter(logging.Formatter):
    """The classic line, with the current trace and span ids appended when a span is recording. The message is one
    line whatever it holds (control characters escaped); only a traceback follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, datefmt=TEXT_DATE_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = current_trace_ids()
        if ids is None:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} trace_id={ids[0]} span_id={ids[1]}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exception (the formatted
    traceback) when there is one, trace_id and span_id when a span is recording."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        ids = current_trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Sends every record to stderr in `log_format` (text or json) from `level` up; NATS's own chatter, and
    httpx's and httpcore's (a line per request, with its URL, whose path may hold a receiver's token), from
    WARNING up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for chatty in ("nats", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(level), logging.WARNING))
