"""Verification of the stored hash chains against the log, and against signed checkpoints of their heads."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from opentelemetry import trace

from ..config import Config
from ..core.chain import ChainBreak, ChainVerifier, CheckpointHeads
from ..core.checkpoints import Checkpoint, parse_json_lines, signature_problem
from ..core.records import GENESIS_HASH, columns_sql
from ..core.signing import Verifier
from ..errors import ConfigError
from ..offline_verify import manifest_signature_problem, verify_archive_sequence
from .checkpoints import checkpoint_verifiers
from .sized_reads import byte_bounded, read_bytes_sql, sized_rows

tracer = trace.get_tracer("audit_service.store.verify")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    """Events whose hashes were recomputed."""
    tenants: int
    """Tenant chains with events in the verified range."""
    first_break: ChainBreak | None
    checkpoint_heads_checked: int = 0
    """Chain heads of signed checkpoints compared with the recomputed chains."""
    checkpoints: int = 0
    """Signed checkpoints whose signatures were verified."""
    positions: tuple[int, int] | None = None
    """The log positions found held by exactly one event each, none missing (None: not checked as a run, as
    for one tenant, whose events are each checked to hold a position no other event holds)."""
    archived_positions: int = 0
    """Positions 1 to this one are in retention's archives (their records checked gapless from 1); the log
    goes on at the next."""

    @property
    def ok(self) -> bool:
        return self.first_break is None


_STARTS_BEFORE = """
SELECT h.tenant, e.position, e.hash
FROM audit_chain_heads AS h
CROSS JOIN LATERAL (
    SELECT position, hash FROM audit_events
    WHERE tenant = h.tenant AND position < $1
    ORDER BY position DESC LIMIT 1
) AS e
"""


# The first position out of turn in the log: repeated, after a missing one, or beyond the head ($2). Positions
# must run from $1 + 1; the scan follows the primary key's order, keeping one row in memory.
_FIRST_OUT_OF_TURN = """
SELECT position, previous FROM (
    SELECT position, lag(position, 1, $1::bigint) OVER (ORDER BY position) AS previous
    FROM audit_events {where}
) AS run
WHERE position <> previous + 1 OR position > $2
ORDER BY position LIMIT 1
"""
# With one tenant's rows: how many events of the log hold the row's position (one probe per partition).
_HOLDERS = "(SELECT count(*) FROM audit_events AS other WHERE other.position = e.position) AS holders"


_ARCHIVES = """
SELECT partition_name, first_position, last_position, events, archive_sha256, manifest
FROM audit_archives WHERE events > 0 ORDER BY first_position
"""


@dataclass(frozen=True, slots=True)
class ArchivedChains:
    """Where the tenant chains continue after the partitions retention archived, as their manifests say."""

    anchors: dict[str, tuple[int, bytes]]
    """Per tenant, the position and hash of its last archived event (from the latest archive holding it)."""
    first_break: ChainBreak | None = None
    last_position: int = 0
    """The last position the archives hold (0: none): the log goes on at the next one."""


def _broken(name: str, position: int, problem: str) -> ArchivedChains:
    reason = f"the record of archived partition {name} in audit_archives: {problem}"
    return ArchivedChains({}, ChainBreak("", position, reason, archive=name))


async def archived_chains(
    conn: asyncpg.Connection, verifiers: Sequence[Verifier] = (), tenant: str | None = None
) -> ArchivedChains:
    """The chain anchors derived from the manifests in audit_archives (not from audit_chain_anchors, which a
    superuser can move), after checking the manifests: signed with one of `verifiers` when any are configured,
    consistent with their rows, covering the positions from 1 without gaps, each tenant's chain continuing from
    one archive to the next (from the genesis hash). With `tenant`, only that tenant's chain is considered."""
    manifests: list[tuple[Path, dict[str, Any]]] = []
    anchors: dict[str, tuple[int, bytes]] = {}
    next_position = 1
    for row in await conn.fetch(_ARCHIVES):
        name = row["partition_name"]
        manifest = row["manifest"]
        manifest = orjson.loads(manifest) if isinstance(manifest, str | bytes) else dict(manifest)
        try:
            stated = (manifest["partition"], manifest["first_position"], manifest["last_position"])
            stated += (manifest["events"], manifest["archive_sha256"])
            runs = {
                run_tenant: (run["last_position"], bytes.fromhex(run["last_hash"]))
                for run_tenant, run in manifest["tenants"].items()
            }
            for run in manifest["tenants"].values():
                bytes.fromhex(run["first_prev_hash"])
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            return _broken(name, row["first_position"], f"bad manifest: {error}")
        recorded = (name, row["first_position"], row["last_position"], row["events"], row["archive_sha256"])
        if stated != recorded:
            return _broken(name, row["first_position"], "the row and its manifest differ")
        if row["first_position"] != next_position:
            problem = (
                f"it starts at position {row['first_position']}, but the archives before it end at position "
                f"{next_position - 1} (an archive's record was deleted or altered)"
            )
            return _broken(name, row["first_position"], problem)
        next_position = row["last_position"] + 1
        if verifiers and (tenant is None or tenant in runs):
            problem = manifest_signature_problem(manifest, verifiers)
            if problem is not None:
                return _broken(name, row["first_position"], problem)
        if tenant is not None:
            manifest = {**manifest, "tenants": {t: run for t, run in manifest["tenants"].items() if t == tenant}}
            runs = {t: run for t, run in runs.items() if t == tenant}
        manifests.append((Path(name), manifest))
        anchors.update(runs)
    linked = verify_archive_sequence(manifests)
    if not linked.ok:
        failure = linked.failures[0]
        return _broken(str(linked.path), failure.position or 0, failure.reason)
    return ArchivedChains(anchors, last_position=next_position - 1)


