"""`audit-service`: dev | migrate | ingest | serve | verify."""

from __future__ import annotations

import argparse
import asyncio
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
from .runtime import StartupError, run_api, run_ingest, run_migrate

log = logging.getLogger("audit_service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-service",
        description="Append-only audit log: NATS JetStream ingest into PostgreSQL, read over gRPC. "
        "Configured by AUDIT_* environment variables (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = commands.add_parser("dev", help="run everything locally: embedded NATS and PostgreSQL, worker, API")
    dev.add_argument("--data-dir", type=Path, default=Path(".audit-dev"), help="data directory (default .audit-dev)")
    dev.add_argument("--nats-port", type=int, default=4222, help="NATS port (default 4222)")
    dev.add_argument("--postgres-port", type=int, default=55432, help="PostgreSQL port (default 55432)")
    dev.add_argument("--grpc-address", help="gRPC listen address (default $AUDIT_GRPC_ADDRESS or 0.0.0.0:50051)")
    commands.add_parser("migrate", help="apply database migrations (AUDIT_MIGRATE_DATABASE_URL or AUDIT_DATABASE_URL)")
    commands.add_parser("ingest", help="run an ingest worker (AUDIT_DATABASE_URL, AUDIT_NATS_URL)")
    commands.add_parser("serve", help="serve the gRPC API (AUDIT_DATABASE_URL, AUDIT_GRPC_ADDRESS)")
    verify = commands.add_parser("verify", help="recompute the hash chains and report the first break")
    verify.add_argument("--tenant", help="only this tenant's chain")
    return parser


async def _until_signalled(main: Coroutine[Any, Any, Any], stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await main


async def _verify(config: Config, tenant: str | None) -> int:
    import asyncpg

    from .store.verify import verify_log

    conn = await asyncpg.connect(config.database.url)
    try:
        report = await verify_log(conn, tenant=tenant)
    finally:
        await conn.close()
    if report.ok:
        print(f"ok: {report.checked} events in {report.tenants} tenant chains verified")
        return 0
    print(f"FAILED after {report.checked} events: {report.first_break}")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config()
        configure_logging(config.log_level)
        if args.command == "dev":
            from .devstack.stack import DevSettings, run_dev

            if args.grpc_address:
                config = load_config(env={**os.environ, "AUDIT_GRPC_ADDRESS": args.grpc_address})
            settings = DevSettings(data_dir=args.data_dir, nats_port=args.nats_port, postgres_port=args.postgres_port)
            stop = asyncio.Event()
            asyncio.run(_until_signalled(run_dev(config, settings, stop), stop))
            return 0
        config = config.require_database()
        if args.command == "migrate":
            applied = asyncio.run(run_migrate(config))
            print(f"applied {len(applied)} migrations: {', '.join(applied)}" if applied else "schema is up to date")
            return 0
        if args.command == "verify":
            return asyncio.run(_verify(config, args.tenant))
        stop = asyncio.Event()
        runner = run_ingest(config, stop) if args.command == "ingest" else run_api(config, stop)
        asyncio.run(_until_signalled(runner, stop))
        return 0
    except ConfigError as error:
        print(f"audit-service: configuration error: {error}", file=sys.stderr)
        return 2
    except (StartupError, RuntimeError) as error:
        print(f"audit-service: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
