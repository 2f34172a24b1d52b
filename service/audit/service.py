"""Audit rules: appending (in a write's transaction, or through the writer), proofs,
checkpoints, and the lifecycle that runs the writer and the sequencer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import merkle
from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.config import AuditSettings, load_signer
from service.audit.errors import AuditQueryInvalid, LeafNotFound, NoCheckpoint
from service.audit.repository import Executor
from service.audit.schemas import Action, AuditEntry, Decision, canonical_json
from service.audit.sequencer import Sequencer, SequencerConfig
from service.audit.verify import Expectations, LogVerifier, StoredCheckpoint, VerificationFailed
from service.audit.writer import AuditWriter, entry_row, insert_entries
from service.auth.dependencies import Principal
from service.config import Settings
from service.db import create_engine, utcnow
from service.observability import current_request_id


async def append_in_transaction(conn: AsyncConnection, entry: AuditEntry) -> int:
    """Append ``entry`` in the caller's transaction (for writes: same commit as the change).

    On PostgreSQL this takes the audit append lock until the caller's transaction ends,
    so call it as the last statement before commit.
    """
    return (await insert_entries(conn, [entry_row(entry)]))[0]


async def append_many_in_transaction(conn: AsyncConnection, entries: Sequence[AuditEntry]) -> list[int]:
    """``append_in_transaction`` for many entries at once (bulk registration), in order."""
    return await insert_entries(conn, [entry_row(entry) for entry in entries])


def request_entry(
    request: Request | None,
    principal: Principal,
    action: Action,
    *,
    decision: Decision = "permit",
    status: int = 200,
    citizen_id: str | None = None,
    owners: Sequence[str] = (),
    fields_requested: Sequence[str] = (),
    fields_released: Sequence[str] = (),
    purpose: str | None = None,
    case_ref: str | None = None,
) -> AuditEntry:
    """An entry for a request by ``principal``: time, request id and source filled in."""
    source = request.client.host if request is not None and request.client else None
    return AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=principal.client_id,
        department=principal.department,
        on_behalf_of=principal.on_behalf_of,
        action=action,
        citizen_id=citizen_id,
        owners=list(owners),
        fields_requested=list(fields_requested),
        fields_released=list(fields_released),
        decision=decision,
        purpose=purpose,
        case_ref=case_ref,
        status=status,
        source=source,
    )


async def record_event(
    target: FastAPI | AuditWriter,
    action: Action,
    *,
    client_id: str,
    department: str,
    owners: Sequence[str] = (),
    decision: Decision = "permit",
    reason: str = "",
) -> int:
    """Audit a non-request event (a key operation, a policy change) through the writer.

    ``reason`` is free text kept in the entry's reasons; it must hold no personal data.
    """
    writer: AuditWriter = target.state.audit_writer if isinstance(target, FastAPI) else target
    entry = AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=client_id,
        department=department,
        action=action,
        owners=list(owners),
        decision=decision,
        reasons=[{"field": "", "effect": decision, "reason": reason}] if reason else [],  # type: ignore[list-item]
        status=200,
    )
    return await writer.append(entry)


async def _read_for(db: Executor, build: Any) -> Any:
    """Run a proof or root computation with exactly the nodes it needs, fetched in one go."""
    keys = merkle.nodes_needed(build)
    nodes = await audit_repository.read_nodes(db, keys)
    return build(lambda level, index: nodes[(level, index)])


async def inclusion(db: Executor, leaf_index: int, tree_size: int | None) -> dict[str, Any]:
    size = await audit_repository.tree_size(db)
    if tree_size is None:
        checkpoint = await audit_repository.latest_checkpoint(db)
        tree_size = checkpoint.tree_size if checkpoint else size
    if tree_size < 1 or tree_size > size:
        raise AuditQueryInvalid(f"tree_size must be between 1 and the current size {size}.")
    if leaf_index < 0 or leaf_index >= tree_size:
        raise LeafNotFound(f"No leaf {leaf_index} in a tree of size {tree_size}.")
    entry = await audit_repository.entry_at_leaf(db, leaf_index)
    if entry is None:
        raise LeafNotFound(f"No leaf {leaf_index}.")
    leaf = await audit_repository.read_nodes(db, [(0, leaf_index)])
    hashes = await _read_for(db, lambda read: merkle.inclusion_proof(read, leaf_index, tree_size))
    return {
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "leaf_hash": _b64(leaf[(0, leaf_index)]),
        "hashes": [_b64(h) for h in hashes],
        "entry": entry,
    }


async def consistency(db: Executor, first: int, second: int) -> dict[str, Any]:
    size = await audit_repository.tree_size(db)
    if first < 0 or first > second or second > size:
        raise AuditQueryInvalid(f"Need 0 <= first <= second <= the current size {size}.")
    hashes = await _read_for(db, lambda read: merkle.consistency_proof(read, first, second))
    return {"first": first, "second": second, "hashes": [_b64(h) for h in hashes]}


async def checkpoint_note(db: Executor) -> str:
    checkpoint = await audit_repository.latest_checkpoint(db)
    if checkpoint is None:
        raise NoCheckpoint("The log has no signed checkpoint yet.")
    return checkpoint.note


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


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
    writer_engine = create_engine(settings.database_url, **({} if settings.is_sqlite else {"pool_size": 2}))
    writer = AuditWriter(writer_engine, max_batch=audit.writer_max_batch)
    await writer.start()
    app.state.audit_writer = writer
    # Imported here: the hooks reach into policy and crypto, which import this module.
    from service.audit import hooks

    key_events = hooks.KeyEventsToWriter(writer)
    app.state.keyring.on_key_event = key_events
    app.state.recorded_requests = hooks.AuditedRequests(engine)
    hooks.connect_policy_changes()
    from service.audit import witnessing

    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    sequencer_engine: AsyncEngine | None = None
    signed: asyncio.Event | None = None
    if settings.run_workers:
        sequencer_engine = _sequencer_engine(settings)
        sequencer = make_sequencer(settings, sequencer_engine, audit, signer)
        signed = sequencer.checkpoint_signed
        task = asyncio.create_task(sequencer.run(stop), name="audit-sequencer")
    try:
        async with witnessing.witnessing_lifecycle(
            app, audit, settings.run_workers, sequencer_engine, signed
        ):
            yield
    finally:
        stop.set()
        if task is not None:
            await task
        await key_events.drain()
        await writer.stop()
        await writer_engine.dispose()
        if sequencer_engine is not None:
            await sequencer_engine.dispose()


def _sequencer_engine(settings: Settings) -> AsyncEngine:
    """The sequencer's own small pool. On SQLite it waits only briefly for the write lock:
    a round that finds the database busy gives up and runs again next poll, rather than
    holding up shutdown behind a long transaction."""
    engine = create_engine(settings.database_url, **({} if settings.is_sqlite else {"pool_size": 2}))
    if settings.is_sqlite:

        def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=250")
            cursor.close()

        event.listen(engine.sync_engine, "connect", _short_busy_timeout)
    return engine


__all__ = ["append_in_transaction", "audit_lifecycle", "canonical_json", "record_event", "request_entry"]


VERIFY_PAGE = 5000


async def verify_stored_log(
    engine: AsyncEngine,
    verifier: NoteVerifier,
    progress: Callable[[int, int], None] | None = None,
    expectations: Expectations | None = None,
) -> tuple[int, int]:
    """The whole-log check of ``tellonce audit verify``, on a log that keeps growing.

    The same ``LogVerifier`` recomputes every leaf, derives every filter column again
    and checks every checkpoint, but only up to the tree size read at the start: the
    server's sequencer keeps appending while this runs (this very request's audit entry
    among them), and leaves past that size are the next verification's. Returns (tree
    size, checkpoints checked).
    """
    async with engine.connect() as conn:
        # Checkpoints first: each one's size is then at most the size read after it.
        checkpoints = [
            StoredCheckpoint(size, root, note, f"checkpoint {cid} (size {size})")
            for cid, size, root, note in await audit_repository.all_checkpoints(conn)
        ]
        size = await audit_repository.tree_size(conn)
    log = LogVerifier(verifier, checkpoints, expectations or Expectations())
    after = -1
    while log.compact.size < size:
        async with engine.connect() as conn:
            rows = await audit_repository.page_for_verification(conn, after, size, VERIFY_PAGE)
        if not rows:
            break
        add = log.add
        for row in rows:
            add(row[0], f"entry {row[1]}", row[2], row[3], row[4:])
        after = rows[-1][0]
        if progress is not None:
            progress(log.compact.size, size)
    async with engine.connect() as conn:
        unsequenced = await audit_repository.unsequenced_entry(conn)
    if unsequenced is not None:
        raise VerificationFailed(f"entry {unsequenced} was sequenced but its leaf has been removed")
    if log.compact.size != size:
        raise VerificationFailed(f"the log records {size} leaves but only {log.compact.size} are stored")
    return log.finish(), log.checked_checkpoints
