"""The service's processes as coroutines: migrate, ingest, serve, react. Used by the CLI and the dev stack."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats.errors
from audit_client.connection import connect_nats, tls_context
from nats.aio.client import Client as NatsClient

from .api.live_feed import LiveFeed
from .api.read_budget import ReadBudget
from .api.server import RunningServer, start_server
from .api.tls import CertificateFiles
from .config import Config, NatsConfig
from .delivery.destinations import DestinationSupervisor
from .delivery.doorbell import Doorbell
from .delivery.policy import address_policy
from .errors import ConfigError
from .ingest.worker import IngestWorker
from .store.checkpoints import PeriodicCheckpointer, checkpoint_verifiers
from .store.migrate import migrate
from .store.pool import DATABASE_FAILURES, create_pool
from .store.reactor_lease import ReactorLease
from .telemetry.http import Readiness, watch_database

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A dependency could not be reached at start-up; the message is one line."""


def redact(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def database_pool(
    url: str, *, max_size: int, command_timeout: float = 60.0, stateless: bool = False
) -> AsyncIterator[asyncpg.Pool]:
    try:
        pool = await asyncio.wait_for(
            create_pool(url, max_size=max_size, command_timeout=command_timeout, stateless=stateless), timeout=15
        )
    except DATABASE_FAILURES as error:
        raise StartupError(f"cannot connect to PostgreSQL at {redact(url)}: {error}") from None
    try:
        yield pool
    finally:
        await pool.close()


def nats_tls_context(nats_config: NatsConfig) -> ssl.SSLContext | None:
    """The TLS context of the service's NATS connections (None: the URL decides, plaintext for nats://).

    Raises:
        ConfigError: a file is not PEM or the key does not match the certificate (naming its variable).
    """
    if not nats_config.tls_required:
        return None
    try:
        context = tls_context(ca_file=nats_config.tls_ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("AUDIT_NATS_TLS_CA_FILE", f"holds no usable PEM CA certificate ({error})") from None
    if nats_config.tls_cert_file:
        try:
            context.load_cert_chain(nats_config.tls_cert_file, nats_config.tls_key_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                "AUDIT_NATS_TLS_KEY_FILE",
                f"is not the PEM private key of the certificate in AUDIT_NATS_TLS_CERT_FILE ({error})",
            ) from None
    return context


@contextlib.asynccontextmanager
async def readiness_checks(
    readiness: Readiness | None, prefix: str, database_url: str | None, nc: NatsClient | None, *reported: str
) -> AsyncIterator[None]:
    """Registers the checks of one process part (`prefix`: ingest, api, react) on `readiness`, if any: NATS
    connected (unless `nc` is None), PostgreSQL answering, and the checks the part `reported` itself; they fail
    ("stopped") once the part stops.

    Without `database_url`, `<prefix>.postgres` is reported by the part too (the API's health monitor checks
    PostgreSQL already)."""
    if readiness is None:
        yield
        return
    nats_check = f"{prefix}.nats" if nc is not None else None
    names = [f"{prefix}.{name}" for name in ("postgres", *reported)]
    readiness.expect(*names)
    if nats_check is not None:
        readiness.watch(nats_check, lambda: None if nc.is_connected else "NATS disconnected")
    watching = (
        asyncio.create_task(watch_database(database_url, readiness, names[0]), name=f"{prefix}-db-check")
        if database_url
        else None
    )
    try:
        yield
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        if nats_check is not None:
            readiness.forget(nats_check)
        for name in names:  # not ready from here to the end of the process
            readiness.set(name, "stopped")


@contextlib.asynccontextmanager
async def nats_connection(config: Config, name: str) -> AsyncIterator[NatsClient]:
    async def on_error(error: Exception) -> None:
        log.warning("NATS: %s: %s", type(error).__name__, error)

    tls = nats_tls_context(config.nats)
    try:
        nc = await connect_nats(
            config.nats.servers,
            tls=tls,
            tls_handshake_first=config.nats.tls_handshake_first,
            name=name,
            inbox_prefix=config.nats.inbox_prefix,
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
        )
    except nats.errors.AuthorizationError as error:
        hint = "check the user and password in AUDIT_NATS_URL"
        raise StartupError(f"cannot connect to NATS at {config.nats.redacted_url}: {error} ({hint})") from None
    except (TimeoutError, OSError, nats.errors.Error) as error:
        raise StartupError(
            f"cannot connect to NATS at {config.nats.redacted_url}: {error or type(error).__name__}"
        ) from None
    try:
        yield nc
    finally:
        if not nc.is_closed:
            # flush() sends every pending acknowledgement; drain() would wait on the idle pull inbox.
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await nc.flush(timeout=5)
            await nc.close()


async def run_migrate(config: Config) -> list[str]:
    """Applies pending migrations with the owner's URL; returns their names."""
    url = config.database.migrate_url or config.database.url
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), timeout=15)
    except DATABASE_FAILURES as error:
        raise StartupError(f"cannot connect to PostgreSQL at {redact(url)}: {error}") from None
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await conn.close()