PAGE_EVENTS = 2000
"""Events read per query, at most."""
PAGE_BYTES = 4 * 1024 * 1024
"""Bytes of events read per query, at most (plus one event): verification runs in the API too (VerifyChain)."""


ReserveBytes = Callable[[int], AbstractAsyncContextManager[Any]]
"""Holds a number of bytes of the process's read budget for a block (api/read_budget.ReadBudget.reserve); what
it yields has `keep(size)`, to give back what the page turned out not to need."""


async def _rows_by_tenant(
    conn: asyncpg.Connection,
    columns: str,
    conditions: list[str],
    args: list[object],
    reserve: ReserveBytes | None = None,
) -> AsyncIterator[asyncpg.Record]:
    """The log's rows matching `conditions`, by tenant then position, in keyset pages bounded by bytes (in the
    caller's snapshot: REPEATABLE READ makes the pages one consistent read). With `reserve`, each page holds its
    bytes of the read budget until its rows have been checked."""
    after: tuple[str, int] | None = None
    while True:
        page_args = [*args, PAGE_EVENTS, PAGE_BYTES]
        where = list(conditions)
        if after is not None:
            where.append(f"(e.tenant, e.position) > (${len(page_args) + 1}, ${len(page_args) + 2})")
            page_args += after
        page = (
            f"SELECT {columns}, {read_bytes_sql('e')} AS read_bytes FROM audit_events AS e "
            f"WHERE {' AND '.join(where)} ORDER BY e.tenant, e.position LIMIT ${len(args) + 1}"
        )
        sql = byte_bounded(page, max_bytes_parameter=f"${len(args) + 2}", order="tenant, position")
        async with reserve(PAGE_BYTES) if reserve is not None else contextlib.nullcontext() as reservation:
            rows = sized_rows(await conn.fetch(sql, *page_args))
            if reservation is not None:
                reservation.keep(rows.size)
            for row in rows.rows:
                yield row
        if not (rows.cut or len(rows.rows) == PAGE_EVENTS):
            return
        after = (rows.rows[-1]["tenant"], rows.rows[-1]["position"])


