"""``tellonce audit``: verify the log (from the database or an exported bundle), export it.

The bundle is one JSON-lines file of typed records:

- ``{"type": "bundle", "format": 2, "origin", "verifier_key", "tree_size"}`` first;
- ``{"type": "entry", "leaf_index", "entry_id", "leaf_hash", "entry", "columns"}`` per leaf,
  in order, where ``leaf_hash`` (base64) is the hash recorded when the entry was sequenced
  and ``columns`` are the filter columns the database holds for it (``time`` in ISO 8601);
- ``{"type": "checkpoint", "tree_size", "root_hash", "note"}`` per signed checkpoint, the
  note carrying every witness cosignature the log holds for it.

Offline verification trusts only the keys given on the command line: the log's
verifier keys (several where the checkpoint key changed: each checkpoint is held to the
key the log records in force at its size, ``checkpoint_keys``), and the witnesses' keys
for ``--witness``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.audit import cosignatures as cosignature_repository
from service.audit import repository as audit_repository
from service.audit import service as audit_service
from service.audit import witnessing
from service.audit.checkpoint import CheckpointError, NoteSigner, NoteVerifier
from service.audit.checkpoint_keys import key_range_lines
from service.audit.config import AuditSettings, load_signer
from service.audit.key_arguments import parse_key_argument, read_text_file
from service.audit.releases import ReleaseChecker, ReleaseReport
from service.audit.verify import (
    Expectations,
    LogVerifier,
    StoredCheckpoint,
    TrustedKeys,
    VerificationFailed,
    distinct_keys,
    open_checkpoint,
    quick_parse,
    trusted_keys,
)
from service.audit.verify_pages import Parallel
from service.audit.writer import FILTER_COLUMNS
from service.config import Settings, get_settings
from service.db import engine_for, unusable_database
from service.policy.signing import OwnerVerifier, SigningKeyError
from service.private_files import open_owner_only
from service.witness.cosignature import CosignatureError, CosignatureVerifier, split_note

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
console = Console(stderr=True)
PAGE = 2000


def _verifier_from(key: str | None) -> NoteVerifier:
    if key is None:
        settings = get_settings()
        return NoteVerifier.parse(load_signer(settings, AuditSettings().origin).verifier_key())
    return parse_key_argument(key, NoteVerifier.parse)


def _verifiers_from(keys: Sequence[str]) -> list[NoteVerifier]:
    """The trusted log keys given with ``--key`` (each inline or in a file), each once; the
    installation's own key if none is given."""
    if not keys:
        return [_verifier_from(None)]
    return distinct_keys(_verifier_from(key) for key in keys)


def trusted_checkpoint(path: Path, note: str, verifier: TrustedKeys) -> StoredCheckpoint:
    """A checkpoint kept outside the log (a note an auditor saved in ``path``), checked
    with the log's keys."""
    opened, _signed = open_checkpoint(note, trusted_keys(verifier), f"trusted checkpoint {path}")
    return StoredCheckpoint(
        opened.size, opened.root_hash, note, f"trusted checkpoint {path} (size {opened.size})"
    )


def parallel_verification(database_url: str) -> Parallel | None:
    """``tellonce audit verify``'s worker processes: one per CPU this process may use
    (none with one CPU, where they would only add their start-up)."""
    workers = len(os.sched_getaffinity(0))
    return Parallel(database_url, workers=workers) if workers > 1 else None


async def verify_database(
    settings: Settings,
    verifier: TrustedKeys,
    expectations: Expectations | None = None,
    parallel: Parallel | None = None,
) -> int:
    """Check the log in the settings' database up to the size it has when the check starts
    (a running server keeps appending), in worker processes as ``parallel`` says, else in
    this one; return that size or raise ``VerificationFailed``. The engine is the server's
    (``engine_for``: its pool settings and its handling of lost connections)."""
    return (await database_verification(settings, verifier, expectations, parallel)).compact.size


