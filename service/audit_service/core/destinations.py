"""Destinations without I/O: validation of every field (errors name it), update masks, secrets kept out of the
JSON form (what the log's change.before/after and the destinations read model hold), and the matcher of a
streaming destination's events.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from audit.v1 import audit_service_pb2
from audit.v1 import destinations_pb2 as pb
from google.protobuf import json_format

from ..errors import InvalidArgumentError
from .alert_rules import DESTINATION_NAME, MAX_QUERY_BYTES, _integral
from .destination_urls import check_url
from .event_filter import UNRESTRICTED, Scope, compile_filter
from .filters import has_control_characters
from .masking import MASK
from .matching import Matcher, compile_matcher
from .query_string import compile_query

KINDS = ("webhook", "http", "splunk_hec", "syslog")
ALERT_KINDS = frozenset({"webhook"})
"""Kinds that receive alerts (of the rules naming them); the others stream the tenant's events."""
SIGNED_KINDS = frozenset({"webhook", "http"})
"""Kinds whose requests are signed with a Standard Webhooks secret (generated when none is given)."""

MAX_DESCRIPTION_BYTES = 1024
MAX_HEADERS = 20
MAX_HEADER_VALUE_BYTES = 1024
MAX_HEC_FIELD_BYTES = 256
MAX_APP_NAME = 48
MAX_CA_PEM_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 1000
DEFAULT_BATCH_EVENTS = 100
DEFAULT_APP_NAME = "audit-log"
DEFAULT_FACILITY = 13  # log audit (RFC 5424, table 1)
MAX_SECRET_BYTES = 1024
MIN_WEBHOOK_SECRET_BYTES = 24
MAX_WEBHOOK_SECRET_BYTES = 64
WEBHOOK_SECRET_PREFIX = "whsec_"

_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
"""Headers the service sets itself (and, for splunk_hec, Authorization: it carries the HEC token)."""
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_APP_NAME = re.compile(r"[\x21-\x7e]{1,48}")

UPDATABLE_FIELDS = (
    "description",
    "webhook",
    "http",
    "splunk_hec",
    "syslog",
    "filter",
    "query",
    "headers",
    "secret",
    "max_batch_events",
)
"""What UpdateDestination may change (update_mask paths); an empty mask means all of them but secret."""


def kind_of(destination: pb.Destination) -> str:
    """webhook, http, splunk_hec or syslog ("" when no target is set)."""
    return destination.WhichOneof("target") or ""


def _byte_length(value: str) -> int:
    return len(value.encode())


def _check_text(value: str, field: str, limit: int) -> None:
    if _byte_length(value) > limit:
        raise InvalidArgumentError(field, f"longer than {limit} bytes")
    if has_control_characters(value):
        raise InvalidArgumentError(field, "contains control characters")


def check_name(name: str, field: str) -> str:
    if not DESTINATION_NAME.fullmatch(name):
        raise InvalidArgumentError(field, f"must match {DESTINATION_NAME.pattern}, got {name[:64]!r}")
    return name


def webhook_secret_bytes(secret: str, field: str) -> bytes:
    """The key of a Standard Webhooks secret ("whsec_" and base64)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise InvalidArgumentError(
            field, f"must start with {WEBHOOK_SECRET_PREFIX!r} and be base64 (Standard Webhooks)"
        )
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(field, f"is not base64 after {WEBHOOK_SECRET_PREFIX!r}") from None
    if not MIN_WEBHOOK_SECRET_BYTES <= len(key) <= MAX_WEBHOOK_SECRET_BYTES:
        raise InvalidArgumentError(
            field, f"must hold {MIN_WEBHOOK_SECRET_BYTES} to {MAX_WEBHOOK_SECRET_BYTES} bytes, got {len(key)}"
        )
    return key


def check_secret(kind: str, secret: str, field: str) -> None:
    """A secret fit for its kind (an empty one is for the caller to generate or refuse)."""
    if not secret:
        return
    if _byte_length(secret) > MAX_SECRET_BYTES:
        raise InvalidArgumentError(field, f"longer than {MAX_SECRET_BYTES} bytes")
    if kind in SIGNED_KINDS:
        webhook_secret_bytes(secret, field)
    elif kind == "splunk_hec":
        if not _PRINTABLE_ASCII.fullmatch(secret) or not secret.strip():
            raise InvalidArgumentError(field, "a HEC token is printable ASCII")
        if secret != secret.strip(" "):  # sent as "Authorization: Splunk <token>", which may not end with a space
            raise InvalidArgumentError(field, "a HEC token may not start or end with a space")
    else:
        raise InvalidArgumentError(field, f"a {kind} destination takes no secret")


def syslog_address(address: str, field: str) -> tuple[str, int]:
    """The host and port of a syslog target's host:port ([v6]:port for IPv6), checked as a URL's would be."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or "/" in address or "@" in address:
        raise InvalidArgumentError(field, f"must be host:port, got {address[:64]!r}")
    checked = check_url(f"https://{address}", field)
    return checked.host, checked.port


