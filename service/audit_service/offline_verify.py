"""`audit-service verify-file`: verification of NDJSON exports and retention archives from the files alone.

No database is needed: every NDJSON line carries what its chain hash covers (core/ndjson.py).

- An archive is named by its manifest (`<partition>.manifest.json`, written by store/retention.py). Checked: the
  manifest's Ed25519 signature (with a verify key configured it must be signed with one of the configured keys;
  unsigned is acceptable only when no key is configured), the archive's SHA-256 and size, every line's
  hash, gapless positions from the manifest's first to its last, and each tenant's chain from the manifest's
  first_prev_hash (the hash at the start boundary) to its last_hash, with its counts.
- A plain export (`.ndjson` or `.ndjson.gz` without a manifest) may be filtered, so a tenant's consecutive
  lines need not be consecutive events: every line's hash is checked, positions must increase, and the links
  between a tenant's consecutive lines are reported as checked (prev_hash is the previous line's hash) or as
  gaps (events not in the export).

With `--checkpoints FILE` (the JSON lines of signed checkpoints, core/checkpoints.py), every line at a position a
checkpoint names as a tenant's chain head must carry the hash the checkpoint signed: a history rewritten
consistently, manifest and all, still differs from what was signed before.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .core.checkpoints import parse_json_lines, signature_problem
from .core.ndjson import sealed_from_line
from .core.records import GENESIS_HASH, chain_hash
from .core.signing import Verifier
from .errors import ConfigError
from .store.checkpoints import checkpoint_verifiers

MANIFEST_FORMAT = "audit-archive/1"
MANIFEST_SUFFIX = ".manifest.json"
ARCHIVE_SUFFIX = ".ndjson.gz"
SIGNATURE_FIELDS = ("key_id", "signature")
_READ_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A tenant chain's head as a signed checkpoint states it."""

    hash: bytes
    log_position: int
    """The checkpoint's log position (which checkpoint said so)."""


SignedHeads = Mapping[tuple[str, int], SignedHead]
"""(tenant, position) -> the hash signed checkpoints state for that tenant's event at that position."""


def load_checkpoints(data: bytes, verifiers: Iterable[Verifier]) -> dict[tuple[str, int], SignedHead]:
    """The chain heads stated by the signed checkpoints of a JSON-lines file's content; ValueError naming the
    first checkpoint whose signature does not check out with the keys, or that contradicts another."""
    verifiers = tuple(verifiers)
    heads: dict[tuple[str, int], SignedHead] = {}
    for number, checkpoint in enumerate(parse_json_lines(data), start=1):
        problem = signature_problem(checkpoint, verifiers)
        if problem is not None:
            raise ValueError(f"checkpoint {number}: {problem}")
        statement = checkpoint.parsed()
        for tenant, head in statement.heads.items():
            signed = SignedHead(head.hash, statement.log_position)
            known = heads.setdefault((tenant, head.position), signed)
            if known.hash != signed.hash:
                raise ValueError(
                    f"checkpoint {number}: tenant {tenant!r} at position {head.position} has another hash than in "
                    f"the checkpoint at log position {known.log_position}"
                )
    return heads


def manifest_signing_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a manifest's signature covers: the manifest without its signature fields, as canonical JSON."""
    unsigned = {key: value for key, value in manifest.items() if key not in SIGNATURE_FIELDS}
    return orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a file does not verify, and where."""

    reason: str
    position: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.position is not None and self.line is not None:
            return f"position {self.position} (line {self.line}): {self.reason}"
        if self.line is not None:
            return f"line {self.line}: {self.reason}"
        if self.position is not None:
            return f"position {self.position}: {self.reason}"
        return self.reason


@dataclass(frozen=True, slots=True)
class FileReport:
    """The outcome of verifying one file: a summary when it verifies, its failures otherwise (first first)."""

    path: Path
    summary: str = ""
    failures: tuple[Failure, ...] = ()
    manifest: Mapping[str, Any] | None = None
    """The manifest of an archive that verified (for linking it with the archives next to it)."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.path}: {self.summary}"
        first, *others = self.failures
        also = "".join(f"; also: {other}" for other in others)
        return f"FAILED: {self.path}: {first}{also}"


