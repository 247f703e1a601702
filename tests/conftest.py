"""Session fixtures: real PostgreSQL and NATS servers (from the project's wheels), isolated per test by names.

Set AUDIT_TEST_POSTGRES_URL (a superuser URL) and/or AUDIT_TEST_NATS_URL to run against external servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import hypothesis
import nats
import pytest
from audit.v1 import alert_rules_pb2_grpc, audit_service_pb2_grpc, destinations_pb2_grpc, event_pb2
from audit_client import Publisher
from audit_client import connect as connect_publisher
from audit_service.api.server import RunningServer
from audit_service.auth.tokens import mint_token
from audit_service.config import AuthConfig, Config, load_config
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.ingest.worker import IngestWorker
from audit_service.runtime import run_api, run_ingest
from audit_service.store.append import LogAppender
from audit_service.store.migrate import migrate
from nats.aio.client import Client as NatsClient

from .factories import content_of, stamp

# Hypothesis, for the whole suite. No deadline and no too_slow health check: the suite runs on shared, loaded
# machines (2 cores for NATS, PostgreSQL and the tests), where how long an example or its generation takes says
# nothing about the code under test. From a clean clone, the first example also waits 1-3 s for Hypothesis'
# one-time work (scanning the project's modules for constants, building its Unicode tables, cached in
# .hypothesis/ afterwards), which too_slow counted as input generation. The strategies are kept cheap instead
# (bounded sizes and depths).
# Derandomized when CI is set, like Hypothesis' own "ci" profile: every CI run checks the same examples, so a red
# build means the code changed. Elsewhere each run explores new examples, and a failing one is saved in
# .hypothesis/ and replayed first next time (or reproduced from the printed blob).
hypothesis.settings.register_profile(
    "suite",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
    print_blob=True,
)
hypothesis.settings.load_profile("suite")

APP_ROLE = "audit_test_app"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
"""The HS256 key of tests that serve with authentication on."""


@dataclass(frozen=True)
class PostgresCluster:
    superuser_url: str

    def url(self, database: str, user: str | None = None) -> str:
        parts = urlsplit(self.superuser_url)
        netloc = parts.netloc if user is None else f"{user}@{parts.hostname}:{parts.port or 5432}"
        return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@dataclass(frozen=True)
class TestDatabase:
    name: str
    owner_url: str
    """The schema owner (superuser in tests)."""
    app_url: str
    """The service role: INSERT and SELECT on the log."""


@pytest.fixture(scope="session")
def embedded_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("AUDIT_TEST_POSTGRES_URL"):
        yield None
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data", port=free_port(), durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(embedded_postgres: EmbeddedPostgres | None) -> PostgresCluster:
    external = os.environ.get("AUDIT_TEST_POSTGRES_URL")
    return PostgresCluster(external or embedded_postgres.url("postgres"))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer | None]:
    if os.environ.get("AUDIT_TEST_NATS_URL"):
        yield None
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer | None) -> str:
    return os.environ.get("AUDIT_TEST_NATS_URL") or nats_server.url


async def run_as_superuser(postgres: PostgresCluster, statement: str) -> None:
    """Runs one statement on the cluster's maintenance database (CREATE/DROP DATABASE)."""
    admin = await asyncpg.connect(postgres.superuser_url)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def template_database(postgres: PostgresCluster) -> str:
    """A migrated database that each test's database is copied from (CREATE DATABASE ... TEMPLATE)."""
    name = f"audit_template_{uuid.uuid4().hex[:8]}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(postgres.url(name))
    try:
        await migrate(conn)
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        await conn.execute(f"GRANT audit_service TO {APP_ROLE}")
    finally:
        await conn.close()
    return name


