"""Importing a department's existing records from a file: ``tellonce import``.

The file's columns are ``national_id`` and fields the department owns. Each row is
validated by the catalog exactly as the API validates a request
(``validation.validated_values``) and stored by the bulk writes of ``seeding``:

- ``register`` mode (the department that owns ``national_id``) registers each citizen
  not yet registered, with a ``register`` audit entry;
- ``update`` mode writes the values that differ from the stored ones as new versions of
  registered citizens, with one change event and one ``write`` audit entry per citizen.

Idempotent: a row whose values are all stored already is counted unchanged and writes
nothing, no version, no event and no audit entry. Rows go in batches, one transaction
each, and each batch records the import's progress (``import_progress``) in the same
transaction, so after a crash ``--resume`` continues after the last committed row.

A refused row is reported with its line number and a reason that names the field and
the rule, never the value. Columns the department may not write stop the import before
any row is written (``import_plan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import writer as audit_writer
from service.audit.schemas import AuditEntry
from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.crypto.keyring import Kek, Keyring
from service.errors import ServiceError
from service.events import service as events_service
from service.records import import_files, import_progress, import_worker, repository, seeding, values
from service.records.import_files import SourceRow
from service.records.import_plan import ImportMode, ImportPlan, ImportRefused, column_problems, plan_import
from service.records.service import (
    comparable_national_id,
    now,
    plaintexts,
    registered_national_ids,
    with_live_keys,
)
from service.records.validation import NATIONAL_ID_FIELD, validated_values
from service.records.writes import lock_blind_indexes

# Refused rows of citizens erased after the batch found them registered.
ERASED_WHILE_IMPORTING = "the citizen was erased while the import ran"

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "ImportCounts",
    "ImportMode",
    "ImportPlan",
    "ImportRefused",
    "ImportReport",
    "Rejection",
    "column_problems",
    "earlier_run",
    "plan_import",
    "run_import",
]

DEFAULT_BATCH_SIZE = 1000
# Each row of a register batch holds an advisory lock on PostgreSQL until commit, two
# batches at a time: 4,000 at most, inside the default lock table's 6,400.
MAX_BATCH_SIZE = 2000
# A rate over less time says more about the clock than about the import (a file of a few
# rows is done in milliseconds): the summary and the progress bar leave it out.
MIN_SECONDS_FOR_A_RATE = 1.0

# SQLite: each batch's connection is given a page cache of this many KiB and a checkpoint
# only once the WAL holds this many pages (SQLite's defaults, which the service keeps
# elsewhere: 2,000 KiB and 1,000 pages). Citizen ids are random, so a batch changes about
# one page per citizen in each index led by citizen id: with the default cache those pages
# are spilled to the WAL before the commit and read back, and a checkpoint after every
# batch copies them all into the database file just before the next batches change most
# of them again (bench/README.md, "Fourth round"). The limits are upper bounds, not
# allocations; the import folds the WAL back in (and truncates it) when it ends.
SQLITE_IMPORT_CACHE_KIB = 262_144
SQLITE_IMPORT_CHECKPOINT_PAGES = 50_000
SQLITE_DEFAULT_CACHE_KIB = 2_000
SQLITE_DEFAULT_CHECKPOINT_PAGES = 1_000


@dataclass
class ImportCounts:
    rows_read: int = 0
    registered: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def add(self, other: ImportCounts) -> None:
        for name in import_progress.IMPORT_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in import_progress.IMPORT_COUNTS}


@dataclass(frozen=True)
class Rejection:
    """A row that was not imported: its line and why, never its values."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """The import's summary: the counts cover the whole file, earlier runs included
    when resumed; ``elapsed`` and ``rows_this_run`` only this run."""

    counts: ImportCounts
    resumed_after_line: int = 0
    already_finished: bool = False
    rows_this_run: int = 0
    elapsed: float = 0.0

    @property
    def rows_per_second(self) -> float | None:
        """This run's rows per second; ``None`` for a run shorter than
        ``MIN_SECONDS_FOR_A_RATE``."""
        return self.rows_this_run / self.elapsed if self.elapsed >= MIN_SECONDS_FOR_A_RATE else None


@dataclass
class _Batch:
    """One batch's outcome before it commits."""

    counts: ImportCounts = field(default_factory=ImportCounts)
    rejections: list[Rejection] = field(default_factory=list)
    changed_citizens: int = 0

    def reject(self, line: int, reason: str) -> None:
        self.counts.rejected += 1
        self.rejections.append(Rejection(line, reason))


