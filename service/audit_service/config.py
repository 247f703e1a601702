"""Configuration: one frozen dataclass per concern, loaded in one place from environment variables.

Precedence: explicit argument > environment > default. `load_config(env)` takes any mapping, so tests
inject their own; bad values raise ConfigError with one line naming the variable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from audit_client.connection import inbox_prefix, redact
from audit_client.validation import Limits

from .core.masking import DEFAULT_SECRET_KEYS, SecretMask, compile_secret_keys
from .errors import ConfigError

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = ""
    """PostgreSQL URL of the service role (INSERT and SELECT on the log), e.g. postgresql://app@db/audit."""
    migrate_url: str = ""
    """PostgreSQL URL used by `migrate` (the schema owner); defaults to `url`."""
    pool_max_size: int = 10
    """Most connections one process opens."""


@dataclass(frozen=True, slots=True)
class NatsConfig:
    url: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma-separated, with the credentials of this process's NATS user:
    nats://ingest:<password>@nats:4222. Log `redacted_url`, never this."""
    subject_prefix: str = "audit"
    """Subjects are <prefix>.events.<tenant>, <prefix>.dead.<reason>, <prefix>.committed.<tenant> and
    <prefix>.alerts.<tenant>."""
    stream_prefix: str = "AUDIT"
    """Streams are <prefix>_EVENTS, <prefix>_DEAD and <prefix>_ALERTS."""
    duplicate_window_seconds: float = 120.0
    """JetStream's de-duplication window on Nats-Msg-Id (the log de-duplicates forever on its own)."""
    events_max_age_seconds: float = 7 * 24 * 3600.0
    """How long AUDIT_EVENTS keeps messages after they are stored, for replays."""
    alerts_max_age_seconds: float = 7 * 24 * 3600.0
    """How long AUDIT_ALERTS keeps the alerts the reactor published (the alerts table keeps them for good)."""
    tls_ca_file: str = ""
    """PEM file of the CA(s) that signed the NATS servers' certificates (unset: the system's trusted CAs). Setting
    it, or a `tls://` URL, makes the connection refuse a server that does not speak TLS."""
    tls_cert_file: str = ""
    """PEM certificate this process presents to NATS when the server verifies clients (with `tls_key_file`)."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file` (unencrypted)."""
    tls_handshake_first: bool = False
    """Start TLS before NATS's greeting (the server needs `handshake_first: true` in its tls block). Without it,
    nats-py upgrades to TLS when the server's plaintext greeting asks for it, which an active attacker can strip."""

    @property
    def tls_required(self) -> bool:
        """True when the connection must be TLS: a `tls://` URL, any TLS file or handshake-first configured."""
        return any(server.startswith("tls://") for server in self.servers) or bool(
            self.tls_ca_file or self.tls_cert_file or self.tls_handshake_first
        )

    @property
    def events_stream(self) -> str:
        return f"{self.stream_prefix}_EVENTS"

    @property
    def dead_stream(self) -> str:
        return f"{self.stream_prefix}_DEAD"

    @property
    def alerts_stream(self) -> str:
        return f"{self.stream_prefix}_ALERTS"

    @property
    def events_subject_prefix(self) -> str:
        return f"{self.subject_prefix}.events"

    @property
    def dead_subject_prefix(self) -> str:
        return f"{self.subject_prefix}.dead"

    @property
    def committed_subject_prefix(self) -> str:
        return f"{self.subject_prefix}.committed"

    @property
    def alerts_subject_prefix(self) -> str:
        return f"{self.subject_prefix}.alerts"

    @property
    def servers(self) -> list[str]:
        return [server.strip() for server in self.url.split(",") if server.strip()]

    @property
    def redacted_url(self) -> str:
        """`url` without passwords, for messages and logs."""
        return redact(self.url)

    @property
    def inbox_prefix(self) -> str:
        """`_INBOX.<user>` when `url` names a user and a password (the only inboxes NATS lets that user read),
        else `_INBOX`."""
        return inbox_prefix(self.servers)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    durable: str = "audit-ingest"
    """Name of the durable pull consumer shared by every ingest worker."""
    batch_size: int = 500
    """Most messages fetched and appended in one transaction."""
    fetch_timeout_seconds: float = 1.0
    """How long one fetch waits for messages before the worker checks for shutdown."""
    ack_wait_seconds: float = 30.0
    """Seconds before JetStream redelivers a message that was fetched but not acknowledged."""
    lag_refresh_seconds: float = 5.0
    """How often a worker reads its consumer's pending count for the audit.ingest.pending gauge."""
    limits: Limits = field(default_factory=Limits)
    """Event size and time limits."""
    mask: SecretMask = field(default_factory=SecretMask)
    """Which keys' values are masked at ingest in metadata and states (AUDIT_SECRET_KEYS: a regular expression
    found in the key folded to lower case without '-', '_', '.' and spaces)."""


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: int = 90
    """Events are kept this long after they were recorded; `audit-service retention` archives and drops the
    monthly partitions that ended longer ago."""
    archive_dir: str = "audit-archives"
    """Directory the archives (compressed NDJSON and their manifests) are written to."""