@pytest.fixture
async def database(postgres: PostgresCluster, template_database: str) -> AsyncIterator[TestDatabase]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield TestDatabase(name=name, owner_url=postgres.url(name), app_url=postgres.url(name, user=APP_ROLE))
    await run_as_superuser(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def owner(database: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the test's database, for assertions on the stored rows."""
    conn = await asyncpg.connect(database.owner_url)
    yield conn
    await conn.close()


@pytest.fixture
async def app(database: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the service role (a login role that is a member of audit_service), as the service's
    processes connect."""
    conn = await asyncpg.connect(database.app_url)
    yield conn
    await conn.close()


def source_path() -> dict[str, str]:
    """PYTHONPATH, when the tests run with one (a second checkout of the repository, the package installed from
    another): the CLI they start runs the code under test, not the installed copy."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`audit-service <args>` with exactly `env` (and PATH), as an operator runs it; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "audit_service.cli", *args],
        env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **source_path()},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def database_outage(postgres: PostgresCluster, database: TestDatabase):
    """`async with database_outage():` the test's database refuses the service's connections and drops the
    open ones (superuser connections, such as `owner`, stay), and is back on exit."""

    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        admin = await asyncpg.connect(postgres.superuser_url)
        try:
            await admin.execute(f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
                database.name,
                APP_ROLE,
            )
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS true')
            await admin.close()

    return outage


@dataclass
class EndingSessions:
    ended: int = 0
    """Sessions of the service's role terminated so far."""


@pytest.fixture
def sessions_ending(postgres: PostgresCluster, database: TestDatabase):
    """`async with sessions_ending() as ending:` every session of the service's role on the test's database is
    terminated (`pg_terminate_backend`) again and again, every `every` seconds, as by a failover, a pooler or an
    operator's session killer; new connections are let in, so the service keeps reconnecting into sessions that
    end under it. Superuser connections (`owner`) stay. `ending.ended` counts the sessions it ended."""

    @contextlib.asynccontextmanager
    async def ending(every: float = 0.02) -> AsyncIterator[EndingSessions]:
        admin = await asyncpg.connect(postgres.superuser_url)
        done = asyncio.Event()
        sessions = EndingSessions()

        async def terminate() -> None:
            while not done.is_set():
                sessions.ended += await admin.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND usename = $2",
                    database.name,
                    APP_ROLE,
                )
                await asyncio.sleep(every)

        terminating = asyncio.create_task(terminate())
        try:
            yield sessions
        finally:
            done.set()
            await terminating
            await admin.close()

    return ending


@pytest.fixture
def names() -> dict[str, str]:
    """Unique NATS names for one test."""
    token = uuid.uuid4().hex[:10]
    return {
        "AUDIT_SUBJECT_PREFIX": f"t{token}",
        "AUDIT_STREAM_PREFIX": f"T{token.upper()}",
        "AUDIT_INGEST_DURABLE": f"ingest-{token}",
    }


@pytest.fixture
def service_env(database: TestDatabase, nats_url: str, names: dict[str, str]) -> dict[str, str]:
    """The environment a service process of this test runs with."""
    return {
        "AUDIT_DATABASE_URL": database.app_url,
        "AUDIT_MIGRATE_DATABASE_URL": database.owner_url,
        "AUDIT_NATS_URL": nats_url,
        "AUDIT_GRPC_ADDRESS": "127.0.0.1:0",
        "AUDIT_INGEST_ACK_WAIT_SECONDS": "2",
        "AUDIT_INGEST_FETCH_TIMEOUT_SECONDS": "0.2",
        "AUDIT_INGEST_BATCH_SIZE": "200",
        # The default test API serves without authentication (tests/integration/test_auth.py covers it on).
        "AUDIT_AUTH_DISABLED": "true",
        **names,
    }


@pytest.fixture
def config(service_env: dict[str, str]) -> Config:
    return load_config(env=service_env)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def publisher(nats_url: str, config: Config) -> AsyncIterator[Publisher]:
    async with connect_publisher(nats_url, subject_prefix=config.nats.events_subject_prefix) as connected:
        yield connected


@dataclass
class RunningWorker:
    stop: asyncio.Event
    task: asyncio.Task[IngestWorker]

    async def shutdown(self) -> IngestWorker:
        self.stop.set()
        return await self.task


@pytest.fixture
async def start_worker(config: Config) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    """Starts in-process ingest workers (the same code path as `audit-service ingest`)."""
    running: list[RunningWorker] = []

    async def start(worker_config: Config | None = None) -> RunningWorker:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_ingest(worker_config or config, stop, ready=ready))
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
        if task.done():
            task.result()  # raises the start-up error
        worker = RunningWorker(stop, task)
        running.append(worker)
        return worker

    yield start
    for worker in running:
        if not worker.task.done():
            await worker.shutdown()


