"""`audit-service`: dev | migrate | ingest | serve | react | verify | verify-file | checkpoint | retention |
rebuild-projections | token | nats-config | rules."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import ConfigError
from .logs import configure_logging
from .runtime import StartupError, redact, run_api, run_ingest, run_migrate, run_react
from .store.pool import DATABASE_FAILURES
from .telemetry.http import Readiness, serving_http
from .telemetry.setup import Telemetry, default_service_name, setup_telemetry

log = logging.getLogger("audit_service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-service",
        description="Append-only audit log: NATS JetStream ingest into PostgreSQL, read over gRPC. "
        "Configured by AUDIT_* environment variables (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = commands.add_parser("dev", help="run everything locally: embedded NATS and PostgreSQL, worker, API, reactor")
    dev.add_argument("--data-dir", type=Path, default=Path(".audit-dev"), help="data directory (default .audit-dev)")
    dev.add_argument("--nats-port", type=int, default=4222, help="NATS port (default 4222)")
    dev.add_argument("--postgres-port", type=int, default=55432, help="PostgreSQL port (default 55432)")
    dev.add_argument("--grpc-address", help="gRPC listen address (default $AUDIT_GRPC_ADDRESS or 0.0.0.0:50051)")
    dev.add_argument(
        "--http-address",
        help="console and Connect API listen address (default $AUDIT_HTTP_ADDRESS, or 127.0.0.1:8080 when free)",
    )
    dev.add_argument(
        "--tenant", default="acme", help="tenant of the printed admin token and producer credentials (default acme)"
    )
    commands.add_parser("migrate", help="apply database migrations (AUDIT_MIGRATE_DATABASE_URL or AUDIT_DATABASE_URL)")
    commands.add_parser("ingest", help="run an ingest worker (AUDIT_DATABASE_URL, AUDIT_NATS_URL)")
    commands.add_parser("serve", help="serve the gRPC API (AUDIT_DATABASE_URL, AUDIT_GRPC_ADDRESS)")
    commands.add_parser(
        "react",
        help="evaluate alert rules on the committed log, storing alerts and publishing them on NATS "
        "(AUDIT_DATABASE_URL, AUDIT_NATS_URL)",
    )
    verify = commands.add_parser(
        "verify", help="recompute the hash chains, check them against the signed checkpoints, report the first break"
    )
    verify.add_argument("--tenant", help="only this tenant's chain")
    verify.add_argument("--from-position", type=int, default=0, help="only events at or after this position")
    verify.add_argument("--to-position", type=int, default=0, help="only events at or before this position")
    verify.add_argument(
        "--checkpoints", type=Path, help="also check against signed checkpoints kept in this file (JSON lines)"
    )
    verify_file = commands.add_parser(
        "verify-file", help="verify NDJSON exports and retention archives offline (no database needed)"
    )
    verify_file.add_argument("files", nargs="+", type=Path, help="*.ndjson, *.ndjson.gz or *.manifest.json files")
    verify_file.add_argument(
        "--checkpoints", type=Path, help="also check against signed checkpoints kept in this file (JSON lines)"
    )
    checkpoint = commands.add_parser(
        "checkpoint", help="sign a checkpoint of the chain heads now (AUDIT_CHECKPOINT_SIGNING_KEY_FILE)"
    )
    checkpoint.add_argument("--output", type=Path, help="also append the signed checkpoint to this file")
    retention = commands.add_parser(
        "retention",
        help="archive the partitions older than AUDIT_RETENTION_DAYS to AUDIT_ARCHIVE_DIR, then drop them "
        "(AUDIT_MIGRATE_DATABASE_URL)",
    )
    retention.add_argument("--days", type=int, help="retention in days (default $AUDIT_RETENTION_DAYS or 90)")
    retention.add_argument("--archive-dir", type=Path, help="where archives go (default $AUDIT_ARCHIVE_DIR)")
    retention.add_argument("--dry-run", action="store_true", help="only list the partitions that would be archived")
    commands.add_parser(
        "rebuild-projections",
        help="recompute the projections (counts, resource streams, alert rules) from the log "
        "(AUDIT_MIGRATE_DATABASE_URL; appends wait meanwhile)",
    )
    token = commands.add_parser(
        "token", help="mint a bearer token with the configured key (AUDIT_AUTH_JWT_SECRET or ..._PRIVATE_KEY_FILE)"
    )
    token.add_argument("--tenant", required=True, help="the tenant the token is scoped to")
    token.add_argument("--subject", required=True, help="the caller; non-admins see only events with this actor.id")
    token.add_argument("--admin", action="store_true", help="see every event of the tenant")
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    nats_config = commands.add_parser(
        "nats-config",
        help="print the nats-server users and permissions of the service (AUDIT_SUBJECT_PREFIX, AUDIT_STREAM_PREFIX)",
    )
    nats_config.add_argument(
        "--producer",
        action="append",
        default=[],
        metavar="USER=TENANT[,TENANT...]",
        help="a producer's NATS user and the tenants it may publish for (* for every tenant); repeat for more",
    )
    nats_config.add_argument(
        "--alerts-subscriber",
        action="append",
        default=[],
        metavar="USER=TENANT[,TENANT...]",
        help="a NATS user that may subscribe to the alerts of these tenants (* for every tenant); repeat for more",
    )
    from .rules_cli import add_parser as add_rules_parser

    add_rules_parser(commands)
    return parser


async def _until_signalled(main: Coroutine[Any, Any, Any], stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await main


def _on_database(url: str, command: Coroutine[Any, Any, int]) -> int:
    """Runs a one-shot command on PostgreSQL at `url`: the database refusing it, or ending its session under it, is
    one line (exit status 1), as it is for the processes, not a traceback. A file's error (--output) is not the
    database's: it carries its file name."""
    try:
        return asyncio.run(command)
    except DATABASE_FAILURES as error:
        if isinstance(error, OSError) and error.filename is not None:
            raise
        raise StartupError(f"PostgreSQL at {redact(url)} failed: {type(error).__name__}: {error}") from None