FEED_POOL_SIZE = 2
"""Connections of the live feed's own, beside the pool of the RPCs: every announcement is checked against the log
before tails see it, and that check must not queue behind history reads and exports when the RPC pool is busy."""


async def run_ingest(
    config: Config,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
    readiness: Readiness | None = None,
) -> IngestWorker:
    """Runs one ingest worker until `stop` is set (signing checkpoints periodically when a key is configured).

    Args:
        readiness: where /readyz finds this worker's checks: ingest.nats, ingest.postgres, ingest.consumer.
    """
    checkpointer = PeriodicCheckpointer.from_config(config.checkpoints)  # a bad key fails before connecting
    nats_tls_context(config.nats)  # so do bad TLS files
    async with (
        # appends, the search index merge beside them (store/search_index.py), checkpoints
        database_pool(config.database.url, max_size=3, stateless=True) as pool,
        nats_connection(config, "audit-ingest") as nc,
        readiness_checks(readiness, "ingest", config.database.url, nc, "consumer"),
        checkpointer.running(pool),
    ):
        worker = IngestWorker(config, nc, pool, readiness=readiness)
        await worker.run(stop, ready=ready)
        return worker


async def run_react(config: Config, stop: asyncio.Event, *, readiness: Readiness | None = None) -> None:
    """Runs the reactor until `stop` is set: alert rules evaluated on the committed log (store/reactor.py), and
    beside it, each a task of its own, the stored alerts published on NATS (delivery/nats_alerts.py) and the
    destinations' subscriptions (delivery/destinations.py, on a pool of their own so that no destination can
    starve the evaluation of connections). NATS being unreachable, or a destination being slow or down, only
    delays that delivery (with warnings); evaluation goes on.

    Args:
        readiness: where /readyz finds the reactor's checks: react.postgres, react.evaluating. NATS is not one:
            while it is down alerts wait in PostgreSQL and evaluation goes on (the warnings say so).
    """
    from .delivery.nats_alerts import ErrorCallback, NatsAlertDelivery
    from .store.reactor import react

    tls = nats_tls_context(config.nats)  # bad TLS files fail at start-up, before connecting

    async def connect(error_cb: ErrorCallback) -> NatsClient:
        return await connect_nats(
            config.nats.servers,
            tls=tls,
            tls_handshake_first=config.nats.tls_handshake_first,
            name="audit-react",
            inbox_prefix=config.nats.inbox_prefix,
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # the first connection too: nats-py tries until NATS answers
            reconnect_time_wait=1.0,
            error_cb=error_cb,
        )

    page_events = config.reactor.page_events
    page_alerts = config.reactor.publish_page_alerts
    policy = address_policy(config)
    lease = ReactorLease(config.database.url)
    async with (
        database_pool(config.database.url, max_size=3, stateless=True) as pool,
        database_pool(config.database.url, max_size=config.database.pool_max_size) as delivery_pool,
    ):
        report = None if readiness is None else lambda problem: readiness.set("react.evaluating", problem)
        async with readiness_checks(readiness, "react", config.database.url, None, "evaluating"):
            # One active reactor; another stands by (store/reactor_lease.py), ready to take over.
            while await lease.acquire(stop, on_standby=None if report is None else lambda: report(None)):
                halt = asyncio.Event()  # stop, or the lease lost

                async def follow_stop(halt: asyncio.Event = halt) -> None:
                    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(halt.wait())}
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for wait in waits:
                            wait.cancel()
                    halt.set()

                delivery = NatsAlertDelivery(pool, config.nats, connect, page_alerts=page_alerts)
                doorbell = Doorbell()  # evaluation rings it: destinations need not wait for their next poll
                supervisor = DestinationSupervisor(delivery_pool, config.delivery, policy, doorbell)
                try:
                    async with (
                        asyncio.TaskGroup() as tasks
                    ):  # any failing (a bug: each retries what it expects) ends all
                        tasks.create_task(follow_stop(), name="stop")
                        tasks.create_task(lease.watch(halt), name="lease")
                        tasks.create_task(
                            react(pool, halt, page_events=page_events, report=report, on_step=doorbell.ring),
                            name="react",
                        )
                        tasks.create_task(delivery.run(halt), name="alerts-nats")
                        tasks.create_task(supervisor.run(halt), name="destinations")
                finally:
                    await lease.release()