@dataclass(frozen=True)
class _Accepted:
    line: int
    clean: dict[str, values.JsonValue]
    national_id: str
    index: bytes


@dataclass
class _Prepared:
    """One batch as ``_Importer.prepare`` leaves it for its transaction: its last line, the
    outcome so far, the accepted rows, and in register mode possibly its new citizens made
    ahead. Sent from the worker process without key material (``portable``)."""

    last_line: int
    batch: _Batch
    accepted: list[_Accepted]
    started: datetime
    ahead: seeding.RegistrationsAhead | None = None

    def portable(self) -> _Prepared:
        ahead = self.ahead.without_material() if self.ahead is not None else None
        return _Prepared(self.last_line, self.batch, self.accepted, self.started, ahead)


class _Importer:
    """One run over one file: the national ids seen so far (a later row repeating one is
    refused), and the facts every audit entry of the run names."""

    def __init__(self, engine: AsyncEngine, keyring: Keyring, plan: ImportPlan, actor: str) -> None:
        self.engine = engine
        self.keyring = keyring
        self.plan = plan
        self.catalog = plan.catalog
        role = "registrar" if plan.mode == "register" else "writer"
        # One request id for the whole import: an auditor finds every entry it wrote.
        self.facts = RequestFacts(
            principal=Principal.with_roles(actor, plan.department, role), request_id=f"import-{uuid.uuid4()}"
        )
        # The first 8 bytes of each national id's blind index: small enough for millions
        # of rows; two different ids sharing them (odds about n^2 / 2^65) would make the
        # later one be refused as a repeat, never stored twice.
        self.seen: set[int] = set()
        # Register mode: the department's active KEK as the last batch's transaction saw
        # it, for the next batches' data keys made ahead; on SQLite also the id of the
        # next data key after the last batch written.
        self.kek: Kek | None = None
        self.next_key_id: int | None = None

    def rows(self, after_line: int) -> Iterator[SourceRow]:
        return import_files.rows(self.plan.path, self.plan.file_format, self.catalog, after_line=after_line)

    def remember_committed(self, up_to_line: int) -> None:
        """On resume, the national ids of the rows already done, so repeats stay refused."""
        if up_to_line <= 0:
            return
        for row in self.rows(0):
            if row.line > up_to_line:
                break
            national_id = self._national_id(row.values)
            if national_id is not None:
                self.seen.add(self._seen_key(self._index(national_id)))

    def _national_id(self, submitted: Mapping[str, Any]) -> str | None:
        """The row's national id in canonical form, or None if it has no valid one."""
        if NATIONAL_ID_FIELD not in submitted:
            return None
        try:
            clean = validated_values(
                self.catalog, {NATIONAL_ID_FIELD: submitted[NATIONAL_ID_FIELD]}, ("row",)
            )
        except ServiceError:
            return None
        return values.normalise_for_index(clean[NATIONAL_ID_FIELD])

    def _index(self, national_id: str) -> bytes:
        return self.keyring.blind_index(NATIONAL_ID_FIELD, national_id)

    @staticmethod
    def _seen_key(index: bytes) -> int:
        return int.from_bytes(index[:8], "big")

    def check(self, row: SourceRow, batch: _Batch) -> _Accepted | None:
        """The row's validated values, or None with the row refused."""
        if row.unreadable is not None:
            batch.reject(row.line, row.unreadable)
            return None
        try:
            clean = validated_values(self.catalog, row.values, ("row",))
        except ServiceError as exc:
            batch.reject(row.line, _reasons(exc))
            # A valid national id on a refused row still counts as seen: the file names
            # that citizen twice, and neither row wins silently.
            national_id = self._national_id(row.values)
            if national_id is not None:
                self.seen.add(self._seen_key(self._index(national_id)))
            return None
        if NATIONAL_ID_FIELD not in clean:
            batch.reject(row.line, f"{NATIONAL_ID_FIELD} is required")
            return None
        national_id = values.normalise_for_index(clean[NATIONAL_ID_FIELD])
        index = self._index(national_id)
        key = self._seen_key(index)
        if key in self.seen:
            batch.reject(row.line, f"{NATIONAL_ID_FIELD} repeats one on an earlier row of the file")
            return None
        self.seen.add(key)
        return _Accepted(row.line, clean, national_id, index)

    def prepare(self, rows: Sequence[SourceRow], key_ids: Sequence[int] | None) -> _Prepared:
        """Check one batch's rows before its transaction. With ``key_ids`` (register mode,
        once a batch has seen the department's KEK: guessed on SQLite, drawn from the
        sequence on PostgreSQL), also make the new citizens' data keys with those ids,
        encrypt their values and build their audit entries, as if none were registered;
        ``write_batch`` stores them only if that and the keys still hold, and otherwise
        does the work afresh."""
        prepared = _Prepared(rows[-1].line, _Batch(), [], now())
        prepared.batch.counts.rows_read = len(rows)
        prepared.accepted = [a for row in rows if (a := self.check(row, prepared.batch)) is not None]
        if key_ids is not None and self.kek is not None and self.plan.mode == "register":
            prepared.ahead = seeding.registrations_ahead(
                self.keyring,
                self.catalog,
                self.facts,
                self.kek,
                [a.clean for a in prepared.accepted],
                prepared.started,
                key_ids=key_ids,
            )
        return prepared

    async def write_batch(
        self, conn: AsyncConnection, run_id: int, prepared: _Prepared, after: Awaitable[None] | None
    ) -> _Batch:
        """Classify and store one prepared batch in the transaction on ``conn``; record its
        progress only once ``after`` (the batch before, still committing) has committed,
        so batches commit in file order. In register mode, note the department's active
        KEK and (SQLite) the next data key's id for the batches prepared after it."""
        started = prepared.started
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # A write first: the batch holds SQLite's one write lock before it reads.
            await import_progress.claim_import_run(conn, run_id, started)
        batch, accepted = prepared.batch, prepared.accepted
        if self.plan.mode == "register":
            await lock_blind_indexes(conn, [a.index for a in accepted])
        found = await registered_national_ids(
            conn, self.keyring, self.catalog, [a.national_id for a in accepted], [a.index for a in accepted]
        )
        ahead = prepared.ahead
        stored_ahead = (
            ahead is not None
            and not found
            and await seeding.store_registrations_ahead(conn, self.keyring, ahead)
        )
        if ahead is not None and stored_ahead:
            audit_rows = ahead.audit_rows
            batch.counts.registered = len(ahead.citizen_ids)
            if sqlite:
                self.next_key_id = ahead.keys.next_id
        else:
            entries = await self._store(conn, batch, accepted, found, started)
            audit_rows = [audit_writer.entry_values(entry) for entry in entries]
            if self.plan.mode == "register" and batch.counts.registered:
                # The KEK exists now (this batch's keys were wrapped under it).
                self.kek = await self.keyring.active_kek(conn, self.plan.department)
                if sqlite:
                    self.next_key_id = await self.keyring.next_data_key_id(conn)
        if after is not None:
            await after
        await import_progress.advance_import_run(
            conn, run_id, prepared.last_line, batch.counts.as_dict(), finished=None
        )
        # Last: on PostgreSQL the append holds the audit's order lock until commit.
        await audit_writer.append_rows_in_transaction(conn, audit_rows)
        return batch

    async def _store(
        self,
        conn: AsyncConnection,
        batch: _Batch,
        accepted: Sequence[_Accepted],
        found: Mapping[str, str],
        started: datetime,
    ) -> list[AuditEntry]:
        """Store the accepted rows by what is registered (``found``): new citizens in
        register mode, changed values in update mode; the audit entries to append."""
        stored, erased = await self._stored_values(conn, list(found.values()))
        new: list[dict[str, values.JsonValue]] = []
        revisions: dict[str, dict[str, values.JsonValue]] = {}
        line_of: dict[str, int] = {}
        for row in accepted:
            citizen_id = found.get(comparable_national_id(row.national_id))
            if citizen_id is None:
                if self.plan.mode == "register":
                    new.append(row.clean)
                else:
                    batch.reject(row.line, f"no citizen is registered with this {NATIONAL_ID_FIELD}")
                continue
            if citizen_id in erased:
                batch.reject(row.line, ERASED_WHILE_IMPORTING)
                continue
            current = stored.get(citizen_id, {})
            changed = {
                name: value
                for name, value in row.clean.items()
                if name != NATIONAL_ID_FIELD and (name not in current or current[name] != value)
            }
            if not changed:
                batch.counts.unchanged += 1
            elif self.plan.mode == "register":
                batch.reject(
                    row.line,
                    f"already registered, with other values of {', '.join(sorted(changed))}; "
                    "write them with --mode update",
                )
            else:
                revisions[citizen_id] = changed
                line_of[citizen_id] = row.line
        entries: list[AuditEntry] = []
        if new:
            _ids, registered = await seeding.store_registrations(
                conn, self.keyring, self.catalog, self.facts, new, started
            )
            entries.extend(registered)
            batch.counts.registered = len(new)
        if revisions:
            written = await seeding.store_revisions(
                conn, self.keyring, self.catalog, self.facts, revisions, started
            )
            entries.extend(written)
            batch.counts.updated = batch.changed_citizens = len(written)
            kept = {entry.citizen_id for entry in written}
            for citizen_id in revisions.keys() - kept:
                batch.reject(line_of[citizen_id], ERASED_WHILE_IMPORTING)
        return entries

    async def _stored_values(
        self, conn: AsyncConnection, citizen_ids: list[str]
    ) -> tuple[dict[str, dict[str, values.JsonValue]], set[str]]:
        """The current values of the file's fields of registered citizens, decrypted to
        compare with the rows; and the ids of those erased since the batch found them (a
        value's data key destroyed: on PostgreSQL an erasure can commit meanwhile)."""
        if not citizen_ids:
            return {}, set()
        rows = await repository.current_values(conn, citizen_ids, self.plan.fields)
        live, keys = await with_live_keys(conn, self.keyring, rows)
        erased = {row.citizen_id for row in rows} - {row.citizen_id for row in live}
        current: dict[str, dict[str, values.JsonValue]] = {}
        for (citizen_id, name, _version), value in plaintexts(self.catalog, live, keys).items():
            current.setdefault(citizen_id, {})[name] = value
        return current, erased


