"""Signed checkpoints of the chain heads: taken on demand (`audit-service checkpoint`) and periodically by the
ingest worker, stored in audit_checkpoints, exported as JSON lines for parties that keep them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

from ..config import CheckpointConfig, Config
from ..core.checkpoints import (
    ChainHead,
    Checkpoint,
    parse_json_line,
    parse_json_lines,
    sign_checkpoint,
    signature_problem,
    to_json_line,
)
from ..core.signing import Signer, Verifier, load_signer, load_verifier
from ..errors import ConfigError
from ..telemetry import metrics
from .pool import acquire

__all__ = [
    "Checkpoint",
    "PeriodicCheckpointer",
    "checkpoint_command",
    "checkpoint_verifiers",
    "parse_json_line",
    "parse_json_lines",
    "take_checkpoint",
    "to_json_line",
]

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO audit_checkpoints (log_position, created_at, statement, key_id, signature) VALUES ($1, $2, $3, $4, $5)
"""
_AT_POSITION = "SELECT statement, key_id, signature FROM audit_checkpoints WHERE log_position = $1 ORDER BY created_at"


async def take_checkpoint(conn: asyncpg.Connection, signer: Signer) -> Checkpoint:
    """Signs and stores a checkpoint of every tenant's chain head, read in one snapshot.

    When no event was stored since the latest checkpoint signed with `signer`'s key, that checkpoint is returned
    instead of a new one. The service role may insert rows too, so a stored row counts only when its signature
    verifies with the key and it states this log position; any other row there is ignored (verification
    reports it as a break).
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        log_position = await conn.fetchval("SELECT last_position FROM audit_log_head")
        for row in await conn.fetch(_AT_POSITION, log_position):
            stored = _from_row(row)
            if _signed_at(stored, signer.verifier, log_position):
                return stored
        heads = {
            row["tenant"]: ChainHead(row["last_position"], bytes(row["last_hash"]))
            for row in await conn.fetch("SELECT tenant, last_position, last_hash FROM audit_chain_heads ORDER BY 1")
        }
    created_at = dt.datetime.now(dt.UTC)
    checkpoint = sign_checkpoint(signer, log_position, created_at, heads)
    # Outside the snapshot: two workers may both sign this position and store two checkpoints; both are true.
    await conn.execute(_INSERT, log_position, created_at, checkpoint.statement, checkpoint.key_id, checkpoint.signature)
    return checkpoint


def _signed_at(checkpoint: Checkpoint, verifier: Verifier, log_position: int) -> bool:
    """Whether the checkpoint is signed with the verifier's key and states `log_position`."""
    if signature_problem(checkpoint, (verifier,)) is not None:
        return False
    try:
        return checkpoint.parsed().log_position == log_position
    except ValueError:
        return False


def _from_row(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(statement=bytes(row["statement"]), key_id=row["key_id"], signature=bytes(row["signature"]))


def checkpoint_signer(config: CheckpointConfig) -> Signer | None:
    """The key checkpoints are signed with (None when unset); ConfigError (one line) when unusable."""
    return load_signer(config.signing_key_file) if config.signing_key_file else None


def checkpoint_verifiers(config: CheckpointConfig) -> tuple[Verifier, ...]:
    """The public keys checkpoints are verified with: every file of AUDIT_CHECKPOINT_VERIFY_KEY_FILE (the keys
    that signed before a rotation) and the signing key's public half, one per key id; none when neither is set
    (checkpoints are not checked). ConfigError (one line naming the variable) when a file is unusable."""
    verifiers = [load_verifier(path) for path in config.verify_key_files]
    signer = checkpoint_signer(config)
    if signer is not None:
        verifiers.append(signer.verifier)
    return tuple({verifier.key_id: verifier for verifier in verifiers}.values())


class PeriodicCheckpointer:
    """Signs a checkpoint every `interval_seconds` while running (nothing without a signing key). A failure
    is logged and retried at the next interval; it never stops the process it runs in."""

    def __init__(
        self, signer: Signer | None, interval_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._signer = signer
        self._interval = interval_seconds
        self._clock = clock
        self.taken = 0
        """Checkpoints signed or found current so far."""
        self.covered_at: float | None = None
        """When (on `clock`) the log's head was last covered by a signed checkpoint, or when checkpointing started."""

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> PeriodicCheckpointer:
        """Raises ConfigError when the signing key file is unusable (before anything connects)."""
        return cls(checkpoint_signer(config), config.interval_seconds)

    @contextlib.asynccontextmanager
    async def running(self, pool: asyncpg.Pool) -> AsyncIterator[None]:
        if self._signer is None:
            yield
            return
        log.info("signing checkpoints of the chain heads every %.0f s with key %s", self._interval, self._signer.key_id)
        self.covered_at = self._clock()
        remove_age = metrics.CHECKPOINT_AGE.add({}, self.age)
        task = asyncio.create_task(self._run(pool), name="audit-checkpointer")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            remove_age()

    def age(self) -> float | None:
        """Seconds since the log's head was last covered by a signed checkpoint (audit.checkpoint.age)."""
        return None if self.covered_at is None else max(self._clock() - self.covered_at, 0.0)

    async def sign_once(self, pool: asyncpg.Pool) -> None:
        """Signs a checkpoint now (or finds the latest one current); a failure is logged, never raised."""
        assert self._signer is not None
        try:
            async with acquire(pool) as conn:
                checkpoint = await take_checkpoint(conn, self._signer)
            self.taken += 1
            self.covered_at = self._clock()
            log.debug("checkpoint at log position %d", checkpoint.parsed().log_position)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a checkpoint is retried at the next interval; ingest goes on
            log.warning("cannot sign a checkpoint of the chain heads: %s: %s", type(error).__name__, error)

    async def _run(self, pool: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sign_once(pool)


async def checkpoint_command(config: Config, args: argparse.Namespace) -> int:
    """`audit-service checkpoint`: signs a checkpoint now, prints it as a JSON line and appends it to --output."""
    signer = checkpoint_signer(config.checkpoints)
    if signer is None:
        raise ConfigError("AUDIT_CHECKPOINT_SIGNING_KEY_FILE", "is required to sign checkpoints")
    conn = await asyncpg.connect(config.database.url)
    try:
        checkpoint = await take_checkpoint(conn, signer)
    finally:
        await conn.close()
    line = to_json_line(checkpoint)
    if args.output:
        await asyncio.to_thread(_append_line, args.output, line)
    print(line)
    return 0


def _append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as output:
        output.write(line + "\n")