async def run_api(
    config: Config,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[RunningServer], None] | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Serves the gRPC API (and the HTTP port, when AUDIT_HTTP_ADDRESS is set) until `stop` is set, then shuts
    down gracefully.

    Args:
        readiness: where /readyz finds the API's checks: api.nats, api.postgres, api.serving.
    """
    config.auth.require_verification()  # before connecting to anything
    checkpoint_keys = checkpoint_verifiers(config.checkpoints)
    certificates = CertificateFiles(config.api.tls) if config.api.tls.enabled else None
    nats_tls_context(config.nats)
    async with (
        database_pool(
            config.database.url,
            max_size=config.database.pool_max_size,
            command_timeout=config.api.query_timeout_seconds,
        ) as pool,
        database_pool(
            config.database.url, max_size=FEED_POOL_SIZE, command_timeout=config.api.query_timeout_seconds
        ) as feed_pool,
        nats_connection(config, "audit-api") as nc,
        readiness_checks(readiness, "api", None, nc, "serving"),
    ):
        read_budget = ReadBudget(config.api.read_buffer_bytes, wait_seconds=config.api.query_timeout_seconds)
        feed = LiveFeed(nc, feed_pool, config.tail, config.nats.committed_subject_prefix, read_budget=read_budget)
        try:
            await feed.start()
        except DATABASE_FAILURES as error:
            raise StartupError(f"cannot read the log's head from PostgreSQL: {error}") from None
        try:
            running = await start_server(
                config.api,
                config.auth,
                pool,
                feed=feed,
                tail=config.tail,
                checkpoint_keys=checkpoint_keys,
                read_budget=read_budget,
                certificates=certificates,
                database_url=config.database.url,
                nc=nc,
                mask=config.ingest.mask,
                address_policy=address_policy(config),
                http=config.http,
                on_database_checked=None
                if readiness is None
                else lambda reachable: readiness.set("api.postgres", None if reachable else "PostgreSQL unreachable"),
            )
            # What start-up allocated (modules, descriptors, the server) lives as long as the process: keep it
            # out of the collector's full passes, which otherwise show up as latency spikes on large responses.
            gc.freeze()
            if readiness is not None:
                readiness.set("api.serving", None)
            if on_ready is not None:
                on_ready(running)
            await stop.wait()
            if readiness is not None:
                readiness.set("api.serving", "shutting down")
            log.info("gRPC API shutting down (grace %.0f s)", config.api.shutdown_grace_seconds)
            await running.stop(config.api.shutdown_grace_seconds)
        finally:
            await feed.close()
