"""Destinations as durable subscriptions of the reactor process: one asyncio task per destination, so a slow or
dead receiver only ever delays itself.

A streaming destination (http, splunk_hec, syslog) reads the tenant's events matching its filter after its
checkpoint, with the same SQL as ListEvents, in batches; it sends a batch, then advances the checkpoint (at least
once: a crash in between sends the batch again, with the same event ids). A failed batch is retried with
exponential backoff and full jitter, forever: skipping it would lose events; the status shows the destination
as failing and its lag grows. A webhook reads the tenant's alerts after its checkpoint (alerts.seq) and delivers
those of the rules naming it, one request each, signed as Standard Webhooks describe (webhook-id = the alert's id,
the same on every attempt); after AUDIT_WEBHOOK_MAX_ATTEMPTS failures an alert is given up (a FAILED attempt)
and the next one goes. Every attempt is recorded in delivery_attempts.

A destination's task is restarted whenever its revision changes (update, pause, resume) and stopped when it is
deleted or paused; a replay bumps the subscription's generation, which the task notices before its next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import orjson
from audit.v1 import destinations_pb2 as pb
from google.protobuf import json_format

from ..config import DeliveryConfig
from ..core.backoff import backoff_delay
from ..core.delivery_formats import (
    http_batch_body,
    octet_counted,
    sign_webhook,
    splunk_hec_body,
    syslog_message,
)
from ..core.destination_urls import AddressPolicy
from ..core.destinations import (
    ALERT_KINDS,
    DEFAULT_APP_NAME,
    DEFAULT_FACILITY,
    batch_size,
    destination_filter,
    kind_of,
    syslog_address,
)
from ..core.event_filter import Scope, compile_filter
from ..core.stored_alert import ALERT_COLUMNS, row_to_alert
from ..core.stored_event import row_to_event
from ..errors import DeliveryError, NotFoundError
from ..store import delivery_state
from ..store.destinations import get_destination, with_secrets
from ..store.pool import DATABASE_FAILURES
from ..store.queries import PageQuery, list_events, log_head
from ..telemetry.metrics import DESTINATION_ATTEMPTS, DESTINATION_LAG
from ..waiting import pause
from .doorbell import Doorbell
from .http_sender import HttpSender
from .syslog_sender import SyslogSender

log = logging.getLogger(__name__)

PAGE_BYTES = 4 * 1024 * 1024
_OUTCOME_NAMES = {
    pb.ATTEMPT_OUTCOME_DELIVERED: "delivered",
    pb.ATTEMPT_OUTCOME_RETRYING: "retrying",
    pb.ATTEMPT_OUTCOME_FAILED: "failed",
}
"""The outcome attribute of audit.destination.attempts."""
HOSTNAME = socket.gethostname()
"""The HOSTNAME of syslog messages and the host of HEC events: the reactor's host."""
ALERT_PAGE = 100

_ACTIVE_DESTINATIONS = """
SELECT tenant, name, revision FROM destinations WHERE NOT coalesce((destination->>'paused')::boolean, false)
"""
"""What the supervisor compares every poll; a destination itself is read only when it starts (or changed)."""
_ALERTS_AFTER = f"SELECT {ALERT_COLUMNS}, destinations FROM alerts WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3"


