"""Audit rules: the whole-log verification, and the lifecycle that runs the writer, the
sequencer and the witnessing. Appending lives in ``writer.py``; proofs in ``proofs.py``;
the auditors' queries in ``search.py``; the entries themselves in ``entries.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service import tracing
from service.audit import merkle, witnessing
from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.checkpoint_keys import KeyChange, key_change
from service.audit.config import AuditSettings, load_signer
from service.audit.key_events import KeyEventsInTransaction
from service.audit.policy_changes import connect_policy_changes
from service.audit.releases import ReleaseChecker, ReleaseReport
from service.audit.replay import AuditedRequests
from service.audit.repository import Connect
from service.audit.sequencer import Sequencer, SequencerConfig
from service.audit.verify import (
    Expectations,
    LogVerifier,
    StoredCheckpoint,
    TrustedKeys,
    VerificationFailed,
)
from service.audit.verify_pages import Parallel, verify_in_pages
from service.audit.writer import AuditWriter
from service.config import Settings
from service.db import engine_for
from service.policy.signing import OwnerVerifier


def make_sequencer(
    settings: Settings,
    engine: AsyncEngine,
    audit: AuditSettings | None = None,
    signer: NoteSigner | None = None,
) -> Sequencer:
    audit = audit or AuditSettings()
    signer = signer or load_signer(settings, audit.origin)
    config = SequencerConfig(
        origin=audit.origin,
        checkpoint_every=audit.checkpoint_every,
        checkpoint_interval=audit.checkpoint_interval_ms / 1000,
        batch_size=audit.sequencer_batch,
        poll_interval=audit.sequencer_poll_ms / 1000,
        pool_recycle_seconds=settings.db_pool_recycle_seconds,
    )
    return Sequencer(engine, signer, config)


@contextlib.asynccontextmanager
async def audit_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """The writer always; the sequencer too unless ``settings.run_workers`` is false."""
    settings: Settings = app.state.settings
    audit = AuditSettings()
    engine = app.state.database.engine
    signer: NoteSigner = await asyncio.to_thread(load_signer, settings, audit.origin)
    app.state.audit_signer = signer
    app.state.audit_settings = audit
    # The writer has an engine of its own: if it shared the request pool, requests that
    # hold connections while awaiting their audit entry could starve it of one.
    writer_engine = engine_for(settings, **({} if settings.is_sqlite else {"pool_size": 2}))
    tracing.instrument_engine(writer_engine)
    metrics = app.state.metrics
    writer = AuditWriter(
        writer_engine,
        max_batch=audit.writer_max_batch,
        on_batch=metrics.audit_batch_entries.observe,
        on_failure=lambda _entries: metrics.audit_batch_failures.inc(),
        failing_writes=getattr(app.state, "failing_writes", None),
    )
    await writer.start()
    app.state.audit_writer = writer
    app.state.keyring.on_key_event = KeyEventsInTransaction()
    app.state.recorded_requests = AuditedRequests(engine)
    connect_policy_changes()
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    sequencer_engine: AsyncEngine | None = None
    signed: asyncio.Event | None = None
    if settings.run_workers:
        sequencer_engine = _sequencer_engine(settings)
        sequencer = make_sequencer(settings, sequencer_engine, audit, signer)
        signed = sequencer.checkpoint_signed
        task = asyncio.create_task(
            app.state.schema_gate.run_when_ready(stop, sequencer.run), name="audit-sequencer"
        )
    try:
        async with witnessing.witnessing_lifecycle(
            app, audit, settings.run_workers, sequencer_engine, signed
        ):
            yield
    finally:
        stop.set()
        if task is not None:
            await task
        await writer.stop()
        await writer_engine.dispose()
        if sequencer_engine is not None:
            await sequencer_engine.dispose()


def _sequencer_engine(settings: Settings) -> AsyncEngine:
    """The sequencer's own small pool, shared with the witness submitter. The sequencer
    only reads its rounds here: on a SQLite file it writes through a connection of its own
    (``sequencer._sqlite_writes``, with its own ``SQLITE_LOCK_WAIT_MS``), so on SQLite this
    engine's writer is the witness submitter, storing cosignatures. Its connections wait
    only briefly for the write lock: a submitter round that finds the database busy fails,
    is logged and runs again next poll, rather than holding up shutdown behind a long
    transaction."""
    engine = engine_for(settings, **({} if settings.is_sqlite else {"pool_size": 2}))
    if settings.is_sqlite:

        def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=250")
            cursor.close()

        event.listen(engine.sync_engine, "connect", _short_busy_timeout)
    return engine


VERIFY_PAGE = 5000


async def verify_stored_log(
    connect: Connect,
    verifier: TrustedKeys,
    progress: Callable[[int, int], None] | None = None,
    expectations: Expectations | None = None,
    on_entry: Callable[[int, str, dict[str, Any]], None] | None = None,
    parallel: Parallel | None = None,
) -> tuple[int, int]:
    """The whole-log check of ``tellonce audit verify`` (see ``stored_log_verification``).
    Returns (tree size, checkpoints checked)."""
    log = await stored_log_verification(connect, verifier, progress, expectations, on_entry, parallel)
    return log.finish(), log.checked_checkpoints


async def stored_log_verification(
    connect: Connect,
    verifier: TrustedKeys,
    progress: Callable[[int, int], None] | None = None,
    expectations: Expectations | None = None,
    on_entry: Callable[[int, str, dict[str, Any]], None] | None = None,
    parallel: Parallel | None = None,
) -> LogVerifier:
    """The whole-log check of ``tellonce audit verify``, on a log that keeps growing.

    The same ``LogVerifier`` recomputes every leaf, derives every filter column again
    and checks every checkpoint, but only up to the tree size read at the start: the
    server's sequencer keeps appending while this runs (this very request's audit entry
    among them), and leaves past that size are the next verification's. The rows come
    from one streamed query (a server-side cursor on PostgreSQL), ``VERIFY_PAGE`` at a
    time; each entry is parsed once, and ``on_entry`` gets that parse. With ``parallel``
    (and no ``on_entry``), a log of ``parallel.from_size`` leaves or more is checked by
    worker processes instead (``verify_pages``), finding the same first problem. Returns
    the verifier with every stored leaf fed; its ``finish`` applies the expectations.
    """
    async with connect() as conn:
        # Checkpoints first: each one's size is then at most the size read after it.
        checkpoints = [
            StoredCheckpoint(size, root, note, f"checkpoint {cid} (size {size})")
            for cid, size, root, note in await audit_repository.all_checkpoints(conn)
        ]
        size = await audit_repository.tree_size(conn)
        # Read after the size, so at least the size's leaves when the log is whole: the
        # pages below are as many as the rows stored, not as the size claims (a row
        # claiming 2**63-1 leaves must not make 2**50 pages).
        reach = min(size, await audit_repository.stored_leaf_count(conn))
        key_operations = await audit_repository.key_operations(conn, size)
    log = LogVerifier(verifier, checkpoints, expectations or Expectations())
    for leaf_index, canonical, recorded in key_operations:
        change = _recorded_change(leaf_index, canonical, recorded)
        if change is not None:
            log.key_changes.append(change)

    async def unsequenced_entry() -> int | None:
        async with connect() as conn:
            return await audit_repository.unsequenced_entry(conn)

    if parallel is not None and on_entry is None and reach >= parallel.from_size:
        # That query reads every entry (a third of a second at 200,000): it runs while the
        # workers check pages, and its answer is taken after theirs, in the same order.
        unsequenced_task = asyncio.create_task(unsequenced_entry())
        try:
            await verify_in_pages(log, parallel, reach, progress)
        except BaseException:
            unsequenced_task.cancel()
            with contextlib.suppress(BaseException):
                await unsequenced_task
            raise
        unsequenced = await unsequenced_task
    else:
        await _verify_in_process(log, connect, size, progress, on_entry)
        unsequenced = await unsequenced_entry()
    if unsequenced is not None:
        raise VerificationFailed(f"entry {unsequenced} was sequenced but its leaf has been removed")
    if log.compact.size != size:
        raise VerificationFailed(f"the log records {size} leaves but only {log.compact.size} are stored")
    return log


def _recorded_change(leaf_index: int, canonical: str, recorded: bytes | None) -> KeyChange | None:
    """The checkpoint-key change a stored key operation records, if it records one.

    Read apart from the walk over every leaf, which checks each recorded leaf hash against
    the tree: this one must be the entry's, so the change read is the change verified."""
    if recorded != merkle.leaf_hash(canonical.encode()):
        raise VerificationFailed(f"the key operation at leaf {leaf_index} no longer matches its leaf hash")
    entry = json.loads(canonical)
    return key_change(leaf_index, entry) if isinstance(entry, dict) else None


