"""The production path as docker-compose.yml deploys it: the image's entry point run as `migrate`, two `ingest`,
one `serve` and one `react`, separate processes with exactly the environment the file gives each service (its hosts
mapped to this test's own NATS and PostgreSQL, its secrets to files made here, its published port to a free one),
NATS run with the configuration the file mounts and PostgreSQL prepared by the script it mounts. A producer
publishes with the client as its own NATS user; a platform engineer reads with grpcurl and verifies the chain with
the CLI, and sets up alerts and destinations with grpcurl that a webhook, an HTTP receiver and a NATS subscriber
hear."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_client import connect as connect_publisher
from audit_client.connection import connect_nats
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import DURABLE_SETTINGS, EmbeddedPostgres, postgres_bin_dir
from audit_service.devstack.processes import free_port
from audit_service.nats_permissions import password_variable
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from ..certificates import CertificateAuthority
from ..compose import ComposeFile
from ..conftest import REPO_ROOT, ServiceProcess, eventually
from ..factories import make_event
from ..http_receiver import Receiver, receiving
from ..otlp_receiver import OtlpReceiver, otlp_receiver
from ..pg_settings import settings_in_effect

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GRPCURL = str(BIN / "grpcurl")
VARIABLES = {
    "POSTGRES_PASSWORD": "postgres-test-password-31a8",
    "AUDIT_APP_PASSWORD": "app-test-password-c20e",
    "AUDIT_AUTH_JWT_SECRET": "production-path-secret-that-is-long-enough-0123456789",
    "AUDIT_NATS_INGEST_PASSWORD": "ingest-test-password-5d11",
    "AUDIT_NATS_API_PASSWORD": "api-test-password-e7a2",
    "AUDIT_NATS_REACTOR_PASSWORD": "reactor-test-password-3c57",
    "AUDIT_NATS_PRODUCER_ACME_PASSWORD": "producer-test-password-0b94",
}
"""What an operator must put in the shell's environment or `.env` (docker-compose.yml's header lists them)."""
SETTINGS = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317"}
"""What an operator may set as well: where the OpenTelemetry collector listens."""

READY_LINES = {"ingest": "ingest worker consuming", "serve": "gRPC API listening", "react": "resuming after"}


def image_entrypoint() -> list[str]:
    """The ENTRYPOINT of the Dockerfile's last stage, the image docker-compose.yml runs."""
    entrypoints = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert entrypoints, "the Dockerfile has an ENTRYPOINT in exec form"
    return json.loads(entrypoints[-1])


@dataclass
class Replica:
    """One running container of a service: its process, and its container ports mapped to this machine's."""

    process: ServiceProcess
    ports: dict[int, int]

    def url(self, container_port: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}{path}"