@dataclass(slots=True)
class TenantRun:
    """What the lines of one tenant showed."""

    events: int
    first_position: int
    first_prev_hash: bytes
    last_position: int
    last_hash: bytes


@dataclass(slots=True)
class _LineCheck:
    """Checks lines in file order. Stops at the first failure (later lines would only echo it)."""

    contiguous: bool
    """Positions must be gapless (an archive of a partition) rather than only increasing (an export)."""
    expected_starts: Mapping[str, bytes] | None = None
    """Per tenant, the prev_hash its first line must carry (an archive), or None (an export)."""
    signed_heads: SignedHeads = field(default_factory=dict)
    matched_heads: set[tuple[str, int]] = field(default_factory=set)
    runs: dict[str, TenantRun] = field(default_factory=dict)
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None
    links: int = 0
    gaps: int = 0
    failure: Failure | None = None

    def add(self, line_number: int, line: bytes) -> None:
        try:
            sealed = sealed_from_line(line)
        except ValueError as error:
            self.failure = Failure(str(error), line=line_number)
            return
        position = sealed.position

        def fail(reason: str) -> None:
            self.failure = Failure(reason, position, line_number)

        if chain_hash(sealed.prev_hash, sealed.canonical) != sealed.hash:
            return fail("hash does not match the event's content (the event was altered)")
        signed = self.signed_heads.get((sealed.tenant, position))
        if signed is not None:
            if signed.hash != sealed.hash:
                return fail(
                    f"hash differs from the signed checkpoint at log position {signed.log_position} "
                    "(the history was rewritten)"
                )
            self.matched_heads.add((sealed.tenant, position))
        if self.last_position is not None:
            if position <= self.last_position:
                return fail(f"position does not follow {self.last_position} (lines out of order or repeated)")
            if self.contiguous and position != self.last_position + 1:
                missing = f"{self.last_position + 1}..{position - 1}" if position > self.last_position + 2 else ""
                return fail(f"position {missing or self.last_position + 1} is missing (lines were removed)")
        run = self.runs.get(sealed.tenant)
        if run is None:
            if self.expected_starts is not None:
                expected = self.expected_starts.get(sealed.tenant)
                if expected is None:
                    return fail(f"tenant {sealed.tenant!r} is not in the manifest")
                if sealed.prev_hash != expected:
                    return fail(f"prev_hash is not the manifest's first_prev_hash of tenant {sealed.tenant!r}")
            self.runs[sealed.tenant] = TenantRun(1, position, sealed.prev_hash, position, sealed.hash)
        else:
            if sealed.prev_hash == run.last_hash:
                self.links += 1
            elif self.contiguous:
                return fail("prev_hash is not the hash of the tenant's previous event (an event is missing or moved)")
            else:
                self.gaps += 1
            run.events += 1
            run.last_position = position
            run.last_hash = sealed.hash
        self.events += 1
        if self.first_position is None:
            self.first_position = position
        self.last_position = position


