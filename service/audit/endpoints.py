"""The audit API: tamper evidence, queries, export, usage reports, the citizen access log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BeforeValidator, WithJsonSchema

from service import content_coding
from service.audit import proofs, search, tiles, witnessing
from service.audit.checkpoint import MAX_TREE_SIZE, NoteSigner
from service.audit.errors import AuditQueryInvalid
from service.audit.schemas import ACTIONS, DECISIONS
from service.audit.writer import AuditWriterDep, get_audit_writer
from service.auth import permissions
from service.auth.dependencies import Principal, get_principal, optional_principal, require
from service.auth.facts import source_address
from service.cursors import NON_EMPTY_CURSOR_SCHEMA
from service.db import DatabaseDep, SessionDep
from service.digits import bounded_decimal
from service.errors import InsufficientScope, Unauthenticated
from service.records.schemas import CITIZEN_ID_PATTERN

router = APIRouter(tags=["audit"])

Verifier = Annotated[Principal, Depends(require("audit:verify"))]
Exporter = Annotated[Principal, Depends(require("audit:export"))]
Portal = Annotated[Principal, Depends(require("citizens:access-log"))]
# No length limit here: a cursor of any length the list did not give is the one
# ``invalid-cursor`` refusal (``search.parse_cursor``), not a validation error.
CURSOR_DOC = "The next_cursor of the previous page."


async def _reader(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    # An auditor reads all entries; a data owner only those touching its fields.
    return permissions.require_audit_reader(principal)


Reader = Annotated[Principal, Depends(_reader)]


def _tree_number(minimum: int) -> BeforeValidator:
    """Read a leaf index or a tree size from a path or a query as RFC 9162's and C2SP's
    verifiers write it: ``0`` or ``[1-9][0-9]*``, from ``minimum`` to 2^63-1 (the sizes a
    checkpoint carries); anything else is a 422. Pydantic's own int reads "3_0" as 30, and
    "+3", " 3", "3.0" and "03" as 3: one number with many spellings."""

    def read(text: object) -> int:
        number = bounded_decimal(text, MAX_TREE_SIZE) if isinstance(text, str) else None
        if number is None or number < minimum:
            raise ValueError(
                f"must be a decimal number from {minimum} to {MAX_TREE_SIZE}: ASCII digits "
                "without a sign, spaces, underscores, a decimal point or leading zeroes"
            )
        return number

    return BeforeValidator(read)


def _tree_number_schema(minimum: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": minimum, "maximum": MAX_TREE_SIZE})


TreeNumber = Annotated[int, _tree_number(0), _tree_number_schema(0)]
# A tree to prove in, when named: the empty tree holds no leaf.
ProofTreeSize = Annotated[int | None, _tree_number(1), _tree_number_schema(1)]


class FilterParams:
    def __init__(
        self,
        citizen_id: str | None = Query(None, max_length=64),
        consumer: str | None = Query(None, max_length=63),
        owner: str | None = Query(None, max_length=63),
        field: str | None = Query(None, max_length=63),
        purpose: str | None = Query(None, max_length=63),
        # The values are checked by ``search.entry_filter`` (400, audit-query-invalid); the
        # enums tell the OpenAPI document's readers which there are.
        decision: str | None = Query(None, max_length=16, json_schema_extra={"enum": list(DECISIONS)}),
        action: str | None = Query(None, max_length=32, json_schema_extra={"enum": list(ACTIONS)}),
        since: str | None = Query(
            None, max_length=40, description="ISO 8601, inclusive", json_schema_extra=search.TIME_QUERY_SCHEMA
        ),
        until: str | None = Query(
            None, max_length=40, description="ISO 8601, exclusive", json_schema_extra=search.TIME_QUERY_SCHEMA
        ),
    ) -> None:
        self.query = search.EntryQuery(
            citizen_id=citizen_id,
            consumer=consumer,
            owner=owner,
            field=field,
            purpose=purpose,
            decision=decision,
            action=action,
            since=search.parse_time(since, "since"),
            until=search.parse_time(until, "until"),
        )


Filters = Annotated[FilterParams, Depends()]


def _require_token() -> Unauthenticated:
    return Unauthenticated("Send the access token as 'Authorization: Bearer <token>'.", error=None)


def _check_checkpoint_reader(request: Request, principal: Principal | None) -> None:
    # Monitors and witnesses fetch the checkpoint, the key that checks it and the hash
    # tiles without a token when the operator says so; otherwise they need audit:verify.
    if request.app.state.audit_settings.public_checkpoint:
        return
    if principal is None:
        raise _require_token()
    if "audit:verify" not in principal.scopes:
        raise InsufficientScope("This call needs the scope(s): audit:verify.", ("audit:verify",))


async def _checkpoint_reader(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal | None:
    _check_checkpoint_reader(request, principal)
    return principal


# Read by the OpenAPI document (service/openapi.py): the scope asked for unless public.
_checkpoint_reader.required_scopes = frozenset({"audit:verify"})  # type: ignore[attr-defined]
CheckpointReader = Annotated[Principal | None, Depends(_checkpoint_reader)]


@router.get("/v1/audit/checkpoint", response_class=PlainTextResponse)
async def get_checkpoint(
    _caller: CheckpointReader, request: Request, database: DatabaseDep
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
async def get_verifier_key(_caller: CheckpointReader, request: Request) -> PlainTextResponse:
    """The C2SP note verifier key (Ed25519) that checks every checkpoint. As open as the
    checkpoint: without a token when the operator serves the checkpoint publicly."""
    signer: NoteSigner = request.app.state.audit_signer
    return PlainTextResponse(signer.verifier_key() + "\n", media_type="text/plain; charset=utf-8")


@router.get("/v1/audit/entries/{index}/proof")
async def get_inclusion_proof(
    index: TreeNumber,
    caller: Verifier,
    request: Request,
    database: DatabaseDep,
    writer: AuditWriterDep,
    tree_size: ProofTreeSize = None,
) -> dict[str, Any]:
    """An RFC 9162 inclusion proof of leaf ``index`` in the tree of ``tree_size`` (default: the
    checkpoint ``GET /v1/audit/checkpoint`` serves, the newest at the witness quorum when
    witnesses are configured), with the stored entry whose canonical JSON the leaf hashes."""
    config = request.app.state.witness_config
    async with database.engine.connect() as conn:
        proof = await proofs.inclusion(
            conn, index, tree_size, witnesses=config.verifiers, quorum=config.quorum
        )
    # The proof carries an entry, so reading it is an audit query like any other.
    await search.record_query(
        writer, caller, source=source_address(request), citizen_id=proof["entry"].get("citizen_id")
    )
    return proof


@router.get("/v1/audit/consistency")
async def get_consistency_proof(
    _caller: Verifier,
    database: DatabaseDep,
    first: TreeNumber,
    second: TreeNumber,
) -> dict[str, Any]:
    """An RFC 9162 consistency proof between tree sizes ``first`` and ``second``."""
    if first > second:
        raise AuditQueryInvalid("first must not exceed second.")
    async with database.engine.connect() as conn:
        return await proofs.consistency(conn, first, second)


@router.get("/v1/audit/entries")
async def list_entries(
    caller: Reader,
    filters: Filters,
    request: Request,
    access: search.AuditAccessDep,
    cursor: str | None = Query(None, description=CURSOR_DOC, json_schema_extra=NON_EMPTY_CURSOR_SCHEMA),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Audit entries in a stable order (oldest first), filtered, one page at a time.
    A data owner sees only entries that touch its department's fields."""
    page = await search.search_entries(
        access,
        caller,
        filters.query,
        after=search.parse_cursor(cursor),
        limit=limit,
        source=source_address(request),
    )
    return {"items": page.items, "next_cursor": _next(page.next_cursor)}


