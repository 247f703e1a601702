"""Provisioning of the JetStream streams (the ingest workers create the events and dead-letter streams, the reactor
the alerts stream) and of the durable pull consumer the ingest workers share."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ..config import IngestConfig, NatsConfig

log = logging.getLogger(__name__)

_DAY = 24 * 3600.0


def events_stream_config(config: NatsConfig) -> StreamConfig:
    return StreamConfig(
        name=config.events_stream,
        description="Audit events published by producers, consumed by the audit ingest workers",
        subjects=[f"{config.events_subject_prefix}.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=config.events_max_age_seconds,
        duplicate_window=config.duplicate_window_seconds,
    )


def dead_stream_config(config: NatsConfig) -> StreamConfig:
    return StreamConfig(
        name=config.dead_stream,
        description="Audit events the ingest workers refused, with their original bytes and a reason",
        subjects=[f"{config.dead_subject_prefix}.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=30 * _DAY,
        duplicate_window=config.duplicate_window_seconds,
    )


def alerts_stream_config(config: NatsConfig) -> StreamConfig:
    """Created by the reactor, which publishes every stored alert here (delivery/nats_alerts.py). The duplicate
    window is what makes a republished alert (after a crash between publishing and checkpointing) one message."""
    return StreamConfig(
        name=config.alerts_stream,
        description="Alerts raised by the audit reactor's rules, one message per alert (Nats-Msg-Id: its id)",
        subjects=[f"{config.alerts_subject_prefix}.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=config.alerts_max_age_seconds,
        duplicate_window=config.duplicate_window_seconds,
    )


def consumer_config(nats_config: NatsConfig, ingest: IngestConfig) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=ingest.durable,
        description="Audit ingest workers (shared durable pull consumer)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ingest.ack_wait_seconds,
        max_deliver=-1,  # never drop: undecodable messages are dead-lettered by the worker instead
        max_ack_pending=max(20_000, ingest.batch_size * 8),
        filter_subject=f"{nats_config.events_subject_prefix}.>",
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates the stream when it is missing; an existing one is left as its operators configured it
    (replicas, limits, placement)."""
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            return  # another worker created it in the meantime
        log.info("created stream %s (%s)", config.name, ", ".join(config.subjects or []))


async def provision(js: JetStreamContext, nats_config: NatsConfig, ingest: IngestConfig) -> None:
    """Creates or updates both streams and the ingest consumer."""
    await ensure_stream(js, events_stream_config(nats_config))
    await ensure_stream(js, dead_stream_config(nats_config))
    await js.add_consumer(nats_config.events_stream, consumer_config(nats_config, ingest))