class _DigestingReader:
    """A binary file whose bytes are hashed as they are read (the archive is read once)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_READ_CHUNK):
            pass


def _lines(file: BinaryIO, compressed: bool) -> Iterator[bytes]:
    stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
    yield from stream


def _check_lines(file: BinaryIO, compressed: bool, check: _LineCheck) -> None:
    try:
        for number, line in enumerate(_lines(file, compressed), start=1):
            check.add(number, line)
            if check.failure is not None:
                return
    except (OSError, EOFError, zlib.error) as error:
        check.failure = Failure(f"cannot read the file: {error}", line=check.events + 1)


def _checkpoint_summary(check: _LineCheck) -> str:
    return f"; {len(check.matched_heads)} chain heads match signed checkpoints" if check.signed_heads else ""


def verify_export(path: Path, signed_heads: SignedHeads | None = None) -> FileReport:
    """Verifies a plain NDJSON export (`.ndjson`, or `.ndjson.gz`), and the heads of signed checkpoints it holds."""
    check = _LineCheck(contiguous=False, signed_heads=signed_heads or {})
    try:
        with path.open("rb") as file:
            _check_lines(file, path.name.endswith(".gz"), check)
    except OSError as error:
        return FileReport(path, failures=(Failure(f"cannot read the file: {error.strerror or error}"),))
    if check.failure is not None:
        return FileReport(path, failures=(check.failure,))
    if check.events == 0:
        return FileReport(path, "no events")
    return FileReport(
        path,
        f"{check.events} events at positions {check.first_position}-{check.last_position} in {len(check.runs)} "
        f"tenant chains, every hash matches; {check.links} links checked, {check.gaps} gaps (events not in the "
        f"export){_checkpoint_summary(check)}",
    )


_MANIFEST_FIELDS = (
    "format",
    "partition",
    "range_start",
    "range_end",
    "events",
    "first_position",
    "last_position",
    "tenants",
    "archive_file",
    "archive_sha256",
    "archive_size",
)
_TENANT_FIELDS = ("events", "first_position", "first_prev_hash", "last_position", "last_hash")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest; ValueError naming what is wrong with it."""
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not an archive manifest: {error}") from None
    if not isinstance(manifest, dict):
        raise ValueError("not an archive manifest: not a JSON object")
    missing = [name for name in _MANIFEST_FIELDS if name not in manifest]
    if missing:
        raise ValueError(f"not an archive manifest: {', '.join(missing)} missing")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ValueError(f"unknown manifest format {manifest['format']!r} (this verifier reads {MANIFEST_FORMAT})")
    tenants = manifest["tenants"]
    if not isinstance(tenants, dict) or any(
        not isinstance(run, dict) or any(name not in run for name in _TENANT_FIELDS) for run in tenants.values()
    ):
        raise ValueError(f"not an archive manifest: every tenant needs {', '.join(_TENANT_FIELDS)}")
    if Path(manifest["archive_file"]).name != manifest["archive_file"]:
        raise ValueError("not an archive manifest: archive_file must be a file name next to the manifest")
    return manifest


def manifest_signature_problem(manifest: Mapping[str, Any], verifiers: Sequence[Verifier]) -> str | None:
    """Why the manifest's signature does not check out with any of the keys (an unsigned manifest included), or
    None when it does."""
    signature, key_id = manifest.get("signature"), manifest.get("key_id")
    if not signature:
        return "the manifest is unsigned, but a verify key is configured (it must be signed)"
    by_id = {verifier.key_id: verifier for verifier in verifiers}
    verifier = by_id.get(key_id)  # type: ignore[arg-type]
    if verifier is None:
        return f"signed by key {key_id}, the verify key is {', '.join(sorted(by_id)) or 'none'}"
    try:
        valid = verifier.verify(manifest_signing_bytes(manifest), bytes.fromhex(signature))
    except (ValueError, TypeError):
        valid = False
    if not valid:
        return f"the manifest's signature does not match (key {key_id}): the manifest was altered"
    return None


def _signature_status(manifest: Mapping[str, Any], verifiers: Sequence[Verifier]) -> tuple[str, Failure | None]:
    if not verifiers:
        if not manifest.get("signature"):
            return "unsigned (no verify key configured)", None
        return f"signed by key {manifest.get('key_id')}, signature not checked (no verify key configured)", None
    problem = manifest_signature_problem(manifest, verifiers)
    if problem is not None:
        return "", Failure(problem)
    return f"signature ok (key {manifest.get('key_id')})", None


