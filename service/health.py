"""Liveness, readiness and Prometheus metrics, for operators and load balancers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit import repository as audit_repository
from service.db import Database, DatabaseDep, SqliteReads
from service.errors import FailingWrites, ServiceUnavailable
from service.events import repository as events_repository
from service.observability import Metrics
from service.schema import current_revisions, newer_schema

logger = logging.getLogger("tellonce.health")
router = APIRouter(tags=["operations"])

# Logged once by a process that finds its SQLite file replaced (``SqliteReads.replaced``).
FILE_REPLACED = (
    "the SQLite database file or its -wal was replaced or deleted while this process"
    " had it open: restart the service (its writes since go to the old file)"
)
# How often ``tellonce worker`` looks (two ``stat`` calls).
WORKER_FILE_CHECK_SECONDS = 1.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive. It does not touch the database."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, database: DatabaseDep) -> dict[str, str]:
    """The database is reachable and migrated to the code's head revision (or to a newer
    one, which a newer release made: ``schema.newer_schema``), a SQLite file is still the
    one the process opened (``SqliteReads.replaced``), its writes are not failing for
    storage reasons (``errors.FailingWrites``: a full disk, a read-only file or server, a
    PostgreSQL server out of memory), and (with a witness grace period set) the audit log
    has been witnessed recently enough."""
    expected: set[str] = request.app.state.schema_heads
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        current = await current_revisions(database.engine)
    except Exception as exc:
        raise ServiceUnavailable("The database is not reachable.") from exc
    if current != expected and not newer_schema(current, request.app.state.schema_known):
        raise ServiceUnavailable("The database is not migrated; run `tellonce db upgrade`.")
    reads = getattr(request.app.state, "driver_reads", None)
    if isinstance(reads, SqliteReads) and reads.replaced():
        if not getattr(request.app.state, "told_file_replaced", False):
            request.app.state.told_file_replaced = True
            logger.error(FILE_REPLACED)
        raise ServiceUnavailable(
            "The database file was replaced or deleted while the service had it open; restart the service."
        )
    writes: FailingWrites | None = getattr(request.app.state, "failing_writes", None)
    if writes is not None and writes.failing():
        raise ServiceUnavailable(
            "The database cannot be written just now (full, read-only or failing): writes are refused."
        )
    gate = getattr(request.app.state, "witness_gate", None)
    reason = gate.stale_reason() if gate is not None else None
    if reason is not None:
        raise ServiceUnavailable(f"Not serving data: {reason}.")
    return {"status": "ready"}


async def watch_sqlite_file(reads: SqliteReads, stop: asyncio.Event) -> bool:
    """``tellonce worker``'s ``/readyz``: until ``stop`` is set, whether its SQLite file is
    still the one it opened (``SqliteReads.replaced``). When it is not, log so once, set
    ``stop`` (every loop ends after its round, and no more are written to the orphaned
    file) and return True: the worker then exits 1, and its supervisor starts it again on
    the file that is there now. A worker has no readiness probe to be taken out by."""
    while not stop.is_set():
        if reads.replaced():
            logger.error(FILE_REPLACED)
            stop.set()
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=WORKER_FILE_CHECK_SECONDS)
    return False


def _in_use(engine: AsyncEngine) -> int:
    checkedout = getattr(engine.sync_engine.pool, "checkedout", None)
    return int(checkedout()) if checkedout is not None else 0


async def refresh_gauges(request: Request, registry: Metrics) -> None:
    """Set the gauges read from the database and the pools, as of this scrape."""
    database: Database = request.app.state.database
    registry.pool_in_use.labels("requests").set(_in_use(database.engine))
    writer = getattr(request.app.state, "audit_writer", None)
    registry.pool_in_use.labels("audit_writer").set(writer.connections_in_use() if writer is not None else 0)
    try:
        async with database.engine.connect() as connection:
            lag = await audit_repository.sequencer_lag(connection)
            backlog = await events_repository.outbox_backlog(connection)
            deliveries = await events_repository.delivery_counts(connection)
    except SQLAlchemyError:
        # Unreachable or not migrated: /readyz says so; the scrape still answers.
        logger.warning("metrics: the database gauges could not be read")
        return
    registry.sequencer_lag.set(lag)
    registry.outbox_backlog.set(backlog)
    for status in ("pending", "dead"):
        registry.deliveries.labels(status).set(deliveries.get(status, 0))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: requests by route and status, audit-writer batches
    (committed, failed, their sizes), webhook deliveries sent to dead letters, and as of this
    scrape the sequencer lag, outbox backlog, pending and dead deliveries, and pool use."""
    registry: Metrics = request.app.state.metrics
    await refresh_gauges(request, registry)
    body, content_type = registry.render()
    return Response(content=body, media_type=content_type)
