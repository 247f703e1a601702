"""Signed checkpoints of the chain heads: the statement that is signed, and the JSON-lines form kept by
outside parties. Pure.

A statement is canonical JSON (orjson, sorted keys, no insignificant whitespace):

    {"created_at": "2025-06-01T12:00:00.000000+00:00", "heads": {"acme": {"hash": "<hex>", "position": 41}},
     "log_position": 42, "version": "audit.checkpoint/1"}

`heads` holds every tenant chain's last position and hash once the log's first `log_position` events were
stored. Whoever keeps a signed statement can later tell a rewritten history from the real one: recomputing a
tenant's chain up to that position must end in that hash.

The JSON-lines export has one checkpoint per line: {"key_id": ..., "signature": "<hex>", "statement":
"<base64>"}; the statement is kept as the exact bytes that were signed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from .signing import Signer, Verifier

CHECKPOINT_VERSION = "audit.checkpoint/1"


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last event of one tenant's chain: its position and hash."""

    position: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class CheckpointStatement:
    """What a checkpoint asserts."""

    log_position: int
    created_at: dt.datetime
    heads: Mapping[str, ChainHead]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement, as stored in audit_checkpoints and kept by outside parties."""

    statement: bytes
    """The canonical JSON that was signed (see `checkpoint_statement`)."""
    key_id: str
    """The signing key's id (core/signing.key_id)."""
    signature: bytes
    """Ed25519 signature of `statement`."""

    def parsed(self) -> CheckpointStatement:
        """The statement's content; raises ValueError when it is not a checkpoint statement."""
        return parse_statement(self.statement)


def checkpoint_statement(log_position: int, created_at: dt.datetime, heads: Mapping[str, ChainHead]) -> bytes:
    """The canonical bytes of a checkpoint statement."""
    return orjson.dumps(
        {
            "version": CHECKPOINT_VERSION,
            "log_position": log_position,
            "created_at": created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "heads": {tenant: {"position": head.position, "hash": head.hash.hex()} for tenant, head in heads.items()},
        },
        option=orjson.OPT_SORT_KEYS,
    )


def parse_statement(statement: bytes) -> CheckpointStatement:
    """Reads a statement back; raises ValueError when it is not a checkpoint statement."""
    try:
        document = orjson.loads(statement)
        if not isinstance(document, dict) or document.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"not a {CHECKPOINT_VERSION} statement")
        log_position = document["log_position"]
        created_at = dt.datetime.fromisoformat(document["created_at"])
        heads = {}
        for tenant, head in document["heads"].items():
            position, digest = head["position"], bytes.fromhex(head["hash"])
            if not isinstance(position, int) or position <= 0 or len(digest) != 32:
                raise ValueError(f"bad chain head of tenant {tenant!r}")
            heads[tenant] = ChainHead(position, digest)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"not a checkpoint statement: {error}") from None
    if not isinstance(log_position, int) or log_position < 0:
        raise ValueError("not a checkpoint statement: bad log_position")
    return CheckpointStatement(log_position=log_position, created_at=created_at, heads=heads)


def sign_checkpoint(
    signer: Signer, log_position: int, created_at: dt.datetime, heads: Mapping[str, ChainHead]
) -> Checkpoint:
    """A checkpoint of the heads, signed."""
    statement = checkpoint_statement(log_position, created_at, heads)
    return Checkpoint(statement=statement, key_id=signer.key_id, signature=signer.sign(statement))


def signature_problem(checkpoint: Checkpoint, verifiers: Iterable[Verifier]) -> str | None:
    """Why the checkpoint's signature does not check out with any of the keys, or None when it does."""
    by_id = {verifier.key_id: verifier for verifier in verifiers}
    verifier = by_id.get(checkpoint.key_id)
    if verifier is None:
        known = ", ".join(sorted(by_id)) or "none"
        return f"the checkpoint is signed with key {checkpoint.key_id!r}, not a configured key ({known})"
    if not verifier.verify(checkpoint.statement, checkpoint.signature):
        return f"the checkpoint's signature does not verify with key {checkpoint.key_id!r} (forged or altered)"
    return None


def to_json_line(checkpoint: Checkpoint) -> str:
    """The checkpoint as one JSON line (without the newline) for the JSON-lines export."""
    return orjson.dumps(
        {
            "key_id": checkpoint.key_id,
            "signature": checkpoint.signature.hex(),
            "statement": base64.b64encode(checkpoint.statement).decode(),
        },
        option=orjson.OPT_SORT_KEYS,
    ).decode()


def parse_json_line(line: str | bytes) -> Checkpoint:
    """Reads one line of the JSON-lines export; raises ValueError when it is not one."""
    try:
        document = orjson.loads(line)
        return Checkpoint(
            statement=base64.b64decode(document["statement"], validate=True),
            key_id=str(document["key_id"]),
            signature=bytes.fromhex(document["signature"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as error:
        raise ValueError(f"not a signed checkpoint line: {error}") from None


def parse_json_lines(text: str | bytes) -> list[Checkpoint]:
    """Every checkpoint of a JSON-lines file's content (blank lines skipped); ValueError names a bad line."""
    lines = text.decode() if isinstance(text, bytes) else text
    checkpoints = []
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            checkpoints.append(parse_json_line(line))
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
    return checkpoints