def _compare_runs(manifest: Mapping[str, Any], check: _LineCheck) -> Failure | None:
    """The manifest's totals and chain ends, and the signed heads in its range, against what the lines showed."""
    if (check.first_position, check.last_position) != (manifest["first_position"], manifest["last_position"]):
        return Failure(
            f"the archive holds positions {check.first_position}-{check.last_position}, the manifest says "
            f"{manifest['first_position']}-{manifest['last_position']} (lines were removed at an end)",
            check.last_position,
        )
    if check.events != manifest["events"]:
        return Failure(f"the archive holds {check.events} events, the manifest says {manifest['events']}")
    for tenant, expected in sorted(manifest["tenants"].items()):
        run = check.runs.get(tenant)
        if run is None:
            return Failure(f"tenant {tenant!r} of the manifest has no events in the archive")
        shown = (run.events, run.first_position, run.last_position, run.last_hash.hex())
        wanted = (expected["events"], expected["first_position"], expected["last_position"], expected["last_hash"])
        if shown != wanted:
            return Failure(
                f"tenant {tenant!r}: the archive holds {run.events} events at {run.first_position}-"
                f"{run.last_position} ending in hash {run.last_hash.hex()[:16]}..., the manifest says "
                f"{expected['events']} at {expected['first_position']}-{expected['last_position']} ending in "
                f"{str(expected['last_hash'])[:16]}...",
                run.last_position,
            )
    # Every position of the range is in the archive: a signed head in it must be one of its lines.
    first, last = manifest["first_position"], manifest["last_position"]
    for (tenant, position), signed in sorted(check.signed_heads.items(), key=lambda item: item[0][1]):
        if first is not None and first <= position <= last and (tenant, position) not in check.matched_heads:
            return Failure(
                f"the signed checkpoint at log position {signed.log_position} names this event as tenant "
                f"{tenant!r}'s, the archive holds another tenant's (the history was rewritten)",
                position,
            )
    return None


def verify_archive(
    manifest_path: Path, verifiers: Sequence[Verifier] = (), signed_heads: SignedHeads | None = None
) -> FileReport:
    """Verifies a retention archive against its manifest, and the heads of signed checkpoints in its range. With
    `verifiers` (the configured public keys), the manifest must be signed with one of them."""
    try:
        manifest = _read_manifest(manifest_path)
        expected_starts = {tenant: bytes.fromhex(run["first_prev_hash"]) for tenant, run in manifest["tenants"].items()}
    except OSError as error:
        return FileReport(manifest_path, failures=(Failure(f"cannot read the manifest: {error.strerror or error}"),))
    except (ValueError, TypeError) as error:
        return FileReport(manifest_path, failures=(Failure(str(error)),))
    failures: list[Failure] = []
    signature, signature_failure = _signature_status(manifest, verifiers)
    archive_path = manifest_path.parent / manifest["archive_file"]
    check = _LineCheck(contiguous=True, expected_starts=expected_starts, signed_heads=signed_heads or {})
    try:
        with archive_path.open("rb") as file:
            reader = _DigestingReader(file)
            _check_lines(reader, True, check)  # type: ignore[arg-type]
            reader.drain()
    except OSError as error:
        return FileReport(
            manifest_path, failures=(Failure(f"cannot read the archive {archive_path}: {error.strerror or error}"),)
        )
    if check.failure is not None:
        failures.append(check.failure)
    elif (mismatch := _compare_runs(manifest, check)) is not None:
        failures.append(mismatch)
    if (reader.sha256.hexdigest(), reader.size) != (manifest["archive_sha256"], manifest["archive_size"]):
        failures.append(Failure("the archive's sha256 or size does not match the manifest (the file was changed)"))
    if signature_failure is not None:
        failures.append(signature_failure)
    if failures:
        return FileReport(manifest_path, failures=tuple(failures))
    positions = f"at positions {check.first_position}-{check.last_position} " if check.events else ""
    return FileReport(
        manifest_path,
        f"{manifest['partition']}: {check.events} events {positions}in {len(check.runs)} tenant chains, recorded "
        f"{manifest['range_start']}..{manifest['range_end']}; archive sha256 matches; {signature}"
        f"{_checkpoint_summary(check)}",
        manifest=manifest,
    )


