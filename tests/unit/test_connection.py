"""Credentials in NATS URLs: the inboxes they name, and how they are shown."""

from __future__ import annotations

import pytest
from audit_client.connection import inbox_prefix, redact


def test_a_user_in_the_url_names_the_inboxes_and_is_redacted() -> None:
    assert inbox_prefix("nats://127.0.0.1:4222") == "_INBOX"
    assert inbox_prefix("nats://s3cret-token@nats:4222") == "_INBOX"  # a token, never put in a subject
    assert inbox_prefix(["nats://a:4222", "nats://ingest:pw@b:4222"]) == "_INBOX.ingest"
    with pytest.raises(ValueError, match="must match"):
        inbox_prefix("nats://a.b:pw@nats:4222")
    assert redact("nats://ingest:pw-1@a:4222, tls://ingest:pw-1@b:4222,nats://c:4222") == (
        "nats://ingest:***@a:4222, tls://ingest:***@b:4222,nats://c:4222"
    )
