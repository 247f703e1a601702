"""The service's metrics, recorded through the OpenTelemetry metrics API only.

The instruments come from the global meter provider's proxy: until a process installs an SDK MeterProvider
(telemetry/setup.py) recording does nothing, and once one is installed the same instruments record into it.
Nothing here does I/O: counters and histograms are recorded once per batch, response or call, and observable
gauges report values that the code owning them refreshes (a callback never calls NATS or PostgreSQL).

Names follow the OpenTelemetry semantic conventions where one exists (rpc.server.call.duration, messaging.*
attributes); the rest are audit.*. README "Metrics" lists them with their Prometheus names.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

try:
    _VERSION = metadata.version("audit-log-service")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    _VERSION = "0"

METER_NAME = "audit_service"

Attributes = Mapping[str, str | int]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""Seconds: the boundaries the RPC semantic conventions advise for rpc.server.call.duration."""
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds: delays that can grow to an hour while ingest is held up."""
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Messages per batch (AUDIT_INGEST_BATCH_SIZE is 500 by default)."""


class ObservedValues:
    """What an observable gauge reports: one reading per registered source, each a cheap function of state the
    source keeps up to date (None: nothing to report now). Several sources may report the same attributes (two
    workers of one consumer in one process): the gauge keeps the last."""

    def __init__(self) -> None:
        self._sources: dict[int, tuple[Attributes, Callable[[], float | None]]] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()  # the SDK may collect from its exporter thread

    def add(self, attributes: Attributes, read: Callable[[], float | None]) -> Callable[[], None]:
        """Registers a source; returns the function that removes it (call it when the source stops)."""
        key = next(self._keys)
        with self._lock:
            self._sources[key] = (dict(attributes), read)

        def remove() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return remove

    def __call__(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sources = list(self._sources.values())
        observations = []
        for attributes, read in sources:
            value = read()
            if value is not None:
                observations.append(Observation(value, attributes))
        return observations


_meter = metrics.get_meter(METER_NAME, _VERSION)

# Ingest: what happened to the messages of the events stream.
INGEST_APPENDED = _meter.create_counter(
    "audit.ingest.appended", unit="{event}", description="Events stored in the log (new positions)."
)
INGEST_DUPLICATES = _meter.create_counter(
    "audit.ingest.duplicates",
    unit="{event}",
    description="Events not stored again: their event_id was already in the log with the same content (redeliveries, "
    "producer retries, repeats within a batch).",
)
INGEST_DEAD_LETTERED = _meter.create_counter(
    "audit.ingest.dead_lettered",
    unit="{message}",
    description="Messages refused and published to the dead-letter stream, by reason (as in audit.dead.<reason>; "
    "conflicting_duplicate: another event under a stored event_id).",
)
INGEST_BATCH_SIZE = _meter.create_histogram(
    "audit.ingest.batch.size",
    unit="{message}",
    description="Messages per fetched batch.",
    explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
)
INGEST_APPEND_DURATION = _meter.create_histogram(
    "audit.ingest.append.duration",
    unit="s",
    description="Duration of one append transaction (the events of a batch, from taking a connection to COMMIT).",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
INGEST_PUBLISH_TO_COMMIT = _meter.create_histogram(
    "audit.ingest.publish_to_commit.duration",
    unit="s",
    description="From the time JetStream stored a message to the COMMIT of its event, once per append (its first "
    "message, the oldest of the batch).",
    explicit_bucket_boundaries_advisory=LAG_BUCKETS,
)
INGEST_PENDING = ObservedValues()
_meter.create_observable_gauge(
    "audit.ingest.pending",
    callbacks=[INGEST_PENDING],
    unit="{message}",
    description="Messages of the events stream not yet delivered to the ingest consumer (its num_pending), as last "
    "refreshed by a worker.",
)
INGEST_OLDEST_AGE = ObservedValues()
_meter.create_observable_gauge(
    "audit.ingest.oldest_pending.age",
    unit="s",
    callbacks=[INGEST_OLDEST_AGE],
    description="Age of the oldest message not yet stored: since JetStream stored the first message of the batch "
    "in hand; 0 when nothing is pending.",
)

# The log.
LOG_HEAD = ObservedValues()
_meter.create_observable_gauge(
    "audit.log.head",
    callbacks=[LOG_HEAD],
    unit="{position}",
    description="The log's last position, as of this worker's start or its last append.",
)
CHECKPOINT_AGE = ObservedValues()
_meter.create_observable_gauge(
    "audit.checkpoint.age",
    callbacks=[CHECKPOINT_AGE],
    unit="s",
    description="Seconds since the log's head was last covered by a signed checkpoint (one signed then, or the "
    "latest when nothing was appended since); counted from start-up until the first one.",
)
RETENTION_RUNS = _meter.create_counter(
    "audit.retention.runs",
    unit="{run}",
    description="Runs of `audit-service retention`, by outcome (archived, nothing_to_do, dry_run, failed).",
)

# The API.
RPC_SERVER_CALL_DURATION = _meter.create_histogram(
    "rpc.server.call.duration",
    unit="s",
    description="Duration of incoming RPCs (a streaming call: until its stream ends).",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
TAILS_OPEN = _meter.create_up_down_counter(
    "audit.tail.active", unit="{stream}", description="TailEvents streams open on this replica."
)
TAIL_RESYNCS = _meter.create_counter(
    "audit.tail.resyncs",
    unit="{resync}",
    description="Times a tail fell behind its live buffer and was sent back to reading the log.",
)
TAIL_DELIVERY_LAG = _meter.create_histogram(
    "audit.tail.delivery.lag",
    unit="s",
    description="Live tails: from an event's recorded_at to when the response carrying it is handed to gRPC (the "
    "oldest event of each response).",
    explicit_bucket_boundaries_advisory=LAG_BUCKETS,
)
EXPORT_SENT = _meter.create_counter(
    "audit.export.sent", unit="By", description="Bytes of export data sent by ExportEvents, by format."
)

# Destinations (the reactor's subscriptions).
DESTINATION_LAG = ObservedValues()
_meter.create_observable_gauge(
    "audit.destination.lag",
    callbacks=[DESTINATION_LAG],
    unit="{position}",
    description="Log positions (alerts, for a webhook) after a destination's checkpoint, as of its latest look; "
    "attributes tenant and destination.",
)
DESTINATION_ATTEMPTS = _meter.create_counter(
    "audit.destination.attempts",
    unit="{attempt}",
    description="Delivery attempts to destinations; attributes tenant, destination and outcome (delivered, "
    "retrying, failed).",
)