@dataclass(frozen=True, slots=True)
class CheckpointConfig:
    signing_key_file: str = ""
    """PEM file of the Ed25519 private key that signs checkpoints of the chain heads (unset: no checkpoints)."""
    verify_key_files: tuple[str, ...] = ()
    """PEM files of the Ed25519 public keys checkpoints are verified with, besides the signing key's public half:
    after a key rotation, the retired keys that signed older checkpoints (AUDIT_CHECKPOINT_VERIFY_KEY_FILE,
    comma-separated)."""
    interval_seconds: float = 60.0
    """How often the ingest worker signs a checkpoint of the chain heads (when the log has grown)."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS of the gRPC API. The files are read again when they change (checked at each new connection), so a
    renewed certificate is served without a restart and without closing the open connections."""

    cert_file: str = ""
    """PEM certificate chain the server presents (leaf first); unset: the API serves plaintext."""
    key_file: str = ""
    """PEM private key of `cert_file` (unencrypted)."""
    client_ca_file: str = ""
    """PEM CA certificate(s) clients' certificates must be signed by: set, every client must present one (mTLS)."""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    grpc_address: str = "0.0.0.0:50051"
    """host:port the gRPC server listens on (port 0 picks a free port)."""
    shutdown_grace_seconds: float = 10.0
    """On SIGTERM, how long in-flight RPCs may take before they are cancelled."""
    query_timeout_seconds: float = 30.0
    """Longest one read statement may run; a longer one is cancelled in PostgreSQL and the call ends with
    DEADLINE_EXCEEDED. (A client's own gRPC deadline cancels the statement too.)"""
    max_response_bytes: int = 4 * 1024 * 1024
    """Largest response message: a ListEvents page ends early rather than exceed it, and a CountEvents answer
    that would exceed it is refused. 4 MiB is what gRPC clients accept by default."""
    read_buffer_bytes: int = 64 * 1024 * 1024
    """Bytes of events that this process's reads hold at once, fetched from PostgreSQL and not yet turned into
    responses: a read waits for room (RESOURCE_EXHAUSTED after query_timeout_seconds). Each read asks for its own
    page budget: max_response_bytes for ListEvents, less for tails and exports (api/read_budget.py)."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """Server certificate, key and optional client CA; no certificate: plaintext."""
    health_check_interval_seconds: float = 2.0
    """How often the API checks PostgreSQL (`SELECT 1` on a connection of its own) and its NATS connection, and
    reports grpc.health.v1 NOT_SERVING while either is unreachable."""
    health_check_timeout_seconds: float = 1.0
    """Longest one PostgreSQL check may take (connecting included) before it counts as unreachable."""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP port of `serve`: the same three services as the gRPC port, for browsers and curl."""

    address: str = ""
    """AUDIT_HTTP_ADDRESS: host:port serving AuditService, AlertRuleService and DestinationService over the Connect
    protocol (JSON or binary) and gRPC-Web, with the gRPC port's servicers, authentication and error mapping (port 0
    picks a free port). Empty: no HTTP port. It serves TLS with the gRPC port's files (ApiConfig.tls) when they are
    set."""
    cors_origins: tuple[str, ...] = ()
    """AUDIT_HTTP_CORS_ORIGINS: origins (scheme://host[:port], comma-separated) whose pages may call the services
    from a browser. Empty: no CORS (the console, served by this port, is same-origin and needs none)."""

    @property
    def enabled(self) -> bool:
        return bool(self.address)


