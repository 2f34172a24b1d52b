"""Liveness, readiness and Prometheus metrics, for operators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from service.db import DatabaseDep
from service.errors import ServiceUnavailable
from service.observability import Metrics
from service.schema import current_revisions

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive. It does not touch the database."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, database: DatabaseDep) -> dict[str, str]:
    """The database is reachable and migrated to the code's head revision, and (with a
    witness grace period set) the audit log has been witnessed recently enough."""
    expected: set[str] = request.app.state.schema_heads
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        current = await current_revisions(database.engine)
    except Exception as exc:
        raise ServiceUnavailable("The database is not reachable.") from exc
    if current != expected:
        raise ServiceUnavailable("The database is not migrated; run `tellonce db upgrade`.")
    gate = getattr(request.app.state, "witness_gate", None)
    reason = gate.stale_reason() if gate is not None else None
    if reason is not None:
        raise ServiceUnavailable(f"Not serving data: {reason}.")
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: request counts and latency by route and status, audit
    writer batches committed and failed, webhook deliveries sent to dead letters."""
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render()
    return Response(content=body, media_type=content_type)