def _check_ca_pem(pem: str, field: str) -> None:
    if _byte_length(pem) > MAX_CA_PEM_BYTES:
        raise InvalidArgumentError(field, f"longer than {MAX_CA_PEM_BYTES} bytes")
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as error:
        raise InvalidArgumentError(field, f"is not PEM certificates: {str(error)[:200]}") from None


def _check_target(destination: pb.Destination, kind: str, prefix: str) -> None:
    field = f"{prefix}.{kind}"
    if kind in ("webhook", "http", "splunk_hec"):
        target = getattr(destination, kind)
        check_url(target.url, f"{field}.url")
        if kind == "splunk_hec":
            for name in ("index", "source", "sourcetype"):
                value = getattr(target, name)
                _check_text(value, f"{field}.{name}", MAX_HEC_FIELD_BYTES)
                if value and not _PRINTABLE_ASCII.fullmatch(value):
                    raise InvalidArgumentError(f"{field}.{name}", "must be printable ASCII")
        return
    syslog = destination.syslog
    syslog_address(syslog.address, f"{field}.address")
    if syslog.ca_pem:
        _check_ca_pem(syslog.ca_pem, f"{field}.ca_pem")
    if syslog.server_name:
        _check_text(syslog.server_name, f"{field}.server_name", 253)
        if not re.fullmatch(r"[A-Za-z0-9.-]+", syslog.server_name):
            raise InvalidArgumentError(f"{field}.server_name", "must be a DNS name")
    if syslog.app_name and not _APP_NAME.fullmatch(syslog.app_name):
        raise InvalidArgumentError(f"{field}.app_name", f"must be 1 to {MAX_APP_NAME} printable ASCII characters")
    if not 0 <= syslog.facility <= 23:
        raise InvalidArgumentError(f"{field}.facility", f"must be from 1 to 23 (0: 13), got {syslog.facility}")


def _rename(error: InvalidArgumentError, prefix: str) -> InvalidArgumentError:
    detail = str(error).removeprefix(f"{error.field}: ")
    if error.field == "filter.query":
        return InvalidArgumentError(f"{prefix}.filter.query", detail)
    return InvalidArgumentError(f"{prefix}.{error.field}", detail)


def _check_selector(destination: pb.Destination, kind: str, prefix: str) -> None:
    selector = destination.WhichOneof("selector")
    if selector is None:
        return
    if kind in ALERT_KINDS:
        raise InvalidArgumentError(f"{prefix}.{selector}", "a webhook receives the alerts of its rules: no filter")
    if selector == "filter":
        if destination.filter.tenant and destination.tenant and destination.filter.tenant != destination.tenant:
            raise InvalidArgumentError(f"{prefix}.filter.tenant", "must be empty or the destination's tenant")
        if _byte_length(destination.filter.query) > MAX_QUERY_BYTES:
            raise InvalidArgumentError(f"{prefix}.filter.query", f"longer than {MAX_QUERY_BYTES} bytes")
        try:
            compile_filter(destination.filter, UNRESTRICTED)
        except InvalidArgumentError as error:
            raise _rename(error, prefix) from None
    else:
        if _byte_length(destination.query) > MAX_QUERY_BYTES:
            raise InvalidArgumentError(f"{prefix}.query", f"longer than {MAX_QUERY_BYTES} bytes")
        try:
            compile_query(destination.query)
        except InvalidArgumentError as error:
            detail = str(error).removeprefix(f"{error.field}: ")
            raise InvalidArgumentError(f"{prefix}.query", detail) from None


def _check_headers(headers: Mapping[str, str], kind: str, prefix: str) -> None:
    if not headers:
        return
    if kind == "syslog":
        raise InvalidArgumentError(f"{prefix}.headers", "a syslog destination takes no headers")
    if len(headers) > MAX_HEADERS:
        raise InvalidArgumentError(f"{prefix}.headers", f"more than {MAX_HEADERS}")
    for name, value in sorted(headers.items()):
        field = f"{prefix}.headers[{name[:64]!r}]"
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidArgumentError(field, "a header name is 1 to 64 letters, digits or '-'")
        if name.lower() in _RESERVED_HEADERS or (kind == "splunk_hec" and name.lower() == "authorization"):
            raise InvalidArgumentError(field, "is set by the service")
        if value == MASK:
            raise InvalidArgumentError(
                field, f"is {MASK} (as calls return it): send the real value, or leave headers out of update_mask"
            )
        if _byte_length(value) > MAX_HEADER_VALUE_BYTES or not _PRINTABLE_ASCII.fullmatch(value):
            raise InvalidArgumentError(field, f"a value is at most {MAX_HEADER_VALUE_BYTES} printable ASCII characters")
        if value != value.strip(" "):  # HTTP libraries refuse to send such a value (RFC 9110, section 5.5)
            raise InvalidArgumentError(field, "a value may not start or end with a space")