async def verify_log(
    conn: asyncpg.Connection,
    *,
    tenant: str | None = None,
    from_position: int = 0,
    to_position: int = 0,
    verifiers: Sequence[Verifier] = (),
    external_checkpoints: Iterable[Checkpoint] = (),
    reserve: ReserveBytes | None = None,
) -> VerifyReport:
    """Recomputes every tenant's chain (or one tenant's) and compares it with the stored hashes and heads, and
    with the chain heads of the signed checkpoints (audit_checkpoints and `external_checkpoints`).

    Chains whose oldest events were archived by retention start from their anchors, as the manifests in
    audit_archives state them (see `archived_chains`; audit_chain_anchors must agree with them); with
    `from_position`, each chain starts from the stored hash of its last event before it. The recorded chain
    heads are compared only when the range reaches the end of the log. Checkpoints are checked only with
    `verifiers` (the public keys they must be signed with); a bad signature is a break.

    Positions: the log must hold each position after the archived ones (audit_archives, checked gapless from 1)
    up to the head (audit_log_head) in exactly one event, and none beyond the head; with a range, those of the
    range. A missing position belongs to no tenant, so with `tenant` each of its events is checked instead to
    hold a position no other event holds, after the archived ones and not beyond the head. Checked after the
    chains (a chain break names its tenant and is reported first), as one more pass over the primary key.

    Reads in a REPEATABLE READ snapshot, in keyset pages of at most PAGE_EVENTS events and PAGE_BYTES bytes;
    memory grows with the tenants and the distinct checkpoint heads, not with the events.

    Args:
        from_position: only events at or after this position (0: from the first one retained).
        to_position: only events at or before this position (0: up to the last one).
        reserve: the process's read budget (the API's VerifyChain): each page of events holds its bytes of it
            while it is checked; None (the CLI): unbounded by a process budget, pages still bounded by PAGE_BYTES.

    Raises:
        ResourceExhaustedError: from `reserve`, when the budget has no room for a page in time.
    """
    if from_position < 0 or to_position < 0 or (to_position and from_position > to_position):
        raise ValueError(f"bad position range {from_position}..{to_position}")
    external_checkpoints = list(external_checkpoints)
    if external_checkpoints and not verifiers:
        raise ValueError("external checkpoints need the public key they are signed with")
    args: list[object] = []
    tenant_filter = ""
    if tenant is not None:
        args.append(tenant)
        tenant_filter = "WHERE tenant = $1"
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        log_head = await conn.fetchval("SELECT last_position FROM audit_log_head")
        reaches_end = not to_position or to_position >= log_head
        archived = await archived_chains(conn, verifiers, tenant)
        if archived.first_break:
            return VerifyReport(0, 0, archived.first_break)
        starts = dict(archived.anchors)
        recorded_anchors = {
            row["tenant"]: (row["position"], bytes(row["hash"]))
            for row in await conn.fetch(
                f"SELECT tenant, position, hash FROM audit_chain_anchors {tenant_filter}", *args
            )
        }
        if from_position > 1:
            query = _STARTS_BEFORE + (" WHERE h.tenant = $2" if tenant is not None else "")
            for row in await conn.fetch(query, from_position, *args):
                starts[row["tenant"]] = (row["position"], bytes(row["hash"]))

        heads = CheckpointHeads()
        checkpoints = 0
        first_break: ChainBreak | None = None
        if verifiers:
            stored = conn.cursor(
                "SELECT log_position, statement, key_id, signature FROM audit_checkpoints ORDER BY log_position"
            )
            async for row in stored:
                checkpoint = Checkpoint(bytes(row["statement"]), row["key_id"], bytes(row["signature"]))
                first_break = _add_checkpoint(
                    heads, checkpoint, verifiers, row["log_position"], tenant, from_position, to_position
                )
                checkpoints += 1
                if first_break:
                    break
            for checkpoint in external_checkpoints:
                if first_break:
                    break
                first_break = _add_checkpoint(heads, checkpoint, verifiers, None, tenant, from_position, to_position)
                checkpoints += 1
        verifier = ChainVerifier(starts, heads)
        if first_break:
            return VerifyReport(0, 0, first_break, checkpoints=checkpoints)

        chain_heads = (
            {
                row["tenant"]: row
                for row in await conn.fetch(
                    f"SELECT tenant, last_position, last_hash FROM audit_chain_heads {tenant_filter}", *args
                )
            }
            if reaches_end
            else {}
        )
        conditions = [f"position >= ${len(args) + 1}"]
        args.append(from_position)
        if tenant is not None:
            conditions.append("tenant = $1")
        if to_position:
            conditions.append(f"position <= ${len(args) + 1}")
            args.append(to_position)
        current: str | None = None
        seen: set[str] = set()
        holders = f", {_HOLDERS}" if tenant is not None else ""
        rows = _rows_by_tenant(conn, f"{columns_sql('e.')}{holders}", conditions, args, reserve)
        async with contextlib.aclosing(rows):  # a break gives the page's reservation back now
            async for row in rows:
                if row["tenant"] != current:
                    if current is not None:
                        first_break = _end_of_tenant(verifier, current, chain_heads, reaches_end)
                        if first_break:
                            break
                    current = row["tenant"]
                    seen.add(current)
                first_break = verifier.check(row)
                if first_break is None and tenant is not None:
                    first_break = _held_alone(row, archived.last_position, log_head)
                if first_break:
                    break
        if first_break is None and current is not None:
            first_break = _end_of_tenant(verifier, current, chain_heads, reaches_end)
        if first_break is None:
            first_break = verifier.check_unseen(seen)
        if first_break is None and reaches_end:
            for missing in sorted(set(chain_heads) - seen):
                head = chain_heads[missing]
                if starts.get(missing) == (head["last_position"], bytes(head["last_hash"])):
                    continue  # every event of the chain was archived by retention (or lies before the range)
                first_break = ChainBreak(missing, head["last_position"], "every event of the chain is gone")
                break
        if first_break is None:
            first_break = _moved_anchor(recorded_anchors, archived.anchors)
        positions = None
        if first_break is None and tenant is None:
            first_break, positions = await _check_positions(
                conn, archived.last_position, log_head, from_position, to_position
            )
        if first_break is None and tenant is None and reaches_end:
            first_break = await _check_event_ids(conn, log_head, whole_log=from_position <= 1)
    return VerifyReport(
        checked=verifier.checked,
        tenants=len(seen),
        first_break=first_break,
        checkpoint_heads_checked=verifier.checkpoint_heads_checked,
        checkpoints=checkpoints,
        positions=positions,
        archived_positions=archived.last_position,
    )