def _next(cursor: int | None) -> str | None:
    return None if cursor is None else str(cursor)


@router.get(
    "/v1/audit/export",
    response_class=StreamingResponse,
    responses={200: {"description": "Every matching entry, as JSON lines or CSV (`format`)."}},
)
async def export_entries(
    caller: Exporter,
    filters: Filters,
    request: Request,
    access: search.AuditAccessDep,
    format: search.ExportFormat = Query("jsonl"),
) -> StreamingResponse:
    """Every matching entry, streamed page by page as JSON lines or CSV."""
    lines = await search.export_entries(
        access, caller, filters.query, format=format, source=source_address(request)
    )
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    disposition = f'attachment; filename="audit.{format}"'
    return StreamingResponse(lines, media_type=media, headers={"Content-Disposition": disposition})


@router.get("/v1/audit/reports/usage")
async def usage_report(
    caller: Reader,
    request: Request,
    session: SessionDep,
    access: search.AuditAccessDep,
    period: Literal["day", "month"] = Query("month"),
    consumer: str | None = Query(None, max_length=63),
    owner: str | None = Query(None, max_length=63),
    since: str | None = Query(
        None, max_length=40, description="ISO 8601, inclusive", json_schema_extra=search.TIME_QUERY_SCHEMA
    ),
    until: str | None = Query(
        None, max_length=40, description="ISO 8601, exclusive", json_schema_extra=search.TIME_QUERY_SCHEMA
    ),
    cursor: str | None = Query(None, description=CURSOR_DOC, json_schema_extra=NON_EMPTY_CURSOR_SCHEMA),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Released fields counted by consumer, owner, field, purpose and day or month: the value
    an owner's data gives others. A data owner sees only its own fields."""
    counts = await search.usage_report(
        session,
        access,
        caller,
        period=period,
        consumer=consumer,
        owner=owner,
        since=search.parse_time(since, "since"),
        until=search.parse_time(until, "until"),
        source=source_address(request),
    )
    page, next_cursor = search.usage_page(counts, cursor, limit)
    return {"items": page, "next_cursor": next_cursor}


@router.get("/v1/citizens/{citizen_id}/access-log")
async def citizen_access_log(
    # In the form registration issues, as on every citizen route: anything else (a NUL
    # would reach the database as text PostgreSQL refuses) is a 422 before any query.
    citizen_id: Annotated[
        str, Path(pattern=CITIZEN_ID_PATTERN, description="The citizen's pseudonymous id.")
    ],
    caller: Portal,
    request: Request,
    access: search.AuditAccessDep,
    cursor: str | None = Query(None, description=CURSOR_DOC, json_schema_extra=NON_EMPTY_CURSOR_SCHEMA),
    limit: int = Query(100, ge=1, le=1000),
    proofs: bool = Query(
        False, description="Add to each line its inclusion proof against the witnessed checkpoint."
    ),
) -> dict[str, Any]:
    """Every access to one citizen's record: when, which department, which fields, for what
    purpose and with what decision. Officers' identities are left out.

    An access made under an agreement with `disclosure: after-case-closed` appears only once
    the consumer has closed its case or the agreement's `max_delay` has passed, with its
    original `time`, and `disclosed_at` and `disclosed_by` (`case-closed` or `max-delay`).

    With ``proofs=true`` each item gains ``proof`` (``{leaf_index, tree_size, leaf_hash,
    hashes, entry}``, as ``/v1/audit/entries/{index}/proof``; null for an access the newest
    witnessed checkpoint does not cover yet) and the response gains ``checkpoint``: that
    checkpoint as one signed note with the witnesses' cosignatures, so the citizen (or
    anyone) can check every line against a root the witnesses vouch for."""
    page = await search.citizen_access_log(
        access,
        caller,
        citizen_id,
        after=search.parse_cursor(cursor),
        limit=limit,
        source=source_address(request),
        now=request.app.state.clock(),
        proofs=request.app.state.witness_config if proofs else None,
    )
    if not proofs:
        return {"items": page.items, "next_cursor": _next(page.next_cursor)}
    return {"items": page.items, "next_cursor": _next(page.next_cursor), "checkpoint": page.checkpoint}


# tlog-tiles: every tile, full or partial, is immutable, "so its caching headers SHOULD be
# long-lived".
IMMUTABLE = "max-age=31536000, immutable"
OCTETS = "application/octet-stream"


def _entry_bundle_reader(caller: Principal | None) -> Principal:
    if caller is None:
        raise _require_token()
    if not permissions.may_export_audit(caller):
        raise InsufficientScope("Entry bundles need the scope audit:export.", ("audit:export",))
    return caller


@router.get("/v1/audit/tile/{tile:path}", response_class=Response)
async def get_tile(
    # Documentation only: ``parse_tile_path`` checks it, with its own 400. The examples give
    # a generator values to start from: the pattern alone yields few it would send.
    tile: Annotated[
        str,
        Path(
            json_schema_extra={"pattern": tiles.TILE_PATH_PATTERN},
            openapi_examples={
                "full": {"summary": "The first full hash tile of level 0", "value": "0/000"},
                "partial": {"summary": "Its first 8 hashes, while the tree is smaller", "value": "0/000.p/8"},
            },
        ),
    ],
    request: Request,
    database: DatabaseDep,
    caller: Annotated[Principal | None, Depends(optional_principal)],
) -> Response:
    """C2SP tlog-tiles for mirrors, monitors and witnesses: ``<L>/<N>[.p/<W>]`` is a hash tile
    (the stored subtree hashes at tree level 8·L), ``entries/<N>[.p/<W>]`` an entry bundle
    (uint16-length-prefixed canonical entries). Hash tiles are as open as the checkpoint
    (scope audit:verify, or none when the checkpoint is public). Entry bundles need the
    scope audit:export whatever the checkpoint's openness, and are audited, since entries
    hold pseudonymous citizen ids; they are gzip-compressed for a client whose
    `Accept-Encoding` accepts gzip. Every tile, full or partial (`.p/<W>`), never changes
    once served and is cached for a year (by shared caches only when hash tiles are
    public); 404 (`Cache-Control: no-store`) while the tree is
    too small for a tile; 501 for an entry bundle holding an entry over the format's 65,535
    bytes (read such an entry from ``/v1/audit/entries/{index}/proof``)."""
    # Who may ask before what is asked: the first element alone says which kind it is.
    exporter = _entry_bundle_reader(caller) if tile.partition("/")[0] == "entries" else None
    if exporter is None:
        _check_checkpoint_reader(request, caller)
    try:
        wanted = tiles.parse_tile_path(tile)
    except tiles.TilePathInvalid as exc:
        raise AuditQueryInvalid(f"Not a tile path: {exc}") from None
    if exporter is not None:
        writer = await get_audit_writer(request)
        await search.record_query(writer, exporter, source=source_address(request))
    async with database.engine.connect() as conn:
        body = await tiles.read_tile(conn, wanted)
    if exporter is None:
        # Shared caches may keep a hash tile only when anyone may read it: one kept from an
        # answer to a token would be handed to callers without one (RFC 9111, 3.5).
        shared = "public" if request.app.state.audit_settings.public_checkpoint else "private"
        return Response(body, media_type=OCTETS, headers={"Cache-Control": f"{shared}, {IMMUTABLE}"})
    # Vary even when not compressed: a shared cache must not hand this answer to a client
    # that asked otherwise.
    headers = {"Cache-Control": f"private, {IMMUTABLE}", "Vary": "Accept-Encoding"}
    if content_coding.accepts_gzip(request.headers.get("accept-encoding")):
        body = await content_coding.gzipped(body)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=OCTETS, headers=headers)