def validate_destination(destination: pb.Destination, prefix: str = "destination") -> str:
    """Checks every field a client sets (not tenant, times, revision, has_secret, paused); returns the kind.

    A secret is checked when set; whether one is required is the caller's decision (creation generates or
    requires one, an update keeps the stored one).

    Raises:
        InvalidArgumentError: naming the first field at fault, e.g. destination.syslog.ca_pem.
    """
    check_name(destination.name, f"{prefix}.name")
    _check_text(destination.description, f"{prefix}.description", MAX_DESCRIPTION_BYTES)
    kind = kind_of(destination)
    if not kind:
        raise InvalidArgumentError(f"{prefix}.webhook", f"one of {', '.join(KINDS)} is required")
    _check_target(destination, kind, prefix)
    _check_selector(destination, kind, prefix)
    _check_headers(destination.headers, kind, prefix)
    check_secret(kind, destination.secret, f"{prefix}.secret")
    if destination.max_batch_events and kind in ALERT_KINDS:
        raise InvalidArgumentError(f"{prefix}.max_batch_events", "a webhook receives one alert per request")
    if not 0 <= destination.max_batch_events <= MAX_BATCH_EVENTS:
        raise InvalidArgumentError(
            f"{prefix}.max_batch_events", f"must be from 1 to {MAX_BATCH_EVENTS} (0: {DEFAULT_BATCH_EVENTS})"
        )
    return kind


def apply_update(current: pb.Destination, change: pb.Destination, paths: Sequence[str]) -> pb.Destination:
    """The destination with the fields in `paths` taken from `change` (every updatable one but secret when empty).

    Raises:
        InvalidArgumentError: naming update_mask (a path that is not updatable) or the target (another kind).
    """
    for path in paths:
        if path not in UPDATABLE_FIELDS:
            raise InvalidArgumentError(
                "update_mask", f"cannot update {path[:64]!r}; updatable: {', '.join(UPDATABLE_FIELDS)}"
            )
    chosen = paths or [path for path in UPDATABLE_FIELDS if path != "secret"]
    updated = pb.Destination()
    updated.CopyFrom(current)
    kind = kind_of(current)
    for path in chosen:
        if path in KINDS:
            if path != kind and (paths or kind_of(change) == path):
                raise InvalidArgumentError(f"destination.{path}", f"the kind of a destination ({kind}) cannot change")
            if path == kind:
                getattr(updated, kind).CopyFrom(getattr(change, kind))
        elif path == "headers":
            updated.headers.clear()
            updated.headers.update(change.headers)
        elif path not in ("filter", "query"):
            setattr(updated, path, getattr(change, path))
    selector_paths = {"filter", "query"} & set(chosen)
    selected = change.WhichOneof("selector")
    if selected == "filter" and selected in selector_paths:
        updated.filter.CopyFrom(change.filter)
    elif selected == "query" and selected in selector_paths:
        updated.query = change.query
    elif selector_paths:
        updated.ClearField("selector")
    return updated


def destination_to_json(destination: pb.Destination) -> dict[str, Any]:
    """The destination as JSON without its secret and header values (what the log and the read model hold):
    has_secret says whether a secret is set, header values read MASK."""
    public = pb.Destination()
    public.CopyFrom(destination)
    public.has_secret = bool(destination.secret) or destination.has_secret
    public.ClearField("secret")
    _mask_headers(public)
    return json_format.MessageToDict(public, preserving_proto_field_name=True)


def destination_from_json(value: Mapping[str, Any]) -> pb.Destination:
    """The destination from its JSON form (destination_to_json's, or as the log stores it), header values masked:
    a state written before they all were (the log keeps it) is never returned in clear."""
    destination = json_format.ParseDict(_integral(value), pb.Destination(), ignore_unknown_fields=True)
    destination.ClearField("secret")
    _mask_headers(destination)
    return destination


def _mask_headers(destination: pb.Destination) -> None:
    """Replaces every header value with MASK. The names are listed first: assigning to a protobuf map while
    iterating over it skips entries (2-3 of 10 headers were left in clear, in the log too)."""
    for name in list(destination.headers):
        destination.headers[name] = MASK


def destination_filter(destination: pb.Destination) -> audit_service_pb2.EventFilter:
    """The EventFilter a streaming destination selects events with (every event without one)."""
    if destination.WhichOneof("selector") == "query":
        return audit_service_pb2.EventFilter(query=destination.query)
    return destination.filter


def compile_destination_matcher(destination: pb.Destination) -> Matcher:
    """The matcher of a streaming destination's events, scoped to its tenant."""
    return compile_matcher(compile_filter(destination_filter(destination), Scope(tenant=destination.tenant)))


def batch_size(destination: pb.Destination) -> int:
    return destination.max_batch_events or DEFAULT_BATCH_EVENTS