def _cors_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    origins = []
    for origin in (item.strip() for item in env.get("AUDIT_HTTP_CORS_ORIGINS", "").split(",")):
        if not origin:
            continue
        parts = urlsplit(origin)
        try:
            port_ok = parts.port != 0  # None (the scheme's) or 1..65535; ValueError for anything else
        except ValueError:
            port_ok = False
        if (
            not port_ok
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ConfigError(
                "AUDIT_HTTP_CORS_ORIGINS",
                f"expected origins such as https://console.example.com (no path, no '*'), got {origin!r}",
            )
        origins.append(origin.lower())
    return tuple(origins)


MAX_REACTOR_PAGE = 100_000
"""The most events or alerts of one reactor page (a page is bounded in bytes too); a larger value could not even
travel as a query's LIMIT past 2**63 - 1, and failed there, after start-up."""
MAX_WEBHOOK_ATTEMPTS = 2**31 - 1
"""An attempt's number is an int32 (DeliveryAttempt.attempt, delivery_attempts.attempt)."""


@dataclass(frozen=True, slots=True)
class ReactorConfig:
    """How `react` reads the log and the alerts."""

    page_events: int = 500
    """AUDIT_REACTOR_PAGE_EVENTS: events evaluated per step (one transaction stores their alerts and the
    checkpoint)."""
    publish_page_alerts: int = 100
    """AUDIT_REACTOR_PUBLISH_PAGE_ALERTS: alerts published on NATS per page (then the checkpoint advances)."""


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How the reactor delivers to destinations (webhooks, HTTP, Splunk HEC, syslog)."""

    allow_private: bool = False
    """AUDIT_DESTINATIONS_ALLOW_PRIVATE: whether destinations may point at loopback or private addresses
    (10/8, 172.16/12, 192.168/16, fc00::/7, 127/8, ::1). Off: only public addresses. Link-local and cloud metadata
    addresses, and this service's own ports, are refused either way (SSRF)."""
    webhook_max_attempts: int = 8
    """AUDIT_WEBHOOK_MAX_ATTEMPTS: attempts of one alert to a webhook before it is given up and shown as failed."""
    retry_base_seconds: float = 1.0
    """AUDIT_DELIVERY_RETRY_BASE_SECONDS: the first retry's largest delay; each next one doubles it (full
    jitter: the delay is uniform between 0 and that bound)."""
    retry_cap_seconds: float = 60.0
    """AUDIT_DELIVERY_RETRY_CAP_SECONDS: the largest delay between two attempts."""
    request_timeout_seconds: float = 10.0
    """AUDIT_DELIVERY_TIMEOUT_SECONDS: longest one request (or syslog write) may take."""
    poll_seconds: float = 0.5
    """AUDIT_DELIVERY_POLL_SECONDS: how often caught-up subscriptions look for new events, alerts and changed
    destinations."""


@dataclass(frozen=True, slots=True)
class TailConfig:
    buffer_events: int = 10_000
    """Most live events held for one TailEvents subscriber that is slower than the log; beyond that it is moved
    back to reading from PostgreSQL (no loss), and its buffer is freed."""
    buffer_bytes: int = 64 * 1024 * 1024
    """The same bound in serialized bytes (events can be large)."""
    heartbeat_seconds: float = 5.0
    """An idle tail sends a heartbeat this often."""
    checkpoint_seconds: float = 1.0
    """While everything is filtered out, a tail sends its checkpoint at most this often."""
    poll_seconds: float = 1.0
    """How often each API replica reads the log's head, to find appends whose announcements it missed (the
    most they are delayed)."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt_secret: str = ""
    """HS256 shared secret (at least 32 characters) that signs bearer tokens."""
    jwt_public_key_file: str = ""
    """PEM public key verifying RS256 (RSA) or ES256 (P-256) tokens, instead of a secret."""
    jwt_private_key_file: str = ""
    """PEM private key used only by `audit-service token` to mint RS256/ES256 tokens."""
    issuer: str = "audit-service"
    """Required `iss` claim."""
    audience: str = "audit-api"
    """Required `aud` claim."""
    disabled: bool = False
    """Serve without authentication: every caller sees every tenant. Only on an explicit setting."""

    @property
    def configured(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key_file)

    def require_verification(self) -> AuthConfig:
        """Returns self, or raises ConfigError when the API would have no way to check tokens."""
        if not self.disabled and not self.configured:
            raise ConfigError(
                "AUDIT_AUTH_JWT_SECRET",
                "set it (or AUDIT_AUTH_JWT_PUBLIC_KEY_FILE) to verify bearer tokens, "
                "or AUDIT_AUTH_DISABLED=true to serve without authentication",
            )
        return self


TRACES_EXPORTERS = ("otlp", "console", "none")
METRICS_EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
LOG_FORMATS = ("text", "json")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """OpenTelemetry and Prometheus: the standard OTEL_* variables (validated here, read by the SDK) and
    AUDIT_METRICS_ADDRESS. Off unless configured."""

    service_name: str = ""
    """OTEL_SERVICE_NAME; empty: the process's own default (audit-api, audit-ingest, audit-dev...)."""
    traces_exporters: tuple[str, ...] = ()
    """OTEL_TRACES_EXPORTER: otlp and/or console (none or unset: no spans are recorded); unset with an OTLP
    endpoint set means otlp."""
    metrics_exporters: tuple[str, ...] = ()
    """OTEL_METRICS_EXPORTER: otlp and/or console, pushed every OTEL_METRIC_EXPORT_INTERVAL ms (Prometheus
    scraping is AUDIT_METRICS_ADDRESS, separate)."""
    traces_protocol: str = "grpc"
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf."""
    metrics_protocol: str = "grpc"
    """OTEL_EXPORTER_OTLP_METRICS_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf."""
    metrics_address: str = ""
    """AUDIT_METRICS_ADDRESS, host:port of the HTTP server of /metrics (Prometheus text), /livez and /readyz;
    empty: none."""
    export_timeout_seconds: float = 5.0
    """How long one OTLP export may take, retries included (OTEL_EXPORTER_OTLP_TIMEOUT, which Python's
    exporters read in seconds, overrides it); spans that find the queue full meanwhile are dropped."""

    @property
    def tracing(self) -> bool:
        return bool(self.traces_exporters)


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    tail: TailConfig = field(default_factory=TailConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log_level: str = "INFO"
    """Python logging level name."""
    log_format: str = "text"
    """AUDIT_LOG_FORMAT: text (one line per record) or json (one JSON object per line)."""
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    reactor: ReactorConfig = field(default_factory=ReactorConfig)

    def require_database(self) -> Config:
        """Returns self, or raises ConfigError when no database URL is configured."""
        if not self.database.url:
            raise ConfigError("AUDIT_DATABASE_URL", "is required (e.g. postgresql://audit@localhost/audit)")
        return self


def _positive_int(env: Mapping[str, str], name: str, default: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(name, f"expected a positive integer, got {raw!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"expected at most {maximum:,}, got {raw!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a positive number of seconds, got {raw!r}") from None
    if not 0 < value < math.inf:  # inf would make a loop sleep, or a wait last, forever
        raise ConfigError(name, f"expected a positive number of seconds, got {raw!r}")
    return value


def _postgres_url(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "")
    if raw and urlsplit(raw).scheme not in ("postgres", "postgresql"):
        raise ConfigError(name, f"expected a postgresql:// URL, got {raw!r}")
    return raw


def _nats_url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    for server in raw.split(","):
        parts = urlsplit(server.strip())
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ConfigError(
                name, f"expected nats://[user:password@]host:port (comma-separated for several), got {redact(raw)!r}"
            )
    try:
        inbox_prefix(raw)
    except ValueError as error:
        raise ConfigError(name, str(error)) from None
    return raw


def parse_grpc_address(raw: str, name: str = "AUDIT_GRPC_ADDRESS") -> tuple[str, int]:
    """Splits host:port (IPv6 in brackets); raises ConfigError when malformed."""
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(name, f"expected host:port, got {raw!r}")
    return host, int(port_text)


def _pattern(env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str]) -> str:
    raw = env.get(name) or default
    if not pattern.fullmatch(raw):
        raise ConfigError(name, f"must match {pattern.pattern}, got {raw!r}")
    return raw


MIN_RESPONSE_BYTES = 16 * 1024
"""Smallest AUDIT_MAX_RESPONSE_BYTES: room for a page token, a total and a few events."""
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_MIN_SECRET_CHARS = 32


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _secret_mask(env: Mapping[str, str]) -> SecretMask:
    rule = env.get("AUDIT_SECRET_KEYS") or DEFAULT_SECRET_KEYS
    try:
        return compile_secret_keys(rule)
    except re.error as error:
        raise ConfigError("AUDIT_SECRET_KEYS", f"is not a regular expression: {error}") from None


def _readable_file(env: Mapping[str, str], name: str) -> str:
    path = env.get(name, "")
    if path and not os.access(path, os.R_OK):
        raise ConfigError(name, f"cannot read {path!r}")
    return path


def _readable_files(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of files, each readable."""
    paths = tuple(path.strip() for path in env.get(name, "").split(",") if path.strip())
    for path in paths:
        if not os.access(path, os.R_OK):
            raise ConfigError(name, f"cannot read {path!r}")
    return paths


def _paired_files(env: Mapping[str, str], cert_name: str, key_name: str) -> tuple[str, str]:
    """A certificate file and its key file: both or neither, each readable."""
    cert_file, key_file = _readable_file(env, cert_name), _readable_file(env, key_name)
    if cert_file and not key_file:
        raise ConfigError(key_name, f"is required with {cert_name} (the certificate's private key)")
    if key_file and not cert_file:
        raise ConfigError(cert_name, f"is required with {key_name} (the key's certificate)")
    return cert_file, key_file


def _grpc_tls(env: Mapping[str, str]) -> TlsConfig:
    cert_file, key_file = _paired_files(env, "AUDIT_GRPC_TLS_CERT_FILE", "AUDIT_GRPC_TLS_KEY_FILE")
    client_ca_file = _readable_file(env, "AUDIT_GRPC_TLS_CLIENT_CA_FILE")
    if client_ca_file and not cert_file:
        raise ConfigError(
            "AUDIT_GRPC_TLS_CLIENT_CA_FILE", "needs AUDIT_GRPC_TLS_CERT_FILE and AUDIT_GRPC_TLS_KEY_FILE (mTLS is TLS)"
        )
    return TlsConfig(cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file)


def _auth(env: Mapping[str, str]) -> AuthConfig:
    secret = env.get("AUDIT_AUTH_JWT_SECRET", "")
    if secret and len(secret) < _MIN_SECRET_CHARS:
        raise ConfigError("AUDIT_AUTH_JWT_SECRET", f"must be at least {_MIN_SECRET_CHARS} characters")
    public_key_file = _readable_file(env, "AUDIT_AUTH_JWT_PUBLIC_KEY_FILE")
    if secret and public_key_file:
        raise ConfigError("AUDIT_AUTH_JWT_PUBLIC_KEY_FILE", "set either it or AUDIT_AUTH_JWT_SECRET, not both")
    disabled = _bool(env, "AUDIT_AUTH_DISABLED")
    if disabled and (secret or public_key_file):
        raise ConfigError("AUDIT_AUTH_DISABLED", "is true while a JWT key is configured; choose one")
    return AuthConfig(
        jwt_secret=secret,
        jwt_public_key_file=public_key_file,
        jwt_private_key_file=_readable_file(env, "AUDIT_AUTH_JWT_PRIVATE_KEY_FILE"),
        issuer=env.get("AUDIT_AUTH_ISSUER") or AuthConfig().issuer,
        audience=env.get("AUDIT_AUTH_AUDIENCE") or AuthConfig().audience,
        disabled=disabled,
    )


def _choices(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> tuple[str, ...]:
    """A comma-separated list of values among `allowed`; "none" alone means the empty tuple."""
    raw = env.get(name, "").strip().lower() or default
    values = tuple(dict.fromkeys(value.strip() for value in raw.split(",") if value.strip()))
    for value in values:
        if value not in allowed:
            hint = " (Prometheus scrapes AUDIT_METRICS_ADDRESS instead)" if value == "prometheus" else ""
            raise ConfigError(name, f"expected {' or '.join(allowed)} (comma-separated), got {raw!r}{hint}")
    if "none" in values and len(values) > 1:
        raise ConfigError(name, f"none cannot be combined with other exporters, got {raw!r}")
    return tuple(value for value in values if value != "none")


def _otlp_protocol(env: Mapping[str, str], signal: str) -> str:
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = env.get(name, "").strip().lower()  # OpenTelemetry's enumerated values are case-insensitive
        if raw:
            if raw not in OTLP_PROTOCOLS:
                raise ConfigError(name, f"expected {' or '.join(OTLP_PROTOCOLS)}, got {raw!r}")
            return raw
    return "grpc"


def _sampler(env: Mapping[str, str]) -> None:
    """OTEL_TRACES_SAMPLER and its argument are read by the SDK, which only warns about bad ones: refuse them."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        raise ConfigError("OTEL_TRACES_SAMPLER", f"expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    argument = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if argument and sampler.endswith("traceidratio"):
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"expected a ratio from 0 to 1, got {argument!r}")


OTEL_SDK_INTEGERS = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)
"""Read by the SDK with int(); a bad one is logged with a traceback and replaced by the default."""
OTEL_SDK_NUMBERS = (
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)
"""Read by the SDK with float(); a bad one raises from the exporter's or reader's constructor."""
OTLP_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
OTLP_FILES = tuple(
    f"OTEL_EXPORTER_OTLP{signal}_{kind}"
    for signal in ("", "_TRACES", "_METRICS")
    for kind in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY")
)
"""PEM files the OTLP exporters read at start-up (a missing one is a traceback there)."""


def _sdk_settings(env: Mapping[str, str]) -> None:
    """The OTEL_* numbers, endpoints and files the SDK reads itself: refused here, with one line, rather than by a
    traceback at start-up (or a warning and a silent default)."""
    for name in (*OTEL_SDK_INTEGERS, *OTEL_SDK_NUMBERS):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw) if name in OTEL_SDK_INTEGERS else float(raw)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            kind = "integer" if name in OTEL_SDK_INTEGERS else "number"
            raise ConfigError(name, f"expected a positive {kind}, got {raw!r}")
    for name in OTLP_ENDPOINTS:
        raw = env.get(name, "").strip()
        try:
            urlsplit(raw).port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError as error:
            raise ConfigError(name, f"expected a URL such as http://collector:4317, got {raw!r} ({error})") from None
    for name in OTLP_FILES:
        _readable_file(env, name)


def _telemetry(env: Mapping[str, str]) -> TelemetryConfig:
    metrics_address = env.get("AUDIT_METRICS_ADDRESS", "").strip()
    if metrics_address:
        parse_grpc_address(metrics_address, "AUDIT_METRICS_ADDRESS")
    traces = _choices(
        env,
        "OTEL_TRACES_EXPORTER",
        TRACES_EXPORTERS,
        "otlp" if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else "none",
    )
    metrics = _choices(
        env,
        "OTEL_METRICS_EXPORTER",
        METRICS_EXPORTERS,
        "otlp" if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") else "none",
    )
    traces_protocol, metrics_protocol = _otlp_protocol(env, "TRACES"), _otlp_protocol(env, "METRICS")
    _sampler(env)
    _sdk_settings(env)
    if _bool(env, "OTEL_SDK_DISABLED"):
        traces = metrics = ()
    return TelemetryConfig(
        service_name=env.get("OTEL_SERVICE_NAME", "").strip(),
        traces_exporters=traces,
        metrics_exporters=metrics,
        traces_protocol=traces_protocol,
        metrics_protocol=metrics_protocol,
        metrics_address=metrics_address,
    )


def load_config(env: Mapping[str, str] | None = None, **overrides: object) -> Config:
    """Builds the configuration from environment variables.

    Args:
        env: the variables to read (os.environ by default).
        **overrides: explicit values that win over the environment, by Config field name
            (database, nats, ingest, api, http, tail, auth, log_level).

    Raises:
        ConfigError: one line naming the bad variable.
    """
    env = os.environ if env is None else env
    database_url = _postgres_url(env, "AUDIT_DATABASE_URL")
    database = DatabaseConfig(
        url=database_url,
        migrate_url=_postgres_url(env, "AUDIT_MIGRATE_DATABASE_URL") or database_url,
        pool_max_size=_positive_int(env, "AUDIT_DATABASE_POOL_MAX_SIZE", DatabaseConfig().pool_max_size),
    )
    nats_cert_file, nats_key_file = _paired_files(env, "AUDIT_NATS_TLS_CERT_FILE", "AUDIT_NATS_TLS_KEY_FILE")
    nats = NatsConfig(
        url=_nats_url(env, "AUDIT_NATS_URL", NatsConfig().url),
        subject_prefix=_pattern(env, "AUDIT_SUBJECT_PREFIX", NatsConfig().subject_prefix, _SUBJECT_PREFIX),
        stream_prefix=_pattern(env, "AUDIT_STREAM_PREFIX", NatsConfig().stream_prefix, _TOKEN),
        duplicate_window_seconds=_positive_float(
            env, "AUDIT_DUPLICATE_WINDOW_SECONDS", NatsConfig().duplicate_window_seconds
        ),
        events_max_age_seconds=_positive_float(
            env, "AUDIT_EVENTS_MAX_AGE_SECONDS", NatsConfig().events_max_age_seconds
        ),
        alerts_max_age_seconds=_positive_float(
            env, "AUDIT_ALERTS_MAX_AGE_SECONDS", NatsConfig().alerts_max_age_seconds
        ),
        tls_ca_file=_readable_file(env, "AUDIT_NATS_TLS_CA_FILE"),
        tls_cert_file=nats_cert_file,
        tls_key_file=nats_key_file,
        tls_handshake_first=_bool(env, "AUDIT_NATS_TLS_HANDSHAKE_FIRST"),
    )
    default_limits = Limits()
    ingest = IngestConfig(
        durable=_pattern(env, "AUDIT_INGEST_DURABLE", IngestConfig().durable, _TOKEN),
        batch_size=_positive_int(env, "AUDIT_INGEST_BATCH_SIZE", IngestConfig().batch_size),
        fetch_timeout_seconds=_positive_float(
            env, "AUDIT_INGEST_FETCH_TIMEOUT_SECONDS", IngestConfig().fetch_timeout_seconds
        ),
        ack_wait_seconds=_positive_float(env, "AUDIT_INGEST_ACK_WAIT_SECONDS", IngestConfig().ack_wait_seconds),
        lag_refresh_seconds=_positive_float(
            env, "AUDIT_INGEST_LAG_REFRESH_SECONDS", IngestConfig().lag_refresh_seconds
        ),
        limits=replace(
            default_limits,
            max_event_bytes=_positive_int(env, "AUDIT_MAX_EVENT_BYTES", default_limits.max_event_bytes),
            max_clock_skew_seconds=_positive_int(
                env, "AUDIT_MAX_CLOCK_SKEW_SECONDS", default_limits.max_clock_skew_seconds
            ),
        ),
        mask=_secret_mask(env),
    )
    retention = RetentionConfig(
        days=_positive_int(env, "AUDIT_RETENTION_DAYS", RetentionConfig().days),
        archive_dir=env.get("AUDIT_ARCHIVE_DIR") or RetentionConfig().archive_dir,
    )
    checkpoints = CheckpointConfig(
        signing_key_file=_readable_file(env, "AUDIT_CHECKPOINT_SIGNING_KEY_FILE"),
        verify_key_files=_readable_files(env, "AUDIT_CHECKPOINT_VERIFY_KEY_FILE"),
        interval_seconds=_positive_float(env, "AUDIT_CHECKPOINT_INTERVAL_SECONDS", CheckpointConfig().interval_seconds),
    )
    grpc_address = env.get("AUDIT_GRPC_ADDRESS") or ApiConfig().grpc_address
    parse_grpc_address(grpc_address)
    api = ApiConfig(
        grpc_address=grpc_address,
        shutdown_grace_seconds=_positive_float(env, "AUDIT_SHUTDOWN_GRACE_SECONDS", ApiConfig().shutdown_grace_seconds),
        query_timeout_seconds=_positive_float(env, "AUDIT_QUERY_TIMEOUT_SECONDS", ApiConfig().query_timeout_seconds),
        max_response_bytes=_positive_int(env, "AUDIT_MAX_RESPONSE_BYTES", ApiConfig().max_response_bytes),
        read_buffer_bytes=_positive_int(env, "AUDIT_READ_BUFFER_BYTES", ApiConfig().read_buffer_bytes),
        tls=_grpc_tls(env),
        health_check_interval_seconds=_positive_float(
            env, "AUDIT_HEALTH_CHECK_INTERVAL_SECONDS", ApiConfig().health_check_interval_seconds
        ),
        health_check_timeout_seconds=_positive_float(
            env, "AUDIT_HEALTH_CHECK_TIMEOUT_SECONDS", ApiConfig().health_check_timeout_seconds
        ),
    )
    if api.max_response_bytes < MIN_RESPONSE_BYTES:
        raise ConfigError("AUDIT_MAX_RESPONSE_BYTES", f"must be at least {MIN_RESPONSE_BYTES}")
    if api.read_buffer_bytes < api.max_response_bytes:
        raise ConfigError(
            "AUDIT_READ_BUFFER_BYTES", f"must be at least AUDIT_MAX_RESPONSE_BYTES ({api.max_response_bytes}): one page"
        )
    http_address = env.get("AUDIT_HTTP_ADDRESS", "").strip()
    if http_address:
        parse_grpc_address(http_address, "AUDIT_HTTP_ADDRESS")
    tail = TailConfig(
        buffer_events=_positive_int(env, "AUDIT_TAIL_BUFFER_EVENTS", TailConfig().buffer_events),
        buffer_bytes=_positive_int(env, "AUDIT_TAIL_BUFFER_BYTES", TailConfig().buffer_bytes),
        heartbeat_seconds=_positive_float(env, "AUDIT_TAIL_HEARTBEAT_SECONDS", TailConfig().heartbeat_seconds),
        checkpoint_seconds=_positive_float(env, "AUDIT_TAIL_CHECKPOINT_SECONDS", TailConfig().checkpoint_seconds),
        poll_seconds=_positive_float(env, "AUDIT_TAIL_POLL_SECONDS", TailConfig().poll_seconds),
    )
    log_level = (env.get("AUDIT_LOG_LEVEL") or "INFO").upper()
    if log_level not in _LOG_LEVELS:
        raise ConfigError("AUDIT_LOG_LEVEL", f"expected one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")
    log_format = (env.get("AUDIT_LOG_FORMAT") or "text").strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError("AUDIT_LOG_FORMAT", f"expected {' or '.join(LOG_FORMATS)}, got {log_format!r}")
    config = Config(
        database=database,
        nats=nats,
        ingest=ingest,
        api=api,
        http=HttpConfig(address=http_address, cors_origins=_cors_origins(env)),
        tail=tail,
        auth=_auth(env),
        log_level=log_level,
        log_format=log_format,
        telemetry=_telemetry(env),
        retention=retention,
        checkpoints=checkpoints,
        delivery=_delivery(env),
        reactor=ReactorConfig(
            page_events=_positive_int(env, "AUDIT_REACTOR_PAGE_EVENTS", ReactorConfig().page_events, MAX_REACTOR_PAGE),
            publish_page_alerts=_positive_int(
                env, "AUDIT_REACTOR_PUBLISH_PAGE_ALERTS", ReactorConfig().publish_page_alerts, MAX_REACTOR_PAGE
            ),
        ),
    )
    return replace(config, **overrides) if overrides else config


def _delivery(env: Mapping[str, str]) -> DeliveryConfig:
    default = DeliveryConfig()
    delivery = DeliveryConfig(
        allow_private=_bool(env, "AUDIT_DESTINATIONS_ALLOW_PRIVATE"),
        webhook_max_attempts=_positive_int(
            env, "AUDIT_WEBHOOK_MAX_ATTEMPTS", default.webhook_max_attempts, MAX_WEBHOOK_ATTEMPTS
        ),
        retry_base_seconds=_positive_float(env, "AUDIT_DELIVERY_RETRY_BASE_SECONDS", default.retry_base_seconds),
        retry_cap_seconds=_positive_float(env, "AUDIT_DELIVERY_RETRY_CAP_SECONDS", default.retry_cap_seconds),
        request_timeout_seconds=_positive_float(env, "AUDIT_DELIVERY_TIMEOUT_SECONDS", default.request_timeout_seconds),
        poll_seconds=_positive_float(env, "AUDIT_DELIVERY_POLL_SECONDS", default.poll_seconds),
    )
    if delivery.retry_cap_seconds < delivery.retry_base_seconds:
        raise ConfigError(
            "AUDIT_DELIVERY_RETRY_CAP_SECONDS",
            f"must be at least AUDIT_DELIVERY_RETRY_BASE_SECONDS ({delivery.retry_base_seconds})",
        )
    return delivery