def _position_break(position: int, reason: str, tenant: str = "") -> ChainBreak:
    return ChainBreak(tenant, position, reason, positions=True)


def _archived_yet_in_log(position: int, archived_last: int) -> str:
    return f"position {position} is in the archives (positions 1-{archived_last}) and still in the log"


def _beyond_head(position: int, log_head: int) -> str:
    return (
        f"an event holds position {position}, beyond the log head at position {log_head}: the head was moved back, "
        "and the next append would repeat the position"
    )


async def _check_positions(
    conn: asyncpg.Connection, archived_last: int, log_head: int, from_position: int, to_position: int
) -> tuple[ChainBreak | None, tuple[int, int] | None]:
    """The log's positions within the range: each held by one event, none missing, none beyond the head, none
    archived. Returns the first break, or the positions found in turn (None when the range holds none)."""
    if log_head < archived_last:
        reason = f"the log head is at position {log_head}, before the last archived position {archived_last}"
        return _position_break(log_head, reason), None
    first = max(from_position, archived_last + 1)
    reaches_end = not to_position or to_position >= log_head
    last = log_head if reaches_end else to_position
    conditions = []
    if from_position > archived_last + 1:
        conditions.append("position > $1")
    if not reaches_end:
        conditions.append("position <= $2")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    out_of_turn = await conn.fetchrow(_FIRST_OUT_OF_TURN.format(where=where), first - 1, last)
    if out_of_turn is not None:
        position, previous = out_of_turn["position"], out_of_turn["previous"]
        if position <= archived_last:
            return _position_break(position, _archived_yet_in_log(position, archived_last)), None
        if position == previous:
            events = await conn.fetchval("SELECT count(*) FROM audit_events WHERE position = $1", position)
            reason = f"position {position} is held by {events} events: a reader past it misses all but one"
            return _position_break(position, reason), None
        if previous < last:
            reason = f"no event holds position {previous + 1} (the next event holds position {position})"
            return _position_break(previous + 1, reason), None
        return _position_break(position, _beyond_head(position, log_head)), None
    if first > last:
        return None, None
    stored_last = await conn.fetchval(
        "SELECT max(position) FROM audit_events WHERE position >= $1 AND position <= $2", first, last
    )
    if stored_last != last:
        missing = (stored_last or first - 1) + 1
        up_to = f" or any after it up to position {last}" if missing < last else ""
        reason = f"no event holds position {missing}{up_to} (the log head is at position {log_head})"
        return _position_break(missing, reason), None
    return None, (first, last)


