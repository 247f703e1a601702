"""Rows of the alerts table as audit.v1.Alert messages, as ListAlerts returns them and the reactor publishes them
on NATS. Pure: a row is any mapping of the alerts table's columns (an asyncpg.Record)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from audit.v1 import alert_rules_pb2 as pb
from google.protobuf import json_format

ALERT_COLUMNS = (
    "seq, tenant, id::text AS id, rule_id::text AS rule_id, rule_revision, severity, group_key, window_start, "
    "window_end, message, event_positions, created_at"
)
"""The select list that row_to_alert reads (ids as text)."""


def row_to_alert(row: Mapping[str, Any]) -> pb.Alert:
    alert = pb.Alert(
        id=row["id"],
        tenant=row["tenant"],
        rule_id=row["rule_id"],
        rule_revision=row["rule_revision"],
        severity=row["severity"],
        group_key=row["group_key"],
        message=row["message"],
        event_positions=row["event_positions"],
    )
    alert.window_start.FromDatetime(row["window_start"])
    alert.window_end.FromDatetime(row["window_end"])
    alert.create_time.FromDatetime(row["created_at"])
    return alert


def alert_json(alert: pb.Alert) -> bytes:
    """The alert as protobuf JSON (lowerCamelCase names, 64-bit integers as strings), as NDJSON exports write
    events: what the reactor publishes on NATS."""
    return orjson.dumps(json_format.MessageToDict(alert))