class Subscription:
    """One destination's delivery loop (run as its own task)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        destination: pb.Destination,
        config: DeliveryConfig,
        policy: AddressPolicy,
        http: HttpSender,
        *,
        rng: random.Random | None = None,
        doorbell: Doorbell | None = None,
    ) -> None:
        self._pool = pool
        self._destination = destination
        """With its secret and real header values (store/destinations.with_secrets)."""
        self._secret = destination.secret
        self._config = config
        self._policy = policy
        self._http = http
        self._rng = rng or random.Random()
        self._doorbell = doorbell
        self._kind = kind_of(destination)
        self._syslog: SyslogSender | None = None
        self.tenant = destination.tenant
        self.name = destination.name
        self._attributes = {"tenant": self.tenant, "destination": self.name}
        self._where = compile_filter(destination_filter(destination), Scope(tenant=self.tenant))
        """The destination's events: its filter ANDed with its tenant (streaming destinations)."""
        self._lag: int | None = None

    async def run(self) -> None:
        remove_gauge = DESTINATION_LAG.add(self._attributes, lambda: self._lag)
        try:
            while True:
                ticket = None if self._doorbell is None else self._doorbell.ticket()  # before looking: no ring missed
                state = await delivery_state.state_of(self._pool, self.tenant, self.name)
                if state is None:  # deleted: the supervisor stops this task
                    await asyncio.sleep(self._config.poll_seconds)
                    continue
                if self._kind in ALERT_KINDS:
                    progressed = await self._deliver_alerts(state)
                else:
                    progressed = await self._stream_events(state)
                if not progressed:
                    await pause(self._config.poll_seconds, until=ticket)
        finally:
            remove_gauge()
            if self._syslog is not None:
                await self._syslog.aclose()
                self._syslog = None

    # Streaming destinations.

    async def _stream_events(self, state: delivery_state.SubscriptionState) -> bool:
        head = await log_head(self._pool)
        self._lag = max(0, head - state.checkpoint)
        if head <= state.checkpoint:
            return False
        page = await list_events(
            self._pool,
            PageQuery(
                where=self._where,
                newest_first=False,
                after_position=state.checkpoint,
                limit=batch_size(self._destination),
                max_bytes=PAGE_BYTES,
                up_to_position=head,
            ),
        )
        if not page.rows:  # nothing of ours up to the head: skip to it
            async with self._pool.acquire() as conn:
                await delivery_state.advance(conn, self.tenant, self.name, state.generation, head, success=False)
            return True
        events = [row_to_event(row) for row in page.rows]
        positions = [row["position"] for row in page.rows]
        last = positions[-1]
        delivery_id = f"{positions[0]}-{last}"
        await self._until_delivered(
            state, delivery_id, len(events), lambda: self._send_events(events, delivery_id), advance_to=last
        )
        return True

    async def _send_events(self, events: list, delivery_id: str) -> int:
        """Sends one batch; the receiver's HTTP status (0 for syslog, which answers nothing)."""
        destination = self._destination
        if self._kind == "syslog":
            target = destination.syslog
            host, port = syslog_address(target.address, "destination.syslog.address")
            if self._syslog is None:
                self._syslog = SyslogSender(
                    host,
                    port,
                    policy=self._policy,
                    ca_pem=target.ca_pem or None,
                    server_name=target.server_name or host,
                    connect_timeout=self._config.request_timeout_seconds,
                    write_timeout=self._config.request_timeout_seconds,
                )
            frames = [
                octet_counted(
                    syslog_message(
                        event,
                        app_name=target.app_name or DEFAULT_APP_NAME,
                        hostname=HOSTNAME,
                        facility=target.facility or DEFAULT_FACILITY,
                    )
                )
                for event in events
            ]
            await self._syslog.send(frames)
            return 0
        headers = dict(destination.headers)
        if self._kind == "http":
            body = http_batch_body(events, destination.name)
            headers.update(sign_webhook(self._secret, f"batch_{delivery_id}", int(time.time()), body))
            url = destination.http.url
        else:
            hec = destination.splunk_hec
            body = splunk_hec_body(events, index=hec.index, source=hec.source, sourcetype=hec.sourcetype, host=HOSTNAME)
            headers["Authorization"] = f"Splunk {self._secret}"
            url = hec.url
        headers["Content-Type"] = "application/json"
        return await self._http.send(url, body, headers)

    # Webhooks (alerts).

    async def _deliver_alerts(self, state: delivery_state.SubscriptionState) -> bool:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_ALERTS_AFTER, self.tenant, state.checkpoint, ALERT_PAGE)
            head = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM alerts WHERE tenant = $1", self.tenant)
        self._lag = max(0, head - state.checkpoint)
        if not rows:
            return False
        for row in rows:
            if self.name not in row["destinations"]:
                continue  # another destination's: passed over with the next checkpoint written
            body = alert_webhook_body(row)
            delivered = await self._until_delivered(
                state,
                row["id"],
                1,
                lambda body=body, alert_id=row["id"]: self._send_alert(alert_id, body),
                max_attempts=self._config.webhook_max_attempts,
                advance_to=row["seq"],
            )
            if not delivered:  # replayed (or deleted) meanwhile: start again from the new checkpoint
                return True
        if self.name not in rows[-1]["destinations"]:  # the page ends with others' alerts: skip them in one write
            async with self._pool.acquire() as conn:
                await delivery_state.advance(
                    conn, self.tenant, self.name, state.generation, rows[-1]["seq"], success=False
                )
        return True

    async def _send_alert(self, alert_id: str, body: bytes) -> int:
        headers = dict(self._destination.headers)
        headers.update(sign_webhook(self._secret, alert_id, int(time.time()), body))
        headers["Content-Type"] = "application/json"
        return await self._http.send(self._destination.webhook.url, body, headers)

    # Attempts.

    async def _until_delivered(
        self,
        state: delivery_state.SubscriptionState,
        delivery_id: str,
        items: int,
        send: Callable[[], Awaitable[int]],
        *,
        advance_to: int,
        max_attempts: int = 0,
    ) -> bool:
        """Attempts `send` until it succeeds (or, with max_attempts, gives up), recording every attempt; then
        advances the checkpoint to `advance_to`. False when the subscription was replayed or deleted meanwhile."""
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                http_status, reason = await send(), ""
                outcome = pb.ATTEMPT_OUTCOME_DELIVERED
            except DeliveryError as error:
                http_status, reason = error.status or 0, error.reason
                given_up = bool(max_attempts) and attempt >= max_attempts
                outcome = pb.ATTEMPT_OUTCOME_FAILED if given_up else pb.ATTEMPT_OUTCOME_RETRYING
            elapsed = int((time.monotonic() - started) * 1000)
            DESTINATION_ATTEMPTS.add(1, {**self._attributes, "outcome": _OUTCOME_NAMES[outcome]})
            async with self._pool.acquire() as conn, conn.transaction():
                await delivery_state.record_attempt(
                    conn,
                    self.tenant,
                    self.name,
                    delivery_state.Attempt(delivery_id, attempt, outcome, http_status, reason, elapsed, items),
                )
                if outcome == pb.ATTEMPT_OUTCOME_DELIVERED:
                    return await delivery_state.advance(conn, self.tenant, self.name, state.generation, advance_to)
                await delivery_state.record_failure(conn, self.tenant, self.name, state.generation, reason)
                if outcome == pb.ATTEMPT_OUTCOME_FAILED:
                    return await delivery_state.advance(
                        conn, self.tenant, self.name, state.generation, advance_to, success=False
                    )
            log.warning(
                "destination %s/%s: attempt %d of %s failed: %s", self.tenant, self.name, attempt, delivery_id, reason
            )
            await asyncio.sleep(
                backoff_delay(
                    attempt, base=self._config.retry_base_seconds, cap=self._config.retry_cap_seconds, rng=self._rng
                )
            )
            current = await delivery_state.state_of(self._pool, self.tenant, self.name)
            if current is None or current.generation != state.generation:
                return False


