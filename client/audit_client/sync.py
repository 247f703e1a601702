"""A publisher for code that is not async (Django, Flask, scripts, worker threads).

It runs the async `Publisher` on an event loop of its own, in a background thread, and hands each publish to that
loop: callers block until JetStream has acknowledged their event, and any number of threads may publish at once
(their publishes are in flight together, on one NATS connection).

Example:
    with audit_client.connect_sync("nats://producer-acme:...@127.0.0.1:4222") as publisher:
        ack = publisher.publish(AuditEvent(tenant="acme", action="api_key.create", ...))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from audit.v1 import event_pb2

from .errors import PublishError
from .publisher import DEFAULT_SUBJECT_PREFIX, DEFAULT_WINDOW, PublishAck, Publisher, connect
from .validation import DEFAULT_LIMITS, Limits

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread, until `stop()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="audit-client-publisher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def _wait(future: concurrent.futures.Future[T]) -> T:
    try:
        return future.result()
    except BaseException:
        future.cancel()  # interrupted (KeyboardInterrupt): the publish is abandoned, not left running
        raise


class SyncPublisher:
    """Publishes audit events from synchronous code; thread-safe. Create it with `connect_sync()`.

    `publish()` and `publish_many()` complete and validate events in the calling thread (with the caller's
    OpenTelemetry span), then send them on the publisher's own event loop and block until JetStream has stored
    them. They raise what the async `Publisher` raises.

    Create one per process, after any fork (gunicorn and uWSGI workers): its thread and connection do not survive
    a fork. Close it (or use `with`) so that what is still being sent is flushed.
    """

    def __init__(self, publisher: Publisher, runner: _LoopThread) -> None:
        self._publisher = publisher
        self._runner = runner
        self._pid = os.getpid()
        self._closing = threading.Lock()
        self._closed = False

    def _call(self, coroutine: Coroutine[Any, Any, T], event_id: str) -> T:
        with self._closing:  # a publish is either on the loop before close() starts, or refused
            if self._closed or os.getpid() != self._pid:
                coroutine.close()
                reason = "closed" if self._closed else "created in another process (before a fork)"
                raise PublishError(event_id, f"the publisher was {reason}")
            if threading.current_thread() is self._runner.thread:
                coroutine.close()
                raise RuntimeError("SyncPublisher called from its own event loop: use the async Publisher there")
            future = self._runner.submit(coroutine)
        try:
            return _wait(future)
        except concurrent.futures.CancelledError:
            raise PublishError(event_id, "the publisher was closed") from None

    def publish(self, event: event_pb2.AuditEvent) -> PublishAck:
        """Publishes one event and blocks until JetStream has stored it (see `Publisher.publish()`).

        Raises:
            InvalidEventError: the event breaks the contract; nothing was sent.
            PublishError: JetStream did not acknowledge the event in time, or the publisher is closed.
        """
        prepared = self._publisher.prepare(event)
        return self._call(self._publisher._send_prepared(prepared), prepared[0].event_id)

    def publish_many(self, events: Iterable[event_pb2.AuditEvent], *, window: int = DEFAULT_WINDOW) -> list[PublishAck]:
        """Publishes a batch with up to `window` acknowledgements in flight, and blocks until each is acknowledged
        (see `Publisher.publish_many()`).

        Returns:
            One acknowledgement per event, in the order given.

        Raises:
            InvalidEventError: an event breaks the contract; nothing was sent.
            PublishBatchError: some events were not acknowledged (`acks`, `errors`, `unacknowledged_events`).
            PublishError: the publisher is closed; nothing was sent.
        """
        batch = self._publisher.prepare_many(events)
        if not batch:
            return []
        return self._call(self._publisher._send_prepared_many(batch, window=window), batch[0][0].event_id)

    def close(self) -> None:
        """Flushes what is being sent, closes the connection and stops the background thread. Idempotent."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        if os.getpid() != self._pid:
            return  # a forked child: the thread is not there
        try:
            _wait(self._runner.submit(self._publisher.close()))
        finally:
            self._runner.stop()

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect_sync(
    servers: str | list[str] = "nats://127.0.0.1:4222",
    *,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    max_in_flight: int = 1024,
    ack_timeout: float = 5.0,
    limits: Limits = DEFAULT_LIMITS,
    **nats_options: Any,
) -> SyncPublisher:
    """Connects a SyncPublisher to NATS, blocking until connected. The options are those of `connect()`.

    Use as `with audit_client.connect_sync(url) as publisher:`, or call `close()` when done.

    Raises:
        nats.errors.AuthorizationError: the server refused the credentials.
    """
    runner = _LoopThread()

    async def open_publisher() -> Publisher:
        return await connect(
            servers,
            subject_prefix=subject_prefix,
            max_in_flight=max_in_flight,
            ack_timeout=ack_timeout,
            limits=limits,
            **nats_options,
        )

    try:
        publisher = _wait(runner.submit(open_publisher()))
    except BaseException:
        runner.stop()
        raise
    return SyncPublisher(publisher, runner)
