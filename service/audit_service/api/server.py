"""gRPC server lifecycle: AuditService, AlertRuleService, DestinationService, health and reflection, plaintext
or TLS; the HTTP port (the same three services over Connect and gRPC-Web, from the same servicers) when configured;
graceful shutdown of both."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from audit.v1 import alert_rules_pb2_grpc, audit_service_pb2, audit_service_pb2_grpc, destinations_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NatsClient

from ..auth.tokens import TokenVerifier
from ..config import ApiConfig, AuthConfig, HttpConfig, TailConfig
from ..console.app import console_application
from ..core.destination_urls import AddressPolicy
from ..core.masking import SecretMask
from ..core.signing import Verifier
from ..errors import ConfigError
from ..store.append import LogAppender
from ..telemetry.setup import server_interceptors
from .alert_rules import SERVICE_NAME as ALERT_RULES_SERVICE_NAME
from .alert_rules import AlertRuleServicer
from .auth import AuthInterceptor
from .connect import connect_application
from .dependency_health import DependencyHealth
from .destinations import SERVICE_NAME as DESTINATIONS_SERVICE_NAME
from .destinations import DestinationServicer
from .errors import ErrorMappingInterceptor
from .http_app import http_application
from .http_server import RunningHttpServer, start_http_server
from .live_feed import LiveFeed
from .read_budget import ReadBudget
from .rpc_metrics import RpcMetricsInterceptor
from .servicer import AuditServicer
from .tls import CertificateFiles

log = logging.getLogger(__name__)

SERVICE_NAME = audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
_GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


class ClientGoneFilter(logging.Filter):
    """gRPC logs an ERROR with a traceback when a client goes away while a response is being written to it
    (grpc/grpc#32551): for a live tail that is a normal disconnect. Such records become one DEBUG line."""

    _PREFIX = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(self._PREFIX):
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            record.msg = f"{record.getMessage()}: the client went away while a response was being sent"
            record.args = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _quiet_client_disconnects() -> None:
    grpc_logger = logging.getLogger(_GRPC_CORE_LOGGER)
    if not any(isinstance(existing, ClientGoneFilter) for existing in grpc_logger.filters):
        grpc_logger.addFilter(ClientGoneFilter())


@dataclass
class RunningServer:
    server: aio.Server
    health: health_aio.HealthServicer
    port: int
    """The bound port (useful when the configured port is 0)."""
    feed: LiveFeed | None = None
    """The live feed of TailEvents."""
    dependency_health: DependencyHealth | None = None
    """What keeps `health` in step with PostgreSQL and NATS."""
    certificates: CertificateFiles | None = None
    """The TLS files served (None: plaintext)."""
    alert_rules: AlertRuleServicer | None = None
    """Whose WatchAlerts streams end at shutdown."""
    http: RunningHttpServer | None = None
    """The HTTP port (AUDIT_HTTP_ADDRESS), None when it is off."""

    async def stop(self, grace: float) -> None:
        """Reports NOT_SERVING, ends live tails and alert watches with UNAVAILABLE (their clients resume elsewhere
        from their checkpoint or cursor), stops accepting calls and lets in-flight ones finish within `grace`
        seconds."""
        await self.health.enter_graceful_shutdown()
        if self.dependency_health is not None:
            await self.dependency_health.close()
        if self.feed is not None:
            await self.feed.close()
        if self.alert_rules is not None:
            self.alert_rules.close()
        if self.http is None:
            await self.server.stop(grace)
        else:  # the HTTP server's own grace is the same (start_server)
            await asyncio.gather(self.server.stop(grace), self.http.stop())


def token_verifier(auth: AuthConfig) -> TokenVerifier | None:
    """The verifier of bearer tokens, or None (loudly logged) when authentication is explicitly disabled.

    Raises:
        ConfigError: neither a key nor AUDIT_AUTH_DISABLED=true, or an unusable key.
    """
    auth.require_verification()
    if auth.disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED (AUDIT_AUTH_DISABLED=true): every caller can read every tenant's events"
        )
        return None
    verifier = TokenVerifier(auth)
    log.info("bearer tokens verified with %s (issuer %r, audience %r)", verifier.algorithm, auth.issuer, auth.audience)
    return verifier


