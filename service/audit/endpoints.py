"""The audit API: tamper evidence, queries, export, usage reports, the citizen access log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from service.audit import proofs as audit_proofs
from service.audit import query as audit_query
from service.audit import repository as audit_repository
from service.audit import service as audit_service
from service.audit import tiles, witnessing
from service.audit.checkpoint import NoteSigner
from service.audit.errors import AuditQueryInvalid
from service.audit.repository import EntryFilter
from service.audit.schemas import ACTIONS, DECISIONS
from service.audit.writer import AuditWriterDep, get_audit_writer
from service.auth.dependencies import Principal, get_principal, optional_principal, require
from service.catalog import service as catalog_service
from service.catalog.errors import CatalogMissing
from service.db import DatabaseDep, SessionDep
from service.errors import Forbidden, NotFound, Unauthenticated

router = APIRouter(tags=["audit"])

Verifier = Annotated[Principal, Depends(require("audit:verify"))]
Exporter = Annotated[Principal, Depends(require("audit:export"))]
Portal = Annotated[Principal, Depends(require("citizens:access-log"))]


async def _reader(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    # An auditor reads all entries; a data owner only those touching its fields.
    if not principal.scopes & {"audit:read", "audit:read-own"}:
        raise Forbidden("This call needs the scope audit:read or audit:read-own.")
    return principal


Reader = Annotated[Principal, Depends(_reader)]


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise AuditQueryInvalid(
            f"{name} is not an ISO 8601 date or time.", errors=[{"loc": ["query", name], "msg": "not a date"}]
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _filter(
    principal: Principal,
    *,
    citizen_id: str | None,
    consumer: str | None,
    owner: str | None,
    field: str | None,
    purpose: str | None,
    decision: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
) -> EntryFilter:
    if decision is not None and decision not in DECISIONS:
        raise AuditQueryInvalid(
            f"decision must be one of {', '.join(DECISIONS)}.",
            errors=[{"loc": ["query", "decision"], "msg": "unknown decision"}],
        )
    if action is not None and action not in ACTIONS:
        raise AuditQueryInvalid(
            "action is not a known audit action.",
            errors=[{"loc": ["query", "action"], "msg": "unknown action"}],
        )
    return EntryFilter(
        citizen_id=citizen_id,
        consumer=consumer,
        owner=owner,
        field=field,
        purpose=purpose,
        decision=decision,
        action=action,
        since=_time(since, "since"),
        until=_time(until, "until"),
        visible_to_owner=None if "audit:read" in principal.scopes else principal.department,
    )


class FilterParams:
    def __init__(
        self,
        citizen_id: str | None = Query(None, max_length=64),
        consumer: str | None = Query(None, max_length=63),
        owner: str | None = Query(None, max_length=63),
        field: str | None = Query(None, max_length=63),
        purpose: str | None = Query(None, max_length=63),
        decision: str | None = Query(None, max_length=16),
        action: str | None = Query(None, max_length=32),
        since: str | None = Query(None, max_length=40, description="ISO 8601, inclusive"),
        until: str | None = Query(None, max_length=40, description="ISO 8601, exclusive"),
    ) -> None:
        self.values = {
            "citizen_id": citizen_id,
            "consumer": consumer,
            "owner": owner,
            "field": field,
            "purpose": purpose,
            "decision": decision,
            "action": action,
            "since": since,
            "until": until,
        }


Filters = Annotated[FilterParams, Depends()]


def _cursor(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 19:
        raise AuditQueryInvalid("The cursor is not one this service returned.")
    return int(value)


async def _audit_query(
    writer: AuditWriterDep, request: Request, principal: Principal, action: Any = "audit-query", **kw: Any
) -> None:
    """Audit the query itself, durably, before any result leaves."""
    await writer.append(audit_service.request_entry(request, principal, action, **kw))


async def _checkpoint_reader(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal | None:
    # Monitors and witnesses fetch the checkpoint without a token when the operator says so.
    if request.app.state.audit_settings.public_checkpoint:
        return principal
    if principal is None:
        raise Unauthenticated(
            "Send the access token as 'Authorization: Bearer <token>'.", error="invalid_request"
        )
    if "audit:verify" not in principal.scopes:
        raise Forbidden("This call needs the scope(s): audit:verify.")
    return principal


@router.get("/v1/audit/checkpoint", response_class=PlainTextResponse)
async def get_checkpoint(
    _caller: Annotated[Principal | None, Depends(_checkpoint_reader)], request: Request, database: DatabaseDep
) -> PlainTextResponse:
    """The newest checkpoint that reached the witness quorum: one C2SP signed note whose body
    is a tlog-checkpoint, carrying the log's signature line and each witness's cosignature
    line. Without witnesses configured, the newest signed checkpoint."""
    async with database.engine.connect() as conn:
        note = await witnessing.witnessed_checkpoint_note(conn, request.app.state.witness_config)
    return PlainTextResponse(
        note, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.get("/v1/audit/verifier-key", response_class=PlainTextResponse)
async def get_verifier_key(_caller: Verifier, request: Request) -> PlainTextResponse:
    """The C2SP note verifier key (Ed25519) that checks every checkpoint."""
    signer: NoteSigner = request.app.state.audit_signer
    return PlainTextResponse(signer.verifier_key() + "\n", media_type="text/plain; charset=utf-8")


@router.get("/v1/audit/entries/{index}/proof")
async def get_inclusion_proof(
    index: int,
    caller: Verifier,
    request: Request,
    database: DatabaseDep,
    writer: AuditWriterDep,
    tree_size: int | None = Query(None, ge=1),
) -> dict[str, Any]:
    """An RFC 9162 inclusion proof of leaf ``index`` in the tree of ``tree_size`` (default: the
    latest checkpoint), with the stored entry whose canonical JSON the leaf hashes."""
    async with database.engine.connect() as conn:
        proof = await audit_service.inclusion(conn, index, tree_size)
    # The proof carries an entry, so reading it is an audit query like any other.
    await _audit_query(writer, request, caller, citizen_id=proof["entry"].get("citizen_id"))
    return proof


@router.get("/v1/audit/consistency")
async def get_consistency_proof(
    _caller: Verifier, database: DatabaseDep, first: int = Query(..., ge=0), second: int = Query(..., ge=0)
) -> dict[str, Any]:
    """An RFC 9162 consistency proof between tree sizes ``first`` and ``second``."""
    if first > second:
        raise AuditQueryInvalid("first must not exceed second.")
    async with database.engine.connect() as conn:
        return await audit_service.consistency(conn, first, second)


@router.get("/v1/audit/entries")
async def list_entries(
    caller: Reader,
    filters: Filters,
    request: Request,
    database: DatabaseDep,
    writer: AuditWriterDep,
    cursor: str | None = Query(None, max_length=20),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Audit entries in a stable order (oldest first), filtered, one page at a time.
    A data owner sees only entries that touch its department's fields."""
    entry_filter = _filter(caller, **filters.values)
    after = _cursor(cursor)
    async with database.engine.connect() as conn:
        rows = await audit_repository.page_entries(conn, entry_filter, after, limit)
    await _audit_query(writer, request, caller, owners=[entry_filter.owner] if entry_filter.owner else [])
    items = [audit_query.entry_item(entry_id, leaf, canonical) for entry_id, leaf, canonical in rows]
    next_cursor = str(rows[-1][0]) if len(rows) == limit else None
    return {"items": items, "next_cursor": next_cursor}


