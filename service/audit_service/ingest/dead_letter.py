"""Dead letters: refused messages go to <prefix>.dead.<reason> with their original bytes and headers."""

from __future__ import annotations

import datetime as dt

from nats.aio.msg import Msg

REASON_HEADER = "Audit-Dead-Reason"
FIELD_HEADER = "Audit-Dead-Field"
DETAIL_HEADER = "Audit-Dead-Detail"
SUBJECT_HEADER = "Audit-Original-Subject"
SEQUENCE_HEADER = "Audit-Original-Stream-Sequence"
MSG_ID_HEADER = "Audit-Original-Msg-Id"
DEAD_AT_HEADER = "Audit-Dead-At"
BODY_OMITTED_HEADER = "Audit-Original-Body-Omitted"
_HEADER_OVERHEAD = 64  # "NATS/1.0" line, separators and framing, generously


def _header_value(text: str, limit: int = 1000) -> str:
    # Header values are one line of text.
    return " ".join(text.split())[:limit]


def dead_letter_headers(msg: Msg, *, reason: str, field: str, detail: str) -> dict[str, str]:
    """Headers of the dead letter: the original ones (Nats-* renamed) plus why and where it came from.

    Its Nats-Msg-Id is derived from the original stream sequence, so a message dead-lettered twice (the worker
    stopped before acknowledging it) is stored once in the dead-letter stream.
    """
    headers = {}
    for key, value in (msg.headers or {}).items():
        if key == "Nats-Msg-Id":
            headers[MSG_ID_HEADER] = value
        elif not key.startswith("Nats-"):
            headers[key] = value
    sequence = msg.metadata.sequence.stream
    headers.update(
        {
            REASON_HEADER: reason,
            FIELD_HEADER: field,
            DETAIL_HEADER: _header_value(detail),
            SUBJECT_HEADER: msg.subject,
            SEQUENCE_HEADER: str(sequence),
            DEAD_AT_HEADER: dt.datetime.now(dt.UTC).isoformat(),
            "Nats-Msg-Id": f"dead-{msg.metadata.stream}-{sequence}",
        }
    )
    return headers


def dead_letter_message(
    msg: Msg, *, reason: str, field: str, detail: str, max_payload: int
) -> tuple[bytes, dict[str, str]]:
    """The dead letter's body and headers: the original bytes, unless they would not fit in one NATS message
    with the added headers; then the body is left out and a header says where the original still is."""
    headers = dead_letter_headers(msg, reason=reason, field=field, detail=detail)
    header_bytes = _HEADER_OVERHEAD + sum(len(key) + len(value) + 4 for key, value in headers.items())
    if len(msg.data) + header_bytes <= max_payload:
        return msg.data, headers
    headers[BODY_OMITTED_HEADER] = (
        f"{len(msg.data)} bytes do not fit; the original is message {msg.metadata.sequence.stream} "
        f"of stream {msg.metadata.stream} until that stream's max age"
    )
    return b"", headers