@dataclass
class Deployment:
    """docker-compose.yml's model and how its names map onto this test's machine."""

    compose: ComposeFile
    hosts: dict[str, str]
    """Compose's `service:port` names to the host:port of this test's servers (postgres:5432, nats:4222, ...)."""
    secrets: dict[str, Path]
    workdir: Path
    published_ports: dict[int, int]
    project_dir: Path
    """Where the compose file's relative bind mounts (./tls) point: this test's copy of the project directory."""
    collector: OtlpReceiver
    alerts_subscribers: dict[str, str]
    """NATS users the operator added to hear alerts (see `with_alerts_subscribers`), user to password."""

    def bind_mounts(self, service: str) -> dict[str, Path]:
        """The service's `./host:/container[:ro]` volumes, container path to this machine's directory."""
        mounts = {}
        for volume in self.compose.service(service).get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                mounts[target] = self.project_dir / source[2:]
        return mounts

    def environment(self, service: str, ports: dict[int, int] | None = None) -> dict[str, str]:
        """The service's environment as the container gets it, with compose's names resolved to this machine:
        other services' host names, secrets, bind mounts, and the ports it listens on (`ports`, container port to
        this machine's; the published ones by default)."""
        env = {}
        for name, value in self.compose.environment(service).items():
            for host, here in self.hosts.items():
                value = re.sub(rf"(?<=[@/]){re.escape(host)}(?=[/?]|$)", here, value)
            for secret, path in self.secrets.items():
                value = value.replace(f"/run/secrets/{secret}", str(path))
            for target, source in self.bind_mounts(service).items():
                if value.startswith(f"{target}/"):
                    value = str(source) + value[len(target) :]
            for container_port, host_port in (ports or self.published_ports).items():
                value = value.replace(f"0.0.0.0:{container_port}", f"127.0.0.1:{host_port}")
            env[name] = value
        return env

    def process_environment(
        self, service: str, ports: dict[int, int] | None = None, overrides: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Only what the container would have: its compose environment, plus PATH and HOME of this machine, and a
        test's `overrides` (each one explained where the test sets it)."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.workdir), **self.environment(service, ports)}
        return env | (overrides or {})

    def nats_url(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@{self.hosts['nats:4222']}"

    def run(self, service: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """A one-off run of the service's image with its command (or `extra` instead), to completion."""
        command = list(extra) or self.compose.command(service)
        return subprocess.run(
            [str(BIN / image_entrypoint()[0]), *command],
            env=self.process_environment(service),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.workdir,
        )

    def start(self, service: str, replica: int = 0, *, overrides: dict[str, str] | None = None) -> Replica:
        """A long-running replica of the service, its output in <service>-<replica>.log: its published ports are
        the deployment's, each exposed port gets a port of its own on this machine."""
        exposed = {int(port): free_port() for port in self.compose.service(service).get("expose", [])}
        ports = {**self.published_ports, **exposed}
        command = self.compose.command(service)
        process = ServiceProcess(
            command[0],
            self.process_environment(service, ports, overrides),
            self.workdir / f"{service}-{replica}.log",
            READY_LINES[command[0]],
            argv=[str(BIN / image_entrypoint()[0]), *command],
            only_env=True,
        )
        return Replica(process.start(), ports)

    def healthcheck(self, service: str, replica: Replica) -> subprocess.CompletedProcess[str]:
        """The service's compose health check (CMD form), run as Docker runs it in the container."""
        kind, *command = self.compose.service(service)["healthcheck"]["test"]
        assert kind == "CMD"
        command = [_local_ports(part, replica.ports) for part in command]
        program = sys.executable if command[0] == "python" else command[0]
        return subprocess.run([program, *command[1:]], capture_output=True, text=True, timeout=30)


def _local_ports(text: str, ports: dict[int, int]) -> str:
    for container_port, host_port in ports.items():
        text = text.replace(f"127.0.0.1:{container_port}", f"127.0.0.1:{host_port}")
    return text


def write_signing_keys(directory: Path) -> dict[str, Path]:
    """The Ed25519 key pair docker-compose.yml's header makes with openssl, as the secrets it mounts."""
    key = Ed25519PrivateKey.generate()
    private = directory / "checkpoint-signing-key.pem"
    public = directory / "checkpoint-verify-key.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {"checkpoint-signing-key": private, "checkpoint-verify-key": public}


def write_tls_files(directory: Path) -> None:
    """What README's openssl recipe makes in ./tls: ca.crt, server.crt and server.key, client.crt and client.key."""
    authority = CertificateAuthority(directory, "production")
    authority.cert.rename(directory / "ca.crt")
    authority.issue("audit-api", server=True, file_stem="server").cert.rename(directory / "server.crt")
    authority.issue("security-dashboard", server=False, file_stem="client").cert.rename(directory / "client.crt")


def prepare_postgres(compose: ComposeFile, server: EmbeddedPostgres, workdir: Path) -> None:
    """What the postgres image does on first start: create POSTGRES_DB, then run the init scripts mounted into
    /docker-entrypoint-initdb.d with the container's environment (here: the create-app-role script, with psql)."""
    env = compose.environment("postgres")
    subprocess.run(
        [
            str(postgres_bin_dir() / "createdb"),
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            "postgres",
            env["POSTGRES_DB"],
        ],
        check=True,
        capture_output=True,
    )
    (mount,) = [c for c in compose.service("postgres")["configs"] if "initdb" in c["target"]]
    script = workdir / "10-audit-roles.sh"
    script.write_text(compose.config_content(mount["source"]))
    result = subprocess.run(
        ["sh", str(script)],
        env={
            **env,
            "PATH": f"{postgres_bin_dir()}:{os.environ['PATH']}",
            "PGHOST": server.host,
            "PGPORT": str(server.port),
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def with_alerts_subscribers(
    config_file: Path, subscribers: dict[str, str], tenant: str, directory: Path
) -> tuple[Path, dict[str, str]]:
    """What docker-compose.yml's nats-auth comment tells an operator to do for more NATS users: run the command
    that wrote nats-auth.conf again, here with `--alerts-subscriber` for each of `subscribers` (user to password,
    hearing `tenant`'s alerts), and give nats-server their passwords. Returns the file and those variables."""
    written_by = re.search(r"^# Written by `(audit-service nats-config[^`]*)`", config_file.read_text(), re.M)
    assert written_by, "nats-auth.conf says which command wrote it"
    command = shlex.split(written_by.group(1))
    command += [part for user in subscribers for part in ("--alerts-subscriber", f"{user}={tenant}")]
    written = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        env={"PATH": os.environ["PATH"], "HOME": str(directory)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    regenerated = directory / "nats-auth.conf"
    regenerated.write_text(written.stdout)
    return regenerated, {password_variable(user): password for user, password in subscribers.items()}


@pytest.fixture
def alerts_subscribers(request: pytest.FixtureRequest) -> dict[str, str]:
    """NATS users (to passwords) the operator adds to hear tenant acme's alerts: none unless a test asks (an
    indirect parameter); the shipped nats-auth.conf has none."""
    return getattr(request, "param", {})


@pytest.fixture
async def deployment(
    tmp_path: Path, request: pytest.FixtureRequest, alerts_subscribers: dict[str, str]
) -> AsyncIterator[Deployment]:
    """The deployment of docker-compose.yml with the operator's VARIABLES and SETTINGS, and those of an indirect
    parameter on top; an OTLP collector of the test's own listens where SETTINGS point the processes."""
    compose = ComposeFile.load(REPO_ROOT / "docker-compose.yml", VARIABLES | SETTINGS | getattr(request, "param", {}))
    (nats_config,) = compose.service("nats")["configs"]
    config_file = REPO_ROOT / compose.model["configs"][nats_config["source"]]["file"]
    nats_env = compose.environment("nats")
    if alerts_subscribers:
        config_file, passwords = with_alerts_subscribers(config_file, alerts_subscribers, "acme", tmp_path)
        nats_env |= passwords
    nats = NatsServer(tmp_path / "nats", port=free_port(), config_file=config_file, env=nats_env)
    postgres = EmbeddedPostgres(
        tmp_path / "postgres", port=free_port(), durable=False, settings=compose.server_settings("postgres")
    )
    nats.start()
    postgres.start()
    try:
        async with otlp_receiver() as collector:
            prepare_postgres(compose, postgres, tmp_path)
            secrets_dir = tmp_path / "secrets"
            secrets_dir.mkdir()
            project_dir = tmp_path / "project"
            write_tls_files(project_dir / "tls")
            yield Deployment(
                compose=compose,
                hosts={
                    "postgres:5432": f"{postgres.host}:{postgres.port}",
                    "nats:4222": f"{nats.host}:{nats.port}",
                    "otel-collector:4317": f"127.0.0.1:{collector.port}",
                },
                secrets=write_signing_keys(secrets_dir),
                workdir=tmp_path,
                published_ports={50051: free_port()},
                project_dir=project_dir,
                collector=collector,
                alerts_subscribers=alerts_subscribers,
            )
    finally:
        nats.stop()
        postgres.stop()


def samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text as (sample name, labels, value) triples."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


def total(scraped: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(value for sample, found, value in scraped if sample == name and labels.items() <= found.items())


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(get)


def grpcurl(
    deployment: Deployment, token: str, method: str, request: dict, *, client_certificate: bool = False
) -> dict:
    """A call as a platform engineer makes it: TLS with the CA of ./tls (and its client certificate for mTLS).
    `method`: of audit.v1.AuditService, or `service/method`."""
    port = deployment.published_ports[50051]
    tls = deployment.project_dir / "tls"
    identity = ["-cert", str(tls / "client.crt"), "-key", str(tls / "client.key")] if client_certificate else []
    result = subprocess.run(
        [
            GRPCURL,
            "-max-time",
            "30",
            "-cacert",
            str(tls / "ca.crt"),
            *identity,
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            json.dumps(request),
            f"127.0.0.1:{port}",
            method if "/" in method else f"audit.v1.AuditService/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mint_token(deployment: Deployment) -> str:
    """`audit-service token` run in the api service's container, with its key."""
    minted = deployment.run("api", "token", "--tenant", "acme", "--subject", "auditor", "--admin")
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip().splitlines()[-1]


@pytest.mark.timeout(300)
async def test_migrate_two_ingest_workers_and_the_api_run_as_docker_compose_gives_them(deployment: Deployment):
    migrate = deployment.run("migrate")
    assert migrate.returncode == 0, migrate.stderr
    replicas = deployment.compose.service("ingest")["deploy"]["replicas"]
    assert replicas == 2
    workers = [deployment.start("ingest", replica) for replica in range(replicas)]
    api = deployment.start("api")
    processes = [replica.process for replica in (*workers, api)]
    try:
        for process in processes:
            await process.ready()

        producer_url = deployment.environment("ingest")["AUDIT_NATS_URL"].replace(
            f"ingest:{VARIABLES['AUDIT_NATS_INGEST_PASSWORD']}",
            f"producer-acme:{VARIABLES['AUDIT_NATS_PRODUCER_ACME_PASSWORD']}",
        )
        events = [make_event("acme", message=f"production path {i}") for i in range(300)]
        async with connect_publisher(producer_url) as publisher:
            published = [(await publisher.publish(event)).event_id for event in events]

        token = mint_token(deployment)

        async def all_stored() -> bool:
            count = await asyncio.to_thread(grpcurl, deployment, token, "CountEvents", {"filter": {"tenant": "acme"}})
            return int(count.get("total", 0)) >= len(events)

        await eventually(all_stored, within=120, what="the 300 events stored")
        listed: list[str] = []
        page_token = ""
        while True:
            page = grpcurl(deployment, token, "ListEvents", {"page_size": 100, "page_token": page_token})
            listed += [event["event_id"] for event in page.get("events", [])]
            page_token = page.get("next_page_token", "")
            if not page_token:
                break
        assert sorted(listed) == sorted(published), "each event stored once"

        # Every process is scraped and ready, and compose's own health checks pass against it.
        scraped = {}
        for service, replica in [("ingest", worker) for worker in workers] + [("api", api)]:
            status, metrics = await http_get(replica.url(9464, "/metrics"))
            assert status == 200
            name = "audit-api" if service == "api" else "audit-ingest"
            assert re.search(rf'\ntarget_info\{{[^}}]*service_name="{name}"', metrics), metrics[:2000]
            scraped[replica.process.log_path.stem] = samples(metrics)
            assert (await http_get(replica.url(9464, "/readyz")))[0] == 200
            check = await asyncio.to_thread(deployment.healthcheck, service, replica)
            assert check.returncode == 0, check.stderr
        workers_scraped = [scraped[f"ingest-{i}"] for i in range(replicas)]
        assert sum(total(worker, "audit_ingest_appended_total") for worker in workers_scraped) == len(events), (
            "the two workers' appended counters add up to what was published"
        )
        assert max(total(worker, "audit_log_head") for worker in workers_scraped) == len(events)
        listed_ok = total(
            scraped["api-0"],
            "rpc_server_call_duration_seconds_count",
            rpc_method="audit.v1.AuditService/ListEvents",
            rpc_response_status_code="OK",
        )
        assert listed_ok >= 3, "the grpcurl pages above, counted by method and status"

        # Spans reach the operator's collector: each batch of the workers, each RPC of the API.
        collector = deployment.collector

        def appended_in_spans() -> int:
            batches = [span for span in collector.spans() if span.name == "audit.ingest batch"]
            return sum(int(span.attributes.get("audit.ingest.appended", 0)) for span in batches)

        async def spans_exported() -> bool:
            names = {(span.service_name, span.name) for span in collector.spans()}
            return {
                ("audit-ingest", "audit.ingest batch"),
                ("audit-ingest", "audit.append"),
                ("audit-api", "/audit.v1.AuditService/ListEvents"),
                ("audit-api", "/audit.v1.AuditService/CountEvents"),
            } <= names and appended_in_spans() >= len(events)

        # (Each process exports its spans every few seconds: wait for both workers' batches.)
        await eventually(spans_exported, within=60, what="the spans of batches and RPCs at the collector")
        assert appended_in_spans() == len(events), "each event appended once, in one batch's span"

        for process in processes:
            assert await process.terminate() == 0, process.output()
        logged = [json.loads(line) for process in processes for line in process.output().splitlines()]
        assert logged and all({"time", "level", "message"} <= record.keys() for record in logged), "JSON logs"
        verify = deployment.run("ingest", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        for process in processes:
            process.close()


ALERTS_SUBSCRIBER = ("alerts-acme", "alerts-test-password-9d4f")

PRIVATE_DESTINATIONS = {"AUDIT_DESTINATIONS_ALLOW_PRIVATE": "true"}
"""The test's receivers listen on loopback, which destinations may not point at in production (SSRF): the API
refuses such a destination when it is saved, the reactor at every connection, so both get this override."""


def streamed_events(receiver: Receiver) -> list[dict]:
    """Every event of every batch an HTTP destination's receiver got, in arrival order."""
    return [event for request in receiver.requests for event in json.loads(request.body)["events"]]


@pytest.mark.parametrize("alerts_subscribers", [dict([ALERTS_SUBSCRIBER])], indirect=True)
@pytest.mark.timeout(300)
async def test_react_runs_as_docker_compose_gives_it_and_alerts_and_streams_reach_their_destinations(
    deployment: Deployment,
):
    assert deployment.run("migrate").returncode == 0
    workers = [
        deployment.start("ingest", replica)
        for replica in range(deployment.compose.service("ingest")["deploy"]["replicas"])
    ]
    api = deployment.start("api", overrides=PRIVATE_DESTINATIONS)
    react = deployment.start("react", overrides=PRIVATE_DESTINATIONS)
    processes = [replica.process for replica in (*workers, api, react)]
    try:
        for process in processes:
            await process.ready()
        token = mint_token(deployment)
        async with receiving() as hooks, receiving() as siem:
            # A platform engineer sets up a webhook, a rule naming it, and a stream of every event to a SIEM.
            pager = grpcurl(
                deployment,
                token,
                "audit.v1.DestinationService/CreateDestination",
                {"destination": {"name": "pager", "tenant": "acme", "webhook": {"url": hooks.url}}},
            )
            streamed = grpcurl(
                deployment,
                token,
                "audit.v1.DestinationService/CreateDestination",
                {"destination": {"name": "siem", "tenant": "acme", "http": {"url": siem.url}}},
            )
            rule = grpcurl(
                deployment,
                token,
                "audit.v1.AlertRuleService/CreateAlertRule",
                {
                    "alert_rule": {
                        "tenant": "acme",
                        "display_name": "Deletions",
                        "enabled": True,
                        "query": "action:doc.delete",
                        "severity": "ALERT_SEVERITY_HIGH",
                        "message_template": "{actor.id} deleted {resource.id}",
                        "destinations": ["pager"],
                    }
                },
            )["alert_rule"]

            user, password = ALERTS_SUBSCRIBER
            subscriber = await connect_nats(deployment.nats_url(user, password))
            try:
                on_nats = await subscriber.subscribe("audit.alerts.acme")
                await subscriber.flush()
                producer_url = deployment.nats_url("producer-acme", VARIABLES["AUDIT_NATS_PRODUCER_ACME_PASSWORD"])
                events = [
                    make_event("acme", action="doc.delete" if i in (3, 8) else "doc.read", message=f"react {i}")
                    for i in range(12)
                ]
                async with connect_publisher(producer_url) as publisher:
                    published = [(await publisher.publish(event)).event_id for event in events]
                deletions = [published[3], published[8]]

                async def delivered() -> bool:
                    streamed_ids = {event["eventId"] for event in streamed_events(siem)}
                    return len(hooks.requests) >= 2 and set(published) <= streamed_ids

                await eventually(delivered, within=60, what="2 alerts at the webhook and the 12 events at the SIEM")
                heard = [await on_nats.next_msg(timeout=30) for _ in deletions]
            finally:
                await subscriber.close()

            # The stream: each event of the log from where the SIEM's subscription began (with the configuration
            # changes above, which are events too) once, in log order (the API's positions).
            listed = grpcurl(deployment, token, "ListEvents", {"page_size": 100})["events"]
            in_log_order = [event["event_id"] for event in sorted(listed, key=lambda event: int(event["position"]))]
            got = [event["eventId"] for event in streamed_events(siem)]
            assert got == in_log_order[in_log_order.index(got[0]) :]
            assert set(published) <= set(got)
            for request in siem.requests:
                Webhook(streamed["generated_secret"]).verify(request.body, request.headers)  # raises if unsigned

            # The alerts: stored, signed at the webhook with the secret CreateDestination returned, and on NATS.
            alerts = grpcurl(deployment, token, "audit.v1.AlertRuleService/ListAlerts", {"page_size": 50})["alerts"]
            assert len(alerts) == 2 and {alert["rule_id"] for alert in alerts} == {rule["id"]}
            alert_ids = {alert["id"] for alert in alerts}
            signed = [Webhook(pager["generated_secret"]).verify(r.body, r.headers) for r in hooks.requests]
            assert {payload["data"]["id"] for payload in signed} == alert_ids
            assert all(payload["type"] == "audit.alert" for payload in signed)
            assert {r.headers["webhook-id"] for r in hooks.requests} == alert_ids
            assert {msg.headers["Nats-Msg-Id"] for msg in heard} == alert_ids
            assert {json.loads(msg.data)["id"] for msg in heard} == alert_ids

            # Caught up: no lag in the destinations' status, nor in the reactor's gauge.
            for name in ("pager", "siem"):
                status = grpcurl(
                    deployment,
                    token,
                    "audit.v1.DestinationService/GetDestinationStatus",
                    {"tenant": "acme", "name": name},
                )["status"]
                assert int(status.get("lag", 0)) == 0 and int(status["checkpoint"]) == int(status["head"]) > 0, status

            async def gauges_at_zero() -> bool:
                scraped = samples((await http_get(react.url(9464, "/metrics")))[1])
                lags = {
                    labels.get("destination"): value
                    for sample, labels, value in scraped
                    if sample == "audit_destination_lag" and labels.get("tenant") == "acme"
                }
                return lags == {"pager": 0, "siem": 0}

            await eventually(gauges_at_zero, what="audit_destination_lag 0 for pager and siem on react's /metrics")
            status, metrics = await http_get(react.url(9464, "/metrics"))
            assert status == 200 and re.search(r'\ntarget_info\{[^}]*service_name="audit-react"', metrics)
            delivered_ok = total(samples(metrics), "audit_destination_attempts_total", outcome="delivered")
            assert delivered_ok == len(hooks.requests) + len(siem.requests)
            assert (await http_get(react.url(9464, "/readyz"))) == (200, "react.evaluating: ok\nreact.postgres: ok\n")
            check = await asyncio.to_thread(deployment.healthcheck, "react", react)
            assert check.returncode == 0, check.stderr

        for process in processes:
            assert await process.terminate() == 0, process.output()
    finally:
        for process in processes:
            process.close()


@pytest.mark.parametrize("deployment", [{"AUDIT_GRPC_TLS_CLIENT_CA_FILE": "/tls/ca.crt"}], indirect=True)
async def test_with_mtls_set_in_the_environment_the_api_refuses_a_caller_without_a_client_certificate(
    deployment: Deployment,
):
    assert deployment.run("migrate").returncode == 0
    api = deployment.start("api").process
    try:
        await api.ready()
        token = mint_token(deployment)
        answer = grpcurl(deployment, token, "CountEvents", {"filter": {"tenant": "acme"}}, client_certificate=True)
        assert int(answer.get("total", 0)) == 0
        with pytest.raises(AssertionError, match=r"Failed to dial|certificate"):  # refused in the handshake
            grpcurl(deployment, token, "CountEvents", {"filter": {"tenant": "acme"}})
    finally:
        api.close()


async def test_postgres_runs_with_the_settings_docker_compose_gives_it_which_are_the_dev_stacks(
    deployment: Deployment,
):
    """The server settings of docker-compose.yml's postgres are in effect on the deployment's server, and they are
    the ones the dev stack's (and the benchmarks') durable server runs with."""
    settings = deployment.compose.server_settings("postgres")
    assert settings == DURABLE_SETTINGS
    url = f"postgresql://postgres@{deployment.hosts['postgres:5432']}/postgres"
    assert await settings_in_effect(url, settings) == settings


def test_the_compose_variables_this_test_sets_are_the_ones_the_file_requires():
    """Every `${VAR:?...}` of docker-compose.yml is in VARIABLES, so the test deploys what an operator would."""
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", (REPO_ROOT / "docker-compose.yml").read_text()))
    assert required == set(VARIABLES)