async def start_server(
    config: ApiConfig,
    auth: AuthConfig,
    pool: asyncpg.Pool,
    *,
    feed: LiveFeed | None = None,
    tail: TailConfig | None = None,
    checkpoint_keys: tuple[Verifier, ...] = (),
    read_budget: ReadBudget | None = None,
    certificates: CertificateFiles | None = None,
    database_url: str = "",
    nc: NatsClient | None = None,
    on_database_checked: Callable[[bool], None] | None = None,
    mask: SecretMask | None = None,
    address_policy: AddressPolicy | None = None,
    http: HttpConfig | None = None,
) -> RunningServer:
    """Starts serving; the caller stops it with `RunningServer.stop`.

    Args:
        certificates: the TLS files to serve (read from config.tls when it is enabled and they are not given).
        database_url: when given, health follows PostgreSQL (and `nc`, when given) every
            config.health_check_interval_seconds; without it, health is SERVING until shutdown.
        feed: a started live feed for TailEvents (without one, TailEvents is UNAVAILABLE).
        checkpoint_keys: the public keys VerifyChain checks signed checkpoints with.
        mask: what LogAppender masks in the states it copies into rule-change events (AUDIT_SECRET_KEYS).
        address_policy: where destinations may point (delivery/policy.address_policy; by default, only at
            public addresses).
        read_budget: the bytes the process's reads may hold at once, shared with the feed (a new one of
            config.read_buffer_bytes when not given).
        http: the HTTP port to serve the three services on too, with the same servicers and token verifier (none: off).
    """
    if read_budget is None:
        read_budget = ReadBudget(config.read_buffer_bytes, wait_seconds=config.query_timeout_seconds)
    _quiet_client_disconnects()
    # Metrics come first of all, to see the status every call ends with; the tracing interceptor (when spans are
    # recorded) next, so its span covers the rest of the call and sees the status the error mapper aborts with; the
    # error mapper before authentication, so it also turns authentication failures into statuses.
    verifier = token_verifier(auth)
    server = aio.server(
        interceptors=[
            RpcMetricsInterceptor(),
            *server_interceptors([SERVICE_NAME, ALERT_RULES_SERVICE_NAME, DESTINATIONS_SERVICE_NAME]),
            ErrorMappingInterceptor(),
            AuthInterceptor(verifier, SERVICE_NAME, ALERT_RULES_SERVICE_NAME, DESTINATIONS_SERVICE_NAME),
        ]
    )
    audit_servicer = AuditServicer(
        pool,
        max_response_bytes=config.max_response_bytes,
        feed=feed,
        tail_config=tail,
        checkpoint_keys=checkpoint_keys,
        read_budget=read_budget,
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(audit_servicer, server)
    alert_rules = AlertRuleServicer(pool, LogAppender(mask), watch_config=tail)
    alert_rules_pb2_grpc.add_AlertRuleServiceServicer_to_server(alert_rules, server)
    destinations = DestinationServicer(pool, LogAppender(mask), address_policy)
    destinations_pb2_grpc.add_DestinationServiceServicer_to_server(destinations, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            ALERT_RULES_SERVICE_NAME,
            DESTINATIONS_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if certificates is None and config.tls.enabled:
        certificates = CertificateFiles(config.tls)
    try:
        if certificates is None:
            port = server.add_insecure_port(config.grpc_address)
        else:
            port = server.add_secure_port(config.grpc_address, certificates.server_credentials())
    except RuntimeError as error:
        raise ConfigError("AUDIT_GRPC_ADDRESS", f"cannot listen on {config.grpc_address}: {error}") from None
    dependency_health = None
    if database_url:
        dependency_health = DependencyHealth(
            health,
            ("", SERVICE_NAME, ALERT_RULES_SERVICE_NAME, DESTINATIONS_SERVICE_NAME),
            database_url,
            nc,
            interval=config.health_check_interval_seconds,
            timeout=config.health_check_timeout_seconds,
            on_database_checked=on_database_checked,
        )
        await dependency_health.check()  # the first answer already says whether the dependencies are there
    else:
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health.set(ALERT_RULES_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health.set(DESTINATIONS_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    http_server = None
    if http is not None and http.enabled:
        http_server = await start_http_server(
            http.address,
            http_application(
                connect_application(verifier, audit_servicer, alert_rules, destinations),
                console_application(verifier, audit_servicer),
                http.cors_origins,
            ),
            grace_seconds=config.shutdown_grace_seconds,
            tls=config.tls,
        )
    try:
        await server.start()
    except BaseException:
        if http_server is not None:
            await http_server.stop()
        raise
    if dependency_health is not None:
        dependency_health.start()
    security = "plaintext" if certificates is None else "TLS"
    if certificates is not None and config.tls.client_ca_file:
        security += " with client certificates"
    log.info("gRPC API listening on %s (port %d, %s)", config.grpc_address, port, security)
    return RunningServer(
        server=server,
        health=health,
        port=port,
        feed=feed,
        dependency_health=dependency_health,
        certificates=certificates,
        alert_rules=alert_rules,
        http=http_server,
    )