_EVENT_IDS = "SELECT min(position) AS first, max(position) AS last FROM audit_event_ids"


async def _check_event_ids(conn: asyncpg.Connection, log_head: int, *, whole_log: bool) -> ChainBreak | None:
    """audit_event_ids registers the id of every event ever stored (archived ones too) at its position, so its
    positions are exactly 1 to the head. An id registered anywhere else was put there by hand: below 1, an event
    published under it is taken for one already stored and never stored; beyond the head, the next append collides
    with it and ingestion stops. With `whole_log`, the ids are also counted (one more pass over its index)."""
    ids = await conn.fetchrow(_EVENT_IDS)
    if ids["first"] is not None and ids["first"] < 1:
        reason = (
            f"audit_event_ids registers an event id at position {ids['first']}, which no event can hold: an event "
            "published under that id would be taken for one already stored, and never stored"
        )
        return _position_break(ids["first"], reason)
    if ids["last"] is not None and ids["last"] > log_head:
        reason = (
            f"audit_event_ids registers an event id at position {ids['last']}, beyond the log head at position "
            f"{log_head}: the next append that reaches it collides with it, and ingestion stops"
        )
        return _position_break(ids["last"], reason)
    if whole_log and (registered := await conn.fetchval("SELECT count(*) FROM audit_event_ids")) != log_head:
        reason = (
            f"audit_event_ids registers {registered} event ids for the log's {log_head} positions: an id was removed "
            "(its event could be stored twice)"
        )
        return _position_break(log_head, reason)
    return None


def _held_alone(row: asyncpg.Record, archived_last: int, log_head: int) -> ChainBreak | None:
    """One tenant's event must hold a position of its own, after the archived ones and not beyond the head."""
    position, tenant = row["position"], row["tenant"]
    if position <= archived_last:
        return _position_break(position, _archived_yet_in_log(position, archived_last), tenant)
    if position > log_head:
        return _position_break(position, _beyond_head(position, log_head), tenant)
    if row["holders"] > 1:
        reason = (
            f"the tenant's event at position {position} shares it with {row['holders'] - 1} other event(s): a "
            "reader past the position misses all but one"
        )
        return _position_break(position, reason, tenant)
    return None


def _add_checkpoint(
    heads: CheckpointHeads,
    checkpoint: Checkpoint,
    verifiers: Sequence[Verifier],
    stored_log_position: int | None,
    tenant: str | None,
    from_position: int,
    to_position: int,
) -> ChainBreak | None:
    """Verifies one checkpoint's signature and adds its heads; a bad one is a break at its log position."""
    try:
        statement = checkpoint.parsed()
    except ValueError as error:
        return ChainBreak("", stored_log_position or 0, str(error))
    problem = signature_problem(checkpoint, verifiers)
    if problem:
        return ChainBreak("", statement.log_position, problem)
    if stored_log_position is not None and stored_log_position != statement.log_position:
        return ChainBreak(
            "",
            stored_log_position,
            f"the stored checkpoint's statement is signed for log position {statement.log_position}",
        )
    heads.add(statement, tenant=tenant, from_position=from_position, to_position=to_position)
    return None