@contextlib.asynccontextmanager
async def serving_api(config: Config) -> AsyncIterator[RunningServer]:
    """Runs the gRPC API in-process (the same code path as `audit-service serve`) for the block."""
    stop = asyncio.Event()
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_api(config, stop, on_ready=started.set_result))
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    if task.done():
        task.result()  # raises the start-up error
    try:
        yield started.result()
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def serving_stub(env: dict[str, str]) -> AsyncIterator[audit_service_pb2_grpc.AuditServiceStub]:
    """The API configured by `env`, and a stub on a default gRPC channel to it."""
    async with (
        serving_api(load_config(env=env)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield audit_service_pb2_grpc.AuditServiceStub(channel)


@contextlib.asynccontextmanager
async def serving_with_auth(service_env: dict[str, str], auth_env: dict[str, str]) -> AsyncIterator[tuple[Config, int]]:
    """The API with authentication on, configured by `auth_env`: its configuration and port."""
    env = {key: value for key, value in service_env.items() if key != "AUDIT_AUTH_DISABLED"} | auth_env
    config = load_config(env=env)
    async with serving_api(config) as server:
        yield config, server.port


def bearer(token: str) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class SecuredApi:
    stub: audit_service_pb2_grpc.AuditServiceStub
    channel: grpc.aio.Channel
    auth: AuthConfig

    def token(self, tenant: str = "acme", subject: str = "u-alice", *, admin: bool = False, ttl: int = 600) -> str:
        return mint_token(self.auth, subject=subject, tenant=tenant, admin=admin, ttl_seconds=ttl)


@pytest.fixture
async def secured(service_env: dict[str, str]) -> AsyncIterator[SecuredApi]:
    """The API with authentication on (HS256 with JWT_SECRET), a stub, and a way to mint its tokens."""
    async with (
        serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield SecuredApi(audit_service_pb2_grpc.AuditServiceStub(channel), channel, config.auth)


async def store_events(database: TestDatabase, events: list[event_pb2.AuditEvent]) -> list[str]:
    """Appends the events (stamped as a publisher would) as the worker does, in batches; returns their ids."""
    conn = await asyncpg.connect(database.app_url)
    try:
        appender = LogAppender()
        for start in range(0, len(events), 500):
            await appender.append(conn, [content_of(stamp(event)) for event in events[start : start + 500]])
    finally:
        await conn.close()
    return [event.event_id for event in events]


@pytest.fixture
async def api(config: Config) -> AsyncIterator[audit_service_pb2_grpc.AuditServiceStub]:
    """A real gRPC server on a free port, and a stub connected to it."""
    async with serving_api(config) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        stub.port = server.port  # type: ignore[attr-defined]
        yield stub


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition") -> None:
    """Polls `check` until it returns True; fails the test naming `what` if it never does (not a timing test)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


class ServiceProcess:
    """`python -m audit_service.cli <command>` with the test's environment; `start()` again restarts it.

    With `argv`, that program instead; with `only_env`, `env` is the process's whole environment (a container's)."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        log_path: Path,
        ready_line: str,
        *,
        argv: list[str] | None = None,
        only_env: bool = False,
    ) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.ready_line = ready_line
        self.argv = argv or [sys.executable, "-m", "audit_service.cli", command]
        self.only_env = only_env
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> ServiceProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env if self.only_env else {**os.environ, **self.env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,
            )
        return self

    async def ready(self) -> None:
        """Waits for the ready line of the last start."""

        async def started() -> bool:
            assert self.process.poll() is None, self.output()
            return self.ready_line in self.output()[self._offset :]

        await eventually(started, what=f"{self.command} {self.process.pid}: {self.ready_line!r}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 60)

    def output(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def spawn_worker(service_env, tmp_path):
    """Starts `audit-service ingest` processes (`await worker.ready()` before relying on one)."""
    workers: list[ServiceProcess] = []

    def spawn(**extra_env: str) -> ServiceProcess:
        log_path = tmp_path / f"worker-{len(workers)}.log"
        worker = ServiceProcess("ingest", {**service_env, **extra_env}, log_path, "ingest worker consuming")
        workers.append(worker.start())
        return worker

    yield spawn
    for worker in workers:
        worker.close()


@pytest.fixture
def api_process(service_env, tmp_path):
    """`audit-service serve` processes, each on a fixed port of its own (so a restarted one is found again);
    call `start()` and `await ready()`."""
    processes: list[ServiceProcess] = []

    def spawn(**extra_env: str) -> ServiceProcess:
        env = {**service_env, **extra_env, "AUDIT_GRPC_ADDRESS": f"127.0.0.1:{free_port()}"}
        process = ServiceProcess("serve", env, tmp_path / f"api-{len(processes)}.log", "gRPC API listening")
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.close()


REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def rules(secured: SecuredApi) -> alert_rules_pb2_grpc.AlertRuleServiceStub:
    """AlertRuleService on the authenticated API."""
    return alert_rules_pb2_grpc.AlertRuleServiceStub(secured.channel)


@pytest.fixture
def destinations(secured: SecuredApi) -> destinations_pb2_grpc.DestinationServiceStub:
    """DestinationService on the authenticated API."""
    return destinations_pb2_grpc.DestinationServiceStub(secured.channel)


async def failure(call) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()
