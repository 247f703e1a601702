"""A destination's public JSON (what the log, the read model and every response hold) never carries a header value,
however many headers it has; a stored state that does (written before every value was masked: the log keeps it)
is read back masked."""

from __future__ import annotations

import json

from audit.v1 import destinations_pb2 as dpb
from audit_service.core.destinations import MAX_HEADERS, destination_from_json, destination_to_json
from audit_service.core.masking import MASK


def _with_headers(count: int) -> dpb.Destination:
    destination = dpb.Destination(tenant="acme", name="hooks", webhook=dpb.WebhookTarget(url="https://h.example/"))
    for index in range(count):
        destination.headers[f"X-Header-{index}"] = f"credential-{index}-\U0001f600"
    return destination


def test_every_header_value_is_masked_up_to_the_most_headers_a_destination_takes():
    for count in range(1, MAX_HEADERS + 1):
        public = destination_to_json(_with_headers(count))
        assert public["headers"] == {f"X-Header-{index}": MASK for index in range(count)}
        assert "credential-" not in json.dumps(public, ensure_ascii=False)


def test_a_stored_state_holding_header_values_in_clear_is_read_back_masked():
    stored = destination_to_json(_with_headers(0)) | {
        "headers": {f"X-Header-{index}": f"credential-{index}" for index in range(MAX_HEADERS)}
    }
    read = destination_from_json(stored)
    assert dict(read.headers) == {f"X-Header-{index}": MASK for index in range(MAX_HEADERS)}


def test_the_destination_given_is_left_as_it_was():
    destination = _with_headers(MAX_HEADERS)
    destination_to_json(destination)
    assert dict(destination.headers) == dict(_with_headers(MAX_HEADERS).headers)