async def database_verification(
    settings: Settings,
    verifier: TrustedKeys,
    expectations: Expectations | None = None,
    parallel: Parallel | None = None,
) -> LogVerifier:
    """``verify_database``, returning the finished verification (which key verified what)."""
    engine = engine_for(settings)
    try:
        with Progress(
            TextColumn("verifying audit log"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("entries"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("verify", total=None)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            log = await audit_service.stored_log_verification(
                engine.connect, verifier, report, expectations, parallel=parallel
            )
            log.finish()
            return log
    finally:
        await engine.dispose()


def _bundle_lines(path: Path, containing: bytes = b"") -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The bundle's lines, their numbers and their records (read by ``quick_parse``) in
    order; with ``containing``, only the lines that hold those bytes are parsed (a cheap
    filter: every record of the wanted type holds them)."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if containing not in line:
                continue
            try:
                record = quick_parse(line)
            except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
                raise VerificationFailed(f"{path}:{number}: not a JSON line") from None
            if not isinstance(record, dict):
                raise VerificationFailed(f"{path}:{number}: not a typed record")
            yield number, line, record


def _bundle_records(path: Path, containing: bytes = b"") -> Iterator[dict[str, Any]]:
    for _number, _line, record in _bundle_lines(path, containing):
        yield record


def _member(record: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """``record[name]`` if it is a ``kind`` (an integer not below 0, not a boolean);
    ``VerificationFailed`` naming the line otherwise: a bundle is outside input."""
    value = record.get(name)
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise VerificationFailed(f"{where}: {name} is not a whole number")
    if isinstance(value, kind):
        return value
    raise VerificationFailed(f"{where}: {name} is missing or not a {kind.__name__}")


def _exact_entry(line: bytes) -> Any:
    """A bundle line's entry as ``json.loads`` reads it (see ``quick_parse``)."""
    record = json.loads(line)
    return record.get("entry") if isinstance(record, dict) else None


def _b64(value: Any, where: str, name: str) -> bytes:
    """A bundle's base64 hash; ``VerificationFailed`` naming the line and member otherwise."""
    try:
        return binascii.a2b_base64(str(value), strict_mode=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed(f"{where}: {name} is not base64") from None


def _bundle_checkpoints(path: Path) -> list[StoredCheckpoint]:
    # Checkpoints come after the entries: a first pass parses only the lines that name one.
    checkpoints = []
    for number, _line, record in _bundle_lines(path, b'"checkpoint"'):
        if record.get("type") != "checkpoint":
            continue
        where = f"{path}:{number}"
        size = _member(record, "tree_size", int, where)
        root = _b64(_member(record, "root_hash", str, where), where, "root_hash")
        note = _member(record, "note", str, where)
        checkpoints.append(StoredCheckpoint(size, root, note, f"checkpoint of size {size}"))
    return checkpoints


def verify_bundle(
    path: Path,
    verifier: TrustedKeys,
    expectations: Expectations | None = None,
    on_entry: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> int:
    """Recompute the bundle's log and check its checkpoints and stored columns; the tree size.
    Each verified entry is also handed to ``on_entry`` (``check-releases``). Each line is
    parsed once; the entry's canonical bytes are derived from it."""
    return bundle_verification(path, verifier, expectations, on_entry).compact.size


def bundle_verification(
    path: Path,
    verifier: TrustedKeys,
    expectations: Expectations | None = None,
    on_entry: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> LogVerifier:
    """``verify_bundle``, returning the finished verification (which key verified what)."""
    log = LogVerifier(verifier, _bundle_checkpoints(path), expectations or Expectations())
    add = log.add_record
    for number, line, record in _bundle_lines(path):
        if record.get("type") != "entry":
            continue
        where = f"{path}:{number}"
        leaf_index, label = _member(record, "leaf_index", int, where), f"entry {record.get('entry_id')}"
        try:
            entry = add(
                leaf_index,
                label,
                record.get("entry"),
                _b64(_member(record, "leaf_hash", str, where), where, "leaf_hash"),
                _bundle_columns(record, where),
                partial(_exact_entry, line),
            )
        except RecursionError:
            # orjson reads 1,024 levels; writing the canonical bytes, or ``json`` reading
            # the entry again, recurses once per level and may run out of stack first.
            raise VerificationFailed(f"{where}: nested too deeply to read") from None
        log.note_entry(leaf_index, entry)
        if on_entry is not None:
            on_entry(leaf_index, label, entry)
    log.finish()
    return log


def _bundle_columns(record: dict[str, Any], where: str) -> tuple[Any, ...] | None:
    """An entry's stored columns in ``FILTER_COLUMNS`` order, ``time`` as an instant; None
    for an entry that carries none. Columns that are there but not a JSON object are
    ``VerificationFailed`` naming the line: skipping their check would pass them unseen."""
    if "columns" not in record:
        return None
    columns = record["columns"]
    if not isinstance(columns, dict):
        raise VerificationFailed(f"{where}: columns is not a JSON object")
    values = [columns.get(column) for column in FILTER_COLUMNS]
    try:
        time = datetime.fromisoformat(str(values[0]))
    except ValueError:
        return (None, *values[1:])  # an unreadable time differs from any entry's
    values[0] = time if time.tzinfo is not None else time.replace(tzinfo=UTC)
    return tuple(values)


@dataclass(frozen=True)
class WitnessedCheckpoint:
    tree_size: int
    root_hash: bytes
    witnesses: tuple[str, ...]


def check_cosignatures(
    checkpoints: list[StoredCheckpoint], witnesses: list[CosignatureVerifier], quorum: int
) -> WitnessedCheckpoint:
    """The largest checkpoint cosigned by at least ``quorum`` of ``witnesses``.

    Every cosignature line by one of the witnesses must verify; lines by other keys are
    ignored. Raises ``VerificationFailed`` if no checkpoint reaches the quorum.
    """
    best: WitnessedCheckpoint | None = None
    for checkpoint in checkpoints:
        try:
            body, lines = split_note(checkpoint.note)
            names = tuple(w.name for w in witnesses if w.find(body, lines) is not None)
        except CosignatureError as exc:
            raise VerificationFailed(f"{checkpoint.label}: {exc}") from None
        if len(names) >= quorum and (best is None or checkpoint.tree_size > best.tree_size):
            best = WitnessedCheckpoint(checkpoint.tree_size, checkpoint.root_hash, names)
    if best is None:
        raise VerificationFailed(
            f"no checkpoint in the bundle is cosigned by {quorum} of the {len(witnesses)} witnesses given"
        )
    return best


def _one_witness_per_key(witnesses: Sequence[CosignatureVerifier]) -> None:
    """Refuse a public key given twice (under one name or two): a cosignature does not sign
    its witness's name (C2SP tlog-cosignature), so it would count twice toward the quorum."""
    for number, verifier in enumerate(witnesses):
        for earlier in witnesses[:number]:
            if earlier.public_key == verifier.public_key:
                raise CosignatureError(
                    f"the witness keys {earlier.name} and {verifier.name} are the same public key: "
                    "give each witness once"
                )


async def export_bundle(settings: Settings, signer: NoteSigner, out: Path) -> int:
    """Write the bundle described in this module's docstring from the settings' database
    (on the server's engine, ``engine_for``); return the tree size."""
    engine = engine_for(settings)
    try:
        async with engine.connect() as conn:
            size = await audit_repository.tree_size(conn)
            checkpoints = await audit_repository.all_checkpoints(conn)
            cosigned = await cosignature_repository.all_cosignatures(conn)
        # Who looked at which citizen, when and why: for the operator's eyes, as a key is.
        with open_owner_only(out) as handle:
            header = {
                "type": "bundle",
                "format": 2,
                "origin": signer.name,
                "verifier_key": signer.verifier_key(),
                "tree_size": size,
            }
            handle.write(json.dumps(header) + "\n")
            async with (
                engine.connect() as conn,
                contextlib.aclosing(audit_repository.stream_for_verification(conn, size, PAGE)) as pages,
            ):
                async for rows in pages:
                    for leaf, entry_id, canonical, recorded, *stored in rows:
                        columns = dict(zip(FILTER_COLUMNS, stored, strict=True))
                        # ISO 8601 whatever the database: SQLite gives its text, PostgreSQL a datetime.
                        time = columns["time"]
                        if isinstance(time, str):
                            time = datetime.fromisoformat(time).replace(tzinfo=UTC)
                        columns["time"] = time.isoformat() if isinstance(time, datetime) else time
                        record = {
                            "type": "entry",
                            "leaf_index": leaf,
                            "entry_id": entry_id,
                            "leaf_hash": base64.b64encode(recorded or b"").decode(),
                            "entry": json.loads(canonical) if canonical else None,
                            "columns": columns,
                        }
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            for checkpoint_id, tree_size, root, note in checkpoints:
                record = {
                    "type": "checkpoint",
                    "tree_size": tree_size,
                    "root_hash": base64.b64encode(root).decode(),
                    "note": witnessing.cosigned_note(note, cosigned.get(checkpoint_id, {})),
                }
                handle.write(json.dumps(record) + "\n")
        return size
    finally:
        await engine.dispose()


@app.command("verify")
def verify(
    bundle: Path | None = typer.Option(None, "--bundle", help="Verify an exported bundle, offline."),
    key: list[str] = typer.Option(
        [],
        "--key",
        help=(
            "A verifier key you trust for the log's checkpoints (vkey string or a file holding it); "
            "repeatable: give each key that signed, old and new, after a checkpoint-key change. "
            "Required with --bundle; default: the installation's key."
        ),
    ),
    witness: list[str] = typer.Option(
        [], "--witness", help="A witness's vkey (or a file holding it); repeatable. Needs --bundle."
    ),
    quorum: int | None = typer.Option(
        None, "--quorum", min=1, help="How many of the --witness keys must cosign (default: all)."
    ),
    trusted: list[Path] = typer.Option(
        [],
        "--trusted-checkpoint",
        help="A checkpoint note kept outside the log; the log must still reach it. Repeatable.",
    ),
    min_size: int = typer.Option(0, "--min-size", min=0, help="Fail if the log holds fewer entries."),
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Let an empty log, or one with no checkpoint yet, pass."
    ),
) -> None:
    """Recompute every leaf and the tree, re-derive every filter column, and check every
    checkpoint (and cosignatures, offline), each against the key the log records in force
    at its size. Exit 1 naming the first bad entry; exit 2 if the log could not be read at
    all. Prints which key verified which checkpoints."""
    if witness and bundle is None:
        typer.echo("--witness checks the cosignatures in a bundle: pass --bundle too", err=True)
        raise typer.Exit(2)
    if quorum is not None and quorum > len(witness):
        typer.echo(f"--quorum {quorum} needs at least {quorum} --witness keys", err=True)
        raise typer.Exit(2)
    if bundle is not None and not key:
        # Before any key is read: without --key the installation's own key would be
        # loaded (and, outside production, made) to check a bundle it must not vouch for.
        typer.echo("--bundle needs --key: offline verification trusts only the key you give", err=True)
        raise typer.Exit(2)
    witnessed: WitnessedCheckpoint | None = None
    try:
        verifier = _verifiers_from(key)
        witnesses = [parse_key_argument(value, CosignatureVerifier.parse) for value in witness]
        _one_witness_per_key(witnesses)
    except CheckpointError as exc:
        # A key that cannot be read says nothing of the log: a usage error, as above.
        typer.echo(f"--key/--witness: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        notes = [(path, read_text_file(path)) for path in trusted]
    except CheckpointError as exc:
        # So is a trusted checkpoint's file that cannot be read (a note that does not
        # open with the log's key is a verdict: exit 1, below).
        typer.echo(f"--trusted-checkpoint: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        expectations = Expectations(
            trusted=tuple(trusted_checkpoint(path, note, verifier) for path, note in notes),
            min_size=min_size,
            allow_empty=allow_empty,
        )
        if bundle is not None:
            log = bundle_verification(bundle, verifier, expectations)
            if witnesses:
                witnessed = check_cosignatures(
                    _bundle_checkpoints(bundle), witnesses, quorum if quorum is not None else len(witnesses)
                )
        else:
            settings = get_settings()
            parallel = parallel_verification(settings.database_url)
            log = asyncio.run(database_verification(settings, verifier, expectations, parallel))
    except (VerificationFailed, CheckpointError) as exc:
        typer.echo(f"audit log does NOT verify: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        if unusable_database(exc) is not None:
            raise  # `tellonce` names the database and exits 2
        # Not a verdict on the log: exit 1 is kept for a log that fails its checks.
        typer.echo(f"audit log not checked: {exc}", err=True)
        raise typer.Exit(2) from None
    size = log.compact.size
    if witnessed is not None:
        root = base64.b64encode(witnessed.root_hash).decode()
        typer.echo(
            f"audit log verified: {size} entries, checkpoint {root} "
            f"(size {witnessed.tree_size}) cosigned by {len(witnessed.witnesses)} of {len(witnesses)} "
            f"witnesses ({', '.join(witnessed.witnesses)})"
        )
    else:
        typer.echo(f"audit log verified: {size} entries, every checkpoint and column valid")
    for line in key_range_lines(log.key_ranges):
        typer.echo(line)
    for switch in log.unrecorded_key_switches:
        typer.echo(f"warning: {switch}", err=True)


@app.command("export")
def export(out: Path = typer.Option(..., "--out", help="The bundle file to write (JSON lines).")) -> None:
    """Write the log, its cosigned checkpoints and the verifier key as one bundle for offline checks."""
    settings = get_settings()
    signer = load_signer(settings, AuditSettings().origin)
    try:
        size = asyncio.run(export_bundle(settings, signer, out))
    except OSError as exc:
        if unusable_database(exc) is not None:
            raise  # `tellonce` names the database and exits 2
        typer.echo(f"cannot write {out}: {exc.strerror or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"exported {size} entries to {out}")


def check_bundle_releases(
    path: Path, verifier: TrustedKeys, owner: str, owner_key: OwnerVerifier
) -> tuple[ReleaseReport, list[str]]:
    """Verify the bundle as ``audit verify --bundle`` does, re-deciding each release on the
    way; the report, and the switches of checkpoint key the log does not record."""
    checker = ReleaseChecker(owner, owner_key)
    log = bundle_verification(path, verifier, on_entry=checker.add)
    return checker.finish(), log.unrecorded_key_switches


@app.command("check-releases")
def check_releases(
    bundle: Path = typer.Option(..., "--bundle", exists=True, dir_okay=False, help="An exported bundle."),
    owner: str = typer.Option(..., "--owner", help="The owning department whose releases are checked."),
    owner_key: str = typer.Option(..., "--owner-key", help="The owner's vkey (or a file holding it)."),
    key: list[str] = typer.Option(
        [],
        "--key",
        help=(
            "A verifier key of the log (vkey or file); repeatable, as for `audit verify`; "
            "default: the one in the bundle's header."
        ),
    ),
) -> None:
    """Re-decide, offline, every release of OWNER's fields in the bundle.

    Verifies the bundle first (as `audit verify --bundle`), then checks that each release
    cites an agreement version the log holds, signed by OWNER's key, and that the same
    engine, given what the entry records, permits it. Exit 1 naming each unjustified one.
    """
    try:
        owner_verifier = parse_key_argument(owner_key, partial(OwnerVerifier.parse, department=owner))
    except (SigningKeyError, CheckpointError) as exc:
        typer.echo(f"--owner-key: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        # A --key that cannot be read says nothing of the log: a usage error, as in verify.
        given = _verifiers_from(key) if key else None
    except CheckpointError as exc:
        typer.echo(f"--key: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        if given is None:
            given = _verifiers_from([_bundle_key(bundle)])
            typer.echo(
                "the log's verifier key is the one the bundle names; pass --key to trust only a key you hold",
                err=True,
            )
        report, unrecorded = check_bundle_releases(bundle, given, owner, owner_verifier)
    except (VerificationFailed, CheckpointError) as exc:
        typer.echo(f"audit log does NOT verify: {exc}", err=True)
        raise typer.Exit(1) from None
    for switch in unrecorded:
        typer.echo(f"warning: {switch}", err=True)
    for unjustified in report.unjustified:
        typer.echo(f"unjustified: {unjustified}", err=True)
    if not report.justified:
        typer.echo(report.summary(), err=True)
        raise typer.Exit(1)
    typer.echo(report.summary())


def _bundle_key(path: Path) -> str:
    """The verifier key the bundle's header names (trusted only when --key is not given)."""
    for record in _bundle_records(path):
        if record.get("type") == "bundle" and isinstance(record.get("verifier_key"), str):
            return str(record["verifier_key"])
        break
    raise VerificationFailed(f"{path}: no bundle header with a verifier key; pass --key")