def alert_webhook_body(row: asyncpg.Record) -> bytes:
    """The webhook payload of an alert, in the Standard Webhooks shape: type, timestamp and data."""
    data = json_format.MessageToDict(row_to_alert(row), preserving_proto_field_name=True)
    stored: dt.datetime = row["created_at"]
    return orjson.dumps(
        {"type": "audit.alert", "timestamp": stored.astimezone(dt.UTC).isoformat(), "data": data},
    )


class DestinationSupervisor:
    """Keeps one Subscription task per destination that is not paused, following the destinations table."""

    def __init__(
        self, pool: asyncpg.Pool, config: DeliveryConfig, policy: AddressPolicy, doorbell: Doorbell | None = None
    ) -> None:
        """
        Args:
            doorbell: rung by the rule evaluation of the same process after each step (new events, maybe alerts):
                caught-up destinations look at once instead of at their next poll.
        """
        self._pool = pool
        self._config = config
        self._policy = policy
        self._doorbell = doorbell
        self._tasks: dict[tuple[str, str], tuple[int, asyncio.Task[None]]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        async with HttpSender(policy=self._policy, timeout=self._config.request_timeout_seconds) as http:
            try:
                while not stop.is_set():
                    try:
                        await self._reconcile(http)
                    except DATABASE_FAILURES as error:
                        log.warning("destinations: %s; retrying", error)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self._config.poll_seconds)
            finally:
                await self._stop(list(self._tasks))

    async def _reconcile(self, http: HttpSender) -> None:
        async with self._pool.acquire() as conn:
            wanted = {(row["tenant"], row["name"]): row["revision"] for row in await conn.fetch(_ACTIVE_DESTINATIONS)}
            stale = [key for key, (revision, task) in self._tasks.items() if wanted.get(key) != revision or task.done()]
            await self._stop(stale)
            for key, revision in wanted.items():
                if key in self._tasks:
                    continue
                try:
                    destination = await with_secrets(conn, await get_destination(conn, *key))
                except NotFoundError:  # deleted since the look: the next one will not see it
                    continue
                subscription = Subscription(
                    self._pool, destination, self._config, self._policy, http, doorbell=self._doorbell
                )
                task = asyncio.create_task(self._guarded(subscription), name=f"destination {key[0]}/{key[1]}")
                self._tasks[key] = (revision, task)

    async def _guarded(self, subscription: Subscription) -> None:
        """Runs a subscription, restarting it after an unexpected error (the checkpoint is in the database)."""
        while True:
            try:
                await subscription.run()
            except asyncio.CancelledError:
                raise
            except DATABASE_FAILURES as error:
                log.warning("destination %s/%s: %s; resuming", subscription.tenant, subscription.name, error)
            except Exception:
                log.exception("destination %s/%s failed; resuming", subscription.tenant, subscription.name)
            await asyncio.sleep(self._config.poll_seconds)

    async def _stop(self, keys: Sequence[tuple[str, str]]) -> None:
        tasks = [self._tasks.pop(key)[1] for key in keys if key in self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