def _moved_anchor(recorded: dict[str, tuple[int, bytes]], archived: dict[str, tuple[int, bytes]]) -> ChainBreak | None:
    """A tenant whose anchor in audit_chain_anchors is not where the archives' manifests say its chain goes on."""
    for tenant in sorted(set(recorded) | set(archived)):
        if recorded.get(tenant) == archived.get(tenant):
            continue
        position, digest = archived.get(tenant, (0, GENESIS_HASH))
        stated = recorded.get(tenant)
        says = f"after position {stated[0]} (hash {stated[1].hex()[:16]}...)" if stated else "from the genesis hash"
        return ChainBreak(
            tenant,
            position,
            f"audit_chain_anchors says the chain goes on {says}, the archives' manifests say after position "
            f"{position} (hash {digest.hex()[:16]}...): the anchor was moved",
        )
    return None


def _end_of_tenant(
    verifier: ChainVerifier, tenant: str, chain_heads: dict[str, asyncpg.Record], reaches_end: bool
) -> ChainBreak | None:
    broken = verifier.finish_tenant()
    if broken or not reaches_end:
        return broken
    head = chain_heads.get(tenant)
    if head is None:
        return ChainBreak(tenant, 0, "the tenant has events but no chain head")
    return verifier.check_head(tenant, head["last_position"], head["last_hash"])


def _positions_line(report: VerifyReport, args: argparse.Namespace) -> str:
    if args.tenant is not None:
        return "; no other event holds the position of any of them"
    archived = f" (1-{report.archived_positions} are archived)" if report.archived_positions else ""
    if report.positions is None:
        return f"; no log positions in the range{archived}"
    first, last = report.positions
    return f"; positions {first}-{last} held by one event each{archived}"


def read_checkpoints_file(path: str) -> list[Checkpoint]:
    """The checkpoints of a JSON-lines file; ConfigError (one line naming --checkpoints) when unreadable."""
    try:
        with open(path, "rb") as file:
            return parse_json_lines(file.read())
    except OSError as error:
        raise ConfigError("--checkpoints", f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError("--checkpoints", f"{path}: {error}") from None


async def verify_command(config: Config, args: argparse.Namespace) -> int:
    """`audit-service verify`: prints one line, exit status 0 when the chains check out, 1 when not."""
    if args.from_position < 0 or args.to_position < 0:
        raise ConfigError("--from-position/--to-position", "must not be negative")
    if args.to_position and args.from_position > args.to_position:
        raise ConfigError("--from-position", f"{args.from_position} is after --to-position {args.to_position}")
    verifiers = checkpoint_verifiers(config.checkpoints)
    external = read_checkpoints_file(str(args.checkpoints)) if args.checkpoints else []
    if external and not verifiers:
        raise ConfigError(
            "AUDIT_CHECKPOINT_VERIFY_KEY_FILE", "is required to check --checkpoints (the signers' public key)"
        )
    conn = await asyncpg.connect(config.database.url)
    try:
        with tracer.start_as_current_span("audit.verify", attributes={"audit.tenant": args.tenant or ""}) as span:
            report = await verify_log(
                conn,
                tenant=args.tenant,
                from_position=args.from_position,
                to_position=args.to_position,
                verifiers=verifiers,
                external_checkpoints=external,
            )
            span.set_attributes({"audit.verify.ok": report.ok, "audit.verify.events_checked": report.checked})
    finally:
        await conn.close()
    if report.ok:
        signed = (
            f"; {report.checkpoint_heads_checked} chain heads of {report.checkpoints} signed checkpoints matched"
            if verifiers
            else "; no checkpoint key configured, signed checkpoints not checked"
        )
        positions = _positions_line(report, args)
        print(f"ok: {report.checked} events in {report.tenants} tenant chains verified{signed}{positions}")
        return 0
    print(f"FAILED after {report.checked} events: {report.first_break}")
    return 1