@router.get("/v1/audit/export")
async def export_entries(
    caller: Exporter,
    filters: Filters,
    request: Request,
    database: DatabaseDep,
    writer: AuditWriterDep,
    format: Literal["jsonl", "csv"] = Query("jsonl"),
) -> StreamingResponse:
    """Every matching entry, streamed page by page as JSON lines or CSV."""
    entry_filter = _filter(caller, **filters.values)
    await _audit_query(writer, request, caller)
    engine = database.engine

    async def lines() -> AsyncIterator[str]:
        if format == "csv":
            yield audit_query.csv_header()
        after = 0
        while True:
            async with engine.connect() as conn:
                rows = await audit_repository.page_entries(conn, entry_filter, after, 500)
            for entry_id, leaf, canonical in rows:
                item = audit_query.entry_item(entry_id, leaf, canonical)
                yield audit_query.csv_line(item) if format == "csv" else json.dumps(item) + "\n"
            if len(rows) < 500:
                return
            after = rows[-1][0]

    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    disposition = f'attachment; filename="audit.{format}"'
    return StreamingResponse(lines(), media_type=media, headers={"Content-Disposition": disposition})


@router.get("/v1/audit/reports/usage")
async def usage_report(
    caller: Reader,
    request: Request,
    session: SessionDep,
    database: DatabaseDep,
    writer: AuditWriterDep,
    period: Literal["day", "month"] = Query("month"),
    consumer: str | None = Query(None, max_length=63),
    owner: str | None = Query(None, max_length=63),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    cursor: str | None = Query(None, max_length=20),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Released fields counted by consumer, owner, field, purpose and day or month: the value
    an owner's data gives others. A data owner sees only its own fields."""
    if "audit:read" not in caller.scopes:
        if owner is not None and owner != caller.department:
            raise Forbidden("A data owner reports only on its own fields.")
        owner = caller.department
    try:
        _version, catalog = await catalog_service.current(session)
        field_owners = {spec.name: spec.owner for spec in catalog.fields}
    except CatalogMissing:
        field_owners = {}
    entry_filter = EntryFilter(
        consumer=consumer, owner=owner, since=_time(since, "since"), until=_time(until, "until")
    )
    counts = await audit_query.usage_counts(database.engine, entry_filter, period, field_owners, owner)
    await _audit_query(writer, request, caller, owners=[owner] if owner else [])
    start = _cursor(cursor)
    page = counts[start : start + limit]
    next_cursor = str(start + limit) if start + limit < len(counts) else None
    return {"items": page, "next_cursor": next_cursor}


@router.get("/v1/citizens/{citizen_id}/access-log")
async def citizen_access_log(
    citizen_id: str,
    caller: Portal,
    request: Request,
    database: DatabaseDep,
    writer: AuditWriterDep,
    cursor: str | None = Query(None, max_length=20),
    limit: int = Query(100, ge=1, le=1000),
    proofs: bool = Query(
        False, description="Add to each line its inclusion proof against the witnessed checkpoint."
    ),
) -> dict[str, Any]:
    """Every access to one citizen's record: when, which department, which fields, for what
    purpose and with what decision. Officers' identities are left out.

    With ``proofs=true`` each item gains ``proof`` (``{leaf_index, tree_size, leaf_hash,
    hashes, entry}``, as ``/v1/audit/entries/{index}/proof``; null for an access the newest
    witnessed checkpoint does not cover yet) and the response gains ``checkpoint``: that
    checkpoint as one signed note with the witnesses' cosignatures, so the citizen (or
    anyone) can check every line against a root the witnesses vouch for."""
    after = _cursor(cursor)
    async with database.engine.connect() as conn:
        if len(citizen_id) > 64 or not await audit_repository.citizen_exists(conn, citizen_id):
            raise NotFound("No such citizen.")
        entry_filter = EntryFilter(citizen_id=citizen_id, actions=audit_query.CITIZEN_VISIBLE_ACTIONS)
        rows = await audit_repository.page_entries(conn, entry_filter, after, limit)
        witnessed = (
            await audit_proofs.proofs_for(
                conn, request.app.state.witness_config, [(leaf, canonical) for _id, leaf, canonical in rows]
            )
            if proofs
            else None
        )
    await _audit_query(writer, request, caller, action="access-log", citizen_id=citizen_id)
    items = [audit_query.access_item(canonical) for _entry_id, _leaf, canonical in rows]
    next_cursor = str(rows[-1][0]) if len(rows) == limit else None
    if witnessed is None:
        return {"items": items, "next_cursor": next_cursor}
    for item, proof in zip(items, witnessed.proofs, strict=True):
        item["proof"] = proof
    return {"items": items, "next_cursor": next_cursor, "checkpoint": witnessed.note}


IMMUTABLE = "max-age=31536000, immutable"


@router.get("/v1/audit/tile/{tile:path}", response_class=Response)
async def get_tile(
    tile: str,
    request: Request,
    database: DatabaseDep,
    caller: Annotated[Principal | None, Depends(_checkpoint_reader)],
) -> Response:
    """C2SP tlog-tiles for mirrors, monitors and witnesses: ``<L>/<N>[.p/<W>]`` is a hash tile
    (the stored subtree hashes at tree level 8·L), ``entries/<N>[.p/<W>]`` an entry bundle
    (uint16-length-prefixed canonical entries; auditors only, and audited, since entries
    hold pseudonymous citizen ids). Hash tiles are as open as the checkpoint. Full tiles
    never change and are cached for a year; 404 while the tree is too small for a tile."""
    try:
        wanted = tiles.parse_tile_path(tile)
    except tiles.TilePathInvalid as exc:
        raise AuditQueryInvalid(f"Not a tile path: {exc}") from None
    private = wanted.level is None
    if private:
        if caller is None or "audit:export" not in caller.scopes:
            raise Forbidden("Entry bundles need the scope audit:export.")
        writer = await get_audit_writer(request)
        await _audit_query(writer, request, caller)
    async with database.engine.connect() as conn:
        body = await tiles.read_tile(conn, wanted)
    if wanted.width is None:
        cache = f"{'private' if private else 'public'}, {IMMUTABLE}"
    else:
        cache = f"{'private' if private else 'public'}, max-age=60"
    return Response(body, media_type="application/octet-stream", headers={"Cache-Control": cache})
