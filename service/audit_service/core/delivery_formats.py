r"""What the streaming destinations and alert webhooks send, as bytes. Pure: no I/O, no clock, no randomness
except in new_webhook_secret.

Every form carries each event in the project's one JSON form of an event (core/ndjson.event_json: protobuf's
canonical JSON mapping, camelCase, int64 as strings, RFC 3339 timestamps), with its position and event id:
delivery is at least once, so a receiver de-duplicates by eventId and orders by position.

  * HTTP batch: {"destination": "<id>", "events": [<event>, ...]} (application/json).
  * Splunk HTTP Event Collector (POST /services/collector/event): one JSON object per event, concatenated
    (separated by a newline, which HEC accepts between objects), each
    {"time": <epoch seconds with microseconds>, "host", "source", "sourcetype", "index" (left out when empty),
    "event": <event>}. time is occurred_at, so Splunk's _time is when the action happened.
  * Syslog (RFC 5424), one message per event, framed by octet counting (RFC 6587 3.4.1, which RFC 5425 makes
    the framing of syslog over TLS):

        <PRI>1 2026-11-24T10:00:00.000000Z host app - api_key.create [audit@32473 tenant="acme" ...] BOM{...}

    PRI = facility * 8 + severity (6 informational for SUCCESS, 4 warning for FAILURE and DENIED, as the log
    export's info/warn); the header fields are cut to the RFC's lengths and hold PRINTUSASCII only (others are
    replaced by "_"; an empty one is the NILVALUE "-"); MSGID is the action. The structured data element's
    SD-ID audit@32473 is a private one under enterprise number 32473, which IANA reserves for documentation
    (RFC 5612): a deployment with its own number may want its own, but receivers only need it stable. Its
    PARAM-VALUEs are UTF-8 with `"`, `\` and `]` escaped by a backslash (RFC 5424 6.3.3). MSG is the UTF-8 BOM
    and the event's JSON.
  * Standard Webhooks signatures (https://www.standardwebhooks.com, the form Svix and others verify):
    webhook-id, webhook-timestamp and webhook-signature "v1,<base64 HMAC-SHA256 of 'id.timestamp.body'>",
    keyed by the base64 part of a "whsec_" secret. Signed by the `standardwebhooks` reference library (no
    dependencies), so what we send is what receivers' copies of it verify.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
from collections.abc import Sequence

import orjson
from audit.v1 import event_pb2
from standardwebhooks.webhooks import Webhook

from .export_formats import utc_iso
from .ndjson import event_json

SD_ID = "audit@32473"
"""The structured data element of a syslog message. 32473 is the private enterprise number that RFC 5612
reserves for documentation and examples."""

SEVERITY_WARNING = 4
SEVERITY_INFORMATIONAL = 6
_WARN_OUTCOMES = frozenset({event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED})

_HOSTNAME_MAX, _APP_NAME_MAX, _MSGID_MAX = 255, 48, 32
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_SD_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})
_BOM = b"\xef\xbb\xbf"
WEBHOOK_SECRET_PREFIX = "whsec_"


def _occurred_micros(event: event_pb2.AuditEvent) -> tuple[int, int]:
    """occurred_at as (seconds, microseconds); nanoseconds below a microsecond are dropped, as the log does."""
    return event.occurred_at.seconds, event.occurred_at.nanos // 1000


def http_batch_body(events: Sequence[event_pb2.AuditEvent], destination: str) -> bytes:
    """The body of one HTTP batch: {"destination": ..., "events": [...]} in position order as given."""
    return orjson.dumps({"destination": destination, "events": [event_json(event) for event in events]})


def hec_time(event: event_pb2.AuditEvent) -> bytes:
    """occurred_at as HEC's time, a JSON number: epoch seconds with the microseconds as a fraction. Written as
    text: a float holds every microsecond only until 2242 (2**33 s)."""
    seconds, micros = _occurred_micros(event)
    return b"%d.%06d" % (seconds, micros)


def splunk_hec_body(
    events: Sequence[event_pb2.AuditEvent], *, index: str, source: str, sourcetype: str, host: str
) -> bytes:
    """A Splunk HEC batch: one event object per event, newline-separated."""
    lines = []
    for event in events:
        wrapped: dict[str, object] = {"host": host, "source": source, "sourcetype": sourcetype}
        if index:
            wrapped["index"] = index
        wrapped["event"] = event_json(event)
        lines.append(b'{"time":' + hec_time(event) + b"," + orjson.dumps(wrapped)[1:])
    return b"\n".join(lines)


def syslog_severity(outcome: int) -> int:
    """4 (warning) for FAILURE and DENIED, 6 (informational) otherwise."""
    return SEVERITY_WARNING if outcome in _WARN_OUTCOMES else SEVERITY_INFORMATIONAL


def header_field(value: str, max_length: int) -> str:
    """A syslog header field: PRINTUSASCII only (others become "_"), at most max_length, "-" when empty."""
    return _NOT_PRINTUSASCII.sub("_", value)[:max_length] or "-"


def sd_param_value(value: str) -> str:
    """A PARAM-VALUE with `"`, `\\` and `]` escaped (RFC 5424 6.3.3)."""
    return value.translate(_SD_ESCAPES)


def _actor(event: event_pb2.AuditEvent) -> str:
    """As the exports name an actor: slug, else email, else id, else display name."""
    actor = event.actor
    return actor.slug or actor.email or actor.id or actor.display_name


def _resource(event: event_pb2.AuditEvent) -> str:
    """type/id (type/name when it has no id); empty without a resource."""
    if not event.HasField("resource"):
        return ""
    resource = event.resource
    return f"{resource.type}/{resource.id or resource.name}"


def syslog_message(event: event_pb2.AuditEvent, *, app_name: str, hostname: str, facility: int) -> bytes:
    """One event as an RFC 5424 message (without framing)."""
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0..23, not {facility}")
    seconds, micros = _occurred_micros(event)
    timestamp = utc_iso(dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=micros))
    params = (
        ("tenant", event.tenant),
        ("event_id", event.event_id),
        ("position", str(event.position)),
        ("actor", _actor(event)),
        ("resource", _resource(event)),
    )
    structured = "[" + SD_ID + "".join(f' {name}="{sd_param_value(value)}"' for name, value in params if value) + "]"
    header = " ".join(
        (
            f"<{facility * 8 + syslog_severity(event.outcome)}>1",
            timestamp,
            header_field(hostname, _HOSTNAME_MAX),
            header_field(app_name, _APP_NAME_MAX),
            "-",
            header_field(event.action, _MSGID_MAX),
        )
    )
    return f"{header} {structured} ".encode() + _BOM + orjson.dumps(event_json(event))


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 framing: the message's length in bytes, a space, the message."""
    return b"%d %s" % (len(message), message)


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of a request.

    Args:
        secret: "whsec_" and the base64 of the key (new_webhook_secret).
        msg_id: the message's id, the same on every retry of it (receivers de-duplicate by it).
        timestamp: when this attempt is sent, in epoch seconds (a fresh one per attempt: receivers refuse old
            ones to stop replays).
        body: the request body exactly as sent.
    """
    signature = Webhook(secret).sign(msg_id, dt.datetime.fromtimestamp(timestamp, dt.UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def new_webhook_secret() -> str:
    """A fresh signing secret: "whsec_" and the base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