def _reasons(error: ServiceError) -> str:
    """The validation's messages (each names the field and the rule, never the value)."""
    messages: list[str] = []
    for problem in error.errors or []:
        name, message = str(problem.get("loc", [""])[-1]), str(problem.get("msg", ""))
        # Some messages name their field ("date_of_birth must be ..."), some do not.
        messages.append(message if message.startswith(f"{name} ") else f"{name}: {message}")
    return "; ".join(messages) or error.detail


async def earlier_run(engine: AsyncEngine, plan: ImportPlan) -> import_progress.ImportRunRow | None:
    """What an earlier run of this file committed, if one started."""
    async with engine.connect() as conn:
        return await import_progress.import_run(conn, plan.department, plan.mode, plan.scanned.sha256)


async def run_import(
    engine: AsyncEngine,
    keyring: Keyring,
    plan: ImportPlan,
    *,
    actor: str,
    resume: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_rejections: Callable[[Sequence[Rejection]], None] = lambda _rejections: None,
    on_progress: Callable[[int], None] = lambda _rows: None,
) -> ImportReport:
    """Import the planned file in batches of ``batch_size`` rows. With ``resume``, start
    after the last row an earlier run of the same file committed.

    ``on_rejections`` gets each batch's refused rows before the batch commits;
    ``on_progress`` the number of rows done (this run and earlier) after each commit."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"a batch is 1 to {MAX_BATCH_SIZE} rows")
    importer = _Importer(engine, keyring, plan, actor)
    report = ImportReport(ImportCounts())
    department, mode, digest = plan.department, plan.mode, plan.scanned.sha256
    async with engine.begin() as conn:
        earlier = await import_progress.import_run(conn, department, mode, digest)
        if resume and earlier is not None:
            run_id = earlier.id
            report.resumed_after_line = earlier.last_line
            report.counts = ImportCounts(
                earlier.rows_read, earlier.registered, earlier.updated, earlier.unchanged, earlier.rejected
            )
            report.already_finished = earlier.finished_at is not None
        else:
            run_id = await import_progress.start_import_run(conn, department, mode, digest, now())
    if report.already_finished:
        return report
    importer.remember_committed(report.resumed_after_line)
    on_progress(report.counts.rows_read)
    started = time.perf_counter()
    batches = _batches(importer.rows(report.resumed_after_line), batch_size)
    with _fewer_collections():
        await _run_batches(importer, run_id, batches, report, on_rejections, on_progress, batch_size)
    report.elapsed = time.perf_counter() - started
    return report


async def _run_batches(
    importer: _Importer,
    run_id: int,
    batches: Iterator[list[SourceRow]],
    report: ImportReport,
    on_rejections: Callable[[Sequence[Rejection]], None],
    on_progress: Callable[[int], None],
    batch_size: int,
) -> None:
    """Every batch, then the run marked finished."""
    engine, plan = importer.engine, importer.plan
    try:
        if plan.mode == "register":
            last_line = await _import_with_worker(
                importer, run_id, batches, report, on_rejections, on_progress, batch_size
            )
        else:
            last_line = await _import_overlapped(
                importer, run_id, batches, report, on_rejections, on_progress
            )
        async with engine.begin() as conn:
            await import_progress.advance_import_run(
                conn, run_id, last_line or report.resumed_after_line, {}, finished=now()
            )
    finally:
        if engine.dialect.name == "sqlite":
            await _sqlite_after_import(engine)


# While the batches run, the garbage collector's youngest generation is collected after
# this many new objects rather than 700, and the oldest is not walked over what the process
# held before the import (``gc.freeze``). Each batch makes and drops tens of thousands of
# objects (rows, ciphertexts, audit entries), so with the defaults the collector ran many
# times a batch and walked the whole heap of the engine and its modules again and again
# (py-spy: 5% of a SQLite import's samples were in the collector). Measured with
# bench/import.py's code path, before and after in turns: the importing process's CPU per
# citizen on PostgreSQL fell from 50-52 to 39-40 us (bench/README.md). What a batch drops
# is freed by reference counting as before; cycles are still collected, less often.
IMPORT_GC_THRESHOLDS = (20_000, 50, 1_000)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The import's collector settings (``IMPORT_GC_THRESHOLDS``), then the process's own
    again, and what was frozen back in the collector's reach. The import's worker process,
    forked inside, inherits them."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*IMPORT_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _sqlite_for_import(conn: AsyncConnection) -> None:
    """A batch's SQLite connection with the import's page cache and checkpoint interval."""
    await conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_IMPORT_CACHE_KIB}")
    await conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={SQLITE_IMPORT_CHECKPOINT_PAGES}")


async def _sqlite_after_import(engine: AsyncEngine) -> None:
    """The batches' connection back to SQLite's defaults, and the WAL folded into the
    database and truncated (a no-op answer, not an error, while another process reads an
    older snapshot: its own next checkpoint then finishes the work). After a failure too,
    where an error here must not hide the one that stopped the import."""
    with contextlib.suppress(SQLAlchemyError):
        async with engine.connect() as conn:
            await conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_DEFAULT_CACHE_KIB}")
            await conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={SQLITE_DEFAULT_CHECKPOINT_PAGES}")
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _batches(rows: Iterator[SourceRow], size: int) -> Iterator[list[SourceRow]]:
    pending: list[SourceRow] = []
    for row in rows:
        pending.append(row)
        if len(pending) >= size:
            yield pending
            pending = []
    if pending:
        yield pending


async def _import_overlapped(
    importer: _Importer,
    run_id: int,
    batches: Iterator[list[SourceRow]],
    report: ImportReport,
    on_rejections: Callable[[Sequence[Rejection]], None],
    on_progress: Callable[[int], None],
) -> int:
    """Each batch in its own transaction; the last line done.

    PostgreSQL: the next batch is checked, encrypted and sent while the one before it is
    still being written and committed (two connections, commits in file order), so this
    process's work and the database's overlap. Not the first batch, which may make the
    department's KEK. SQLite (update mode): one batch at a time. The last line done (0:
    none)."""
    overlap = importer.engine.dialect.name == "postgresql"
    last_line = 0
    previous: asyncio.Task[None] | None = None
    current: asyncio.Task[None] | None = None
    try:
        for number, rows in enumerate(batches):
            prepared = importer.prepare(rows, None)
            current = asyncio.create_task(
                _commit_batch(importer, run_id, prepared, report, on_rejections, on_progress, after=previous)
            )
            last_line = rows[-1].line
            if previous is not None:
                await previous
            previous = current
            if not overlap or number == 0:
                await current
        if previous is not None:
            await previous
    finally:
        # After a failure: the batch in flight rolls back (it waits on the failed one).
        if current is not None and not current.done():
            await asyncio.gather(current, return_exceptions=True)
    return last_line


async def _import_with_worker(
    importer: _Importer,
    run_id: int,
    batches: Iterator[list[SourceRow]],
    report: ImportReport,
    on_rejections: Callable[[Sequence[Rejection]], None],
    on_progress: Callable[[int], None],
    batch_size: int,
) -> int:
    """Register mode: each batch in its own transaction, committed in file order, while a
    worker process (``import_worker``) reads, checks and encrypts the next one. The last
    line done (0: none).

    Batches are prepared here and stored the ordinary way until one has registered
    someone: it may make the department's KEK, and tells the keys made ahead which KEK
    to wrap under (the worker, forked then, inherits it and the national ids seen so
    far). For each later batch the worker gets the data-key ids to use: on SQLite the
    next ones after the batch before (a guess, checked under the write lock), on
    PostgreSQL ids drawn from the sequence. On PostgreSQL a batch is also written while
    the one before it commits (two connections, as in ``_import_overlapped``). The
    worker's failure fails the import (``import_worker.WorkerFailed``); batches committed
    before it stay, as after any failure."""
    last_line = 0
    while importer.kek is None:
        rows = next(batches, None)
        if rows is None:
            return last_line
        prepared = importer.prepare(rows, None)
        await _commit_batch(importer, run_id, prepared, report, on_rejections, on_progress, after=None)
        last_line = prepared.last_line
        if len(rows) < batch_size:
            return last_line
    engine = importer.engine
    sqlite = engine.dialect.name == "sqlite"

    async def key_ids(pending: _Prepared | None) -> list[int] | None:
        """The data-key ids for the batch after ``pending`` (the one not yet written)."""
        if importer.kek is None:
            return None
        if not sqlite:
            async with engine.connect() as conn:
                return await importer.keyring.draw_data_key_ids(conn, batch_size)
        if pending is None:
            start = importer.next_key_id
        elif pending.ahead is not None:
            start = pending.ahead.keys.next_id
        else:
            start = importer.next_key_id  # a batch without keys made ahead registers no one
        return None if start is None else list(range(start, start + batch_size))

    def prepare(ids: list[int] | None) -> _Prepared | None:
        # Runs in the worker, which reads the file after the first batch on its own.
        rows = next(following, None)
        return None if rows is None else importer.prepare(rows, ids).portable()

    following = _batches(importer.rows(last_line), batch_size)
    worker = import_worker.BatchWorker(prepare)
    previous: asyncio.Task[None] | None = None
    current: asyncio.Task[None] | None = None
    try:
        worker.ask(await key_ids(None))
        while (prepared := await worker.answer()) is not None:
            # The worker prepares the batch after this one while this one is written.
            worker.ask(await key_ids(prepared))
            current = asyncio.create_task(
                _commit_batch(importer, run_id, prepared, report, on_rejections, on_progress, after=previous)
            )
            last_line = prepared.last_line
            if previous is not None:
                await previous
            previous = current
            if sqlite:
                await current
        if previous is not None:
            await previous
    finally:
        # After a failure: the batch in flight rolls back (it waits on the failed one).
        if current is not None and not current.done():
            await asyncio.gather(current, return_exceptions=True)
        await asyncio.to_thread(worker.close)
    return last_line


async def _commit_batch(
    importer: _Importer,
    run_id: int,
    prepared: _Prepared,
    report: ImportReport,
    on_rejections: Callable[[Sequence[Rejection]], None],
    on_progress: Callable[[int], None],
    *,
    after: Awaitable[None] | None,
) -> None:
    async with importer.engine.begin() as conn:
        if importer.engine.dialect.name == "sqlite":
            await _sqlite_for_import(conn)
        batch = await importer.write_batch(conn, run_id, prepared, after)
        if batch.rejections:
            on_rejections(batch.rejections)
    if batch.changed_citizens:
        # Committed: wake feeds and dispatchers waiting in this process.
        events_service.notify()
    report.counts.add(batch.counts)
    report.rows_this_run += prepared.batch.counts.rows_read
    on_progress(report.counts.rows_read)