async def recorded_key_changes(connect: Connect) -> list[KeyChange]:
    """The checkpoint-key changes the stored log records, read as the whole-log check reads
    them, to say why a verification failed (``checkpoint_keys.replaced_keys_missing``), never
    to pass one: a key operation that the check would refuse is left out, for the check
    itself to name."""
    async with connect() as conn:
        size = await audit_repository.tree_size(conn)
        key_operations = await audit_repository.key_operations(conn, size)
    changes = []
    for leaf_index, canonical, recorded in key_operations:
        try:
            change = _recorded_change(leaf_index, canonical, recorded)
        except (VerificationFailed, ValueError):
            continue
        if change is not None:
            changes.append(change)
    return changes


async def _verify_in_process(
    log: LogVerifier,
    connect: Connect,
    size: int,
    progress: Callable[[int, int], None] | None,
    on_entry: Callable[[int, str, dict[str, Any]], None] | None,
) -> None:
    async with (
        connect() as conn,
        contextlib.aclosing(audit_repository.stream_for_verification(conn, size, VERIFY_PAGE)) as pages,
    ):
        async for rows in pages:
            records = log.add_rows(rows, keep=on_entry is not None)
            if on_entry is not None:
                for row, record in zip(rows, records, strict=True):
                    on_entry(row[0], f"entry {row[1]}", record)
            if progress is not None:
                progress(log.compact.size, size)


async def check_stored_releases(
    connect: Connect, verifier: NoteVerifier, owner: str, owner_key: OwnerVerifier
) -> tuple[int, ReleaseReport]:
    """``tellonce audit check-releases`` on the live log (the demo's report and the
    console's owner view): verify it (up to the size read at the start) and re-decide
    every release of ``owner``'s fields on the way.
    Returns (tree size, report); raises ``VerificationFailed`` if the log does not verify."""
    checker = ReleaseChecker(owner, owner_key)
    size, _checkpoints = await verify_stored_log(connect, verifier, on_entry=checker.add)
    return size, checker.finish()