def manifest_of(path: Path) -> Path | None:
    """The manifest a file names or sits next to: the file itself, or `<name>.manifest.json` beside a
    `<name>.ndjson.gz` archive."""
    if path.name.endswith(MANIFEST_SUFFIX):
        return path
    if path.name.endswith(ARCHIVE_SUFFIX):
        beside = path.with_name(path.name.removesuffix(ARCHIVE_SUFFIX) + MANIFEST_SUFFIX)
        if beside.is_file():
            return beside
    return None


def verify_file(path: Path, verifiers: Sequence[Verifier] = (), signed_heads: SignedHeads | None = None) -> FileReport:
    """Verifies an archive (by its manifest) or a plain export."""
    manifest = manifest_of(path)
    if manifest is not None:
        return verify_archive(manifest, verifiers, signed_heads)
    return verify_export(path, signed_heads)


def verify_archive_sequence(manifests: Sequence[tuple[Path, Mapping[str, Any]]]) -> FileReport:
    """Checks that archives which follow each other (the next starts at the position after the last one ends)
    link up: each tenant's chain in the later one starts at the hash its previous archived event ended with (at
    the genesis hash when the sequence starts at position 1). Run on manifests that verified one by one."""
    ordered = sorted(
        ((path, manifest) for path, manifest in manifests if manifest["events"]), key=lambda m: m[1]["first_position"]
    )
    links = 0
    chain_ends: dict[str, str] = {}
    previous_last: int | None = None
    for path, manifest in ordered:
        if previous_last is None or manifest["first_position"] != previous_last + 1:
            chain_ends = {}  # a gap: no link to check across it
            from_genesis = manifest["first_position"] == 1
        for tenant, run in sorted(manifest["tenants"].items()):
            expected = chain_ends.get(tenant, GENESIS_HASH.hex() if from_genesis else None)
            if expected is not None:
                links += 1
                if run["first_prev_hash"] != expected:
                    return FileReport(
                        path,
                        failures=(
                            Failure(
                                f"tenant {tenant!r} does not continue the chain of the archive before it (an archive "
                                "was altered or replaced)",
                                position=run["first_position"],
                            ),
                        ),
                    )
            chain_ends[tenant] = run["last_hash"]
        previous_last = manifest["last_position"]
    summary = f"{len(ordered)} archives in sequence; {links} tenant chain links between them checked"
    return FileReport(Path("archive sequence"), summary)


def verify_files_command(config, args) -> int:
    """`audit-service verify-file FILE...`: one line per file, exit status 0 only when every file verifies."""
    verifiers = checkpoint_verifiers(config.checkpoints)
    signed_heads: SignedHeads | None = None
    if args.checkpoints is not None:
        if not verifiers:
            raise ConfigError(
                "AUDIT_CHECKPOINT_VERIFY_KEY_FILE", "--checkpoints needs the public key the checkpoints are signed with"
            )
        try:
            signed_heads = load_checkpoints(Path(args.checkpoints).read_bytes(), verifiers)
        except OSError as error:
            print(f"FAILED: {args.checkpoints}: cannot read the file: {error.strerror or error}", flush=True)
            return 1
        except ValueError as error:
            print(f"FAILED: {args.checkpoints}: {error}", flush=True)
            return 1
    all_ok = True
    archives = []
    for path in args.files:
        report = verify_file(path, verifiers, signed_heads)
        all_ok = all_ok and report.ok
        print(report, flush=True)
        if report.manifest is not None:
            archives.append((report.path, report.manifest))
    if len(archives) > 1:
        report = verify_archive_sequence(archives)
        all_ok = all_ok and report.ok
        print(report, flush=True)
    return 0 if all_ok else 1