async def _serving_process(config: Config, command: str, stop: asyncio.Event) -> None:
    """`ingest`, `serve` or `react`, with the HTTP port of /metrics, /livez and /readyz when AUDIT_METRICS_ADDRESS
    is set."""
    address = config.telemetry.metrics_address
    readiness = Readiness() if address else None
    async with contextlib.AsyncExitStack() as stack:
        if readiness is not None:
            await stack.enter_async_context(serving_http(address, readiness))
        if command == "ingest":
            await run_ingest(config, stop, readiness=readiness)
        elif command == "react":
            await run_react(config, stop, readiness=readiness)
        else:
            await run_api(config, stop, readiness=readiness)


async def _rebuild_projections(config: Config) -> int:
    import asyncpg
    from tqdm import tqdm

    from .store.projections import rebuild_projections

    conn = await asyncpg.connect(config.database.migrate_url or config.database.url)
    try:
        with tqdm(total=0, unit="ev", unit_scale=True, desc="projections", file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            report = await rebuild_projections(conn, on_progress=progress)
    finally:
        await conn.close()
    print(
        f"rebuilt projections: {report.events} events in {report.rows} rows of audit_counts_hourly "
        f"and {report.action_rows} rows of audit_action_counts_hourly; {report.streams} resource streams; "
        f"{report.alert_rules} alert rules; {report.destinations} destinations"
    )
    return 0


def _mint(config: Config, args: argparse.Namespace) -> int:
    from audit_client.validation import TENANT_PATTERN

    from .auth.tokens import mint_token

    if not TENANT_PATTERN.fullmatch(args.tenant):
        raise ConfigError("--tenant", f"must match {TENANT_PATTERN.pattern}")
    if not args.subject or args.ttl <= 0:
        raise ConfigError("--subject/--ttl", "the subject must not be empty and the ttl must be positive")
    print(mint_token(config.auth, subject=args.subject, tenant=args.tenant, admin=args.admin, ttl_seconds=args.ttl))
    return 0


def _users_and_tenants(option: str, specs: list[str]) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for spec in specs:
        user, sep, tenants = spec.partition("=")
        if not sep or user in users:
            raise ConfigError(option, f"expected USER=TENANT[,TENANT...] once per user, got {spec!r}")
        users[user] = [tenant.strip() for tenant in tenants.split(",") if tenant.strip()]
    return users


def _nats_config(config: Config, args: argparse.Namespace) -> int:
    import shlex

    from .config import NatsConfig
    from .nats_permissions import DEFAULT_DURABLE, render, service_users

    producers = _users_and_tenants("--producer", args.producer)
    subscribers = _users_and_tenants("--alerts-subscriber", args.alerts_subscriber)
    try:
        users = service_users(config.nats, producers, durable=config.ingest.durable, alerts_subscribers=subscribers)
    except ValueError as error:
        raise ConfigError("--producer/--alerts-subscriber", str(error)) from None
    defaults = NatsConfig()
    command = [
        f"{name}={value}"
        for name, value, default in (
            ("AUDIT_SUBJECT_PREFIX", config.nats.subject_prefix, defaults.subject_prefix),
            ("AUDIT_STREAM_PREFIX", config.nats.stream_prefix, defaults.stream_prefix),
            ("AUDIT_INGEST_DURABLE", config.ingest.durable, DEFAULT_DURABLE),
        )
        if value != default
    ]
    command += ["audit-service", "nats-config", *(part for spec in args.producer for part in ("--producer", spec))]
    command += [part for spec in args.alerts_subscriber for part in ("--alerts-subscriber", spec)]
    print(render(users, command=shlex.join(command)), end="")
    return 0


def _with_dev_metrics_address(config: Config) -> Config:
    """The dev stack serves /metrics, /livez and /readyz on its default address unless one is configured."""
    if config.telemetry.metrics_address:
        return config
    from .devstack.stack import DEFAULT_METRICS_ADDRESS

    return dataclasses.replace(
        config, telemetry=dataclasses.replace(config.telemetry, metrics_address=DEFAULT_METRICS_ADDRESS)
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    telemetry: Telemetry | None = None
    try:
        config = load_config()
        configure_logging(config.log_level, config.log_format)
        if args.command == "dev":
            overrides = {"AUDIT_GRPC_ADDRESS": args.grpc_address, "AUDIT_HTTP_ADDRESS": args.http_address}
            if any(overrides.values()):
                config = load_config(env={**os.environ, **{name: value for name, value in overrides.items() if value}})
            config = _with_dev_metrics_address(config)
        if args.command == "rules":
            from .rules_cli import rules_command

            return rules_command(args)
        if args.command not in ("token", "nats-config", "verify-file"):
            # Before anything makes a span or an instrument, so that they bind to these providers.
            telemetry = setup_telemetry(config.telemetry, default_service_name(args.command))
        if args.command == "dev":
            from audit_client.validation import TENANT_PATTERN

            from .devstack.stack import DevSettings, require_binaries, run_dev

            if not TENANT_PATTERN.fullmatch(args.tenant):
                raise ConfigError("--tenant", f"must match {TENANT_PATTERN.pattern}")
            require_binaries()
            telemetry.log_summary()
            settings = DevSettings(
                data_dir=args.data_dir, nats_port=args.nats_port, postgres_port=args.postgres_port, tenant=args.tenant
            )
            stop = asyncio.Event()
            asyncio.run(_until_signalled(run_dev(config, settings, stop), stop))
            return 0
        if args.command == "token":
            return _mint(config, args)
        if args.command == "nats-config":
            return _nats_config(config, args)
        if args.command == "verify-file":
            from .offline_verify import verify_files_command

            return verify_files_command(config, args)
        config = config.require_database()
        if args.command == "migrate":
            applied = asyncio.run(run_migrate(config))
            print(f"applied {len(applied)} migrations: {', '.join(applied)}" if applied else "schema is up to date")
            return 0
        owner_url = config.database.migrate_url or config.database.url
        if args.command == "verify":
            from .store.verify import verify_command

            return _on_database(config.database.url, verify_command(config, args))
        if args.command == "checkpoint":
            from .store.checkpoints import checkpoint_command

            return _on_database(config.database.url, checkpoint_command(config, args))
        if args.command == "retention":
            from .store.retention import retention_command

            return _on_database(owner_url, retention_command(config, args))
        if args.command == "rebuild-projections":
            return _on_database(owner_url, _rebuild_projections(config))
        if telemetry is not None:
            telemetry.log_summary()
        stop = asyncio.Event()
        asyncio.run(_until_signalled(_serving_process(config, args.command, stop), stop))
        return 0
    except ConfigError as error:
        print(f"audit-service: configuration error: {error}", file=sys.stderr)
        return 2
    except (StartupError, RuntimeError) as error:
        print(f"audit-service: {error}", file=sys.stderr)
        return 1
    finally:
        if telemetry is not None:
            telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
