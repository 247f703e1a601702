"""NDJSON lines carry everything the chain hash covers: read back, they give the same canonical bytes."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from audit_service.core.ndjson import event_line, sealed_from_line
from audit_service.core.records import GENESIS_HASH, LOG_COLUMNS, chain_hash, seal_canonical

from ..factories import content_of, make_event, stamp

RECORDED_AT = dt.datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize("revision", [None, 3])
def test_a_line_reads_back_to_the_bytes_its_hash_covers(revision: int | None) -> None:
    event = stamp(make_event("acme"))
    event.metadata.update({"count": 3, "ratio": 0.1, "nested": {"list": [1, "two", None, True]}})
    canonical, digest, row = seal_canonical(41, RECORDED_AT, content_of(event), GENESIS_HASH, revision)

    line = event_line(dict(zip(LOG_COLUMNS, row, strict=True)))
    sealed = sealed_from_line(line)

    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert sealed.canonical == canonical
    assert chain_hash(sealed.prev_hash, sealed.canonical) == sealed.hash == digest
    assert (sealed.tenant, sealed.position) == ("acme", 41)
    parsed = orjson.loads(line)
    assert parsed["position"] == "41" and parsed["hash"] == digest.hex()
    assert parsed.get("streamRevision") == (None if revision is None else "3")


def test_an_altered_line_no_longer_matches_its_hash() -> None:
    event = stamp(make_event("acme"))
    _, digest, row = seal_canonical(7, RECORDED_AT, content_of(event), GENESIS_HASH)
    line = event_line(dict(zip(LOG_COLUMNS, row, strict=True))).replace(b"ci-key-", b"CI-KEY-")
    sealed = sealed_from_line(line)
    assert chain_hash(sealed.prev_hash, sealed.canonical) != digest


@pytest.mark.parametrize("line", [b"", b"{", b'{"position": "1"}', b'{"unknownField": 1}'])
def test_a_line_that_is_not_a_stored_event_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="audit event"):
        sealed_from_line(line)
