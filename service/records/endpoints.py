"""Citizen endpoints: HTTP only. Each authenticates, calls the records service, returns."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import TypeAdapter

from service.audit.writer import get_audit_writer
from service.auth.dependencies import Principal, get_principal, header
from service.auth.facts import RequestFacts, facts, request_facts
from service.crypto.keyring import Keyring
from service.cursors import NON_EMPTY_CURSOR_SCHEMA
from service.db import Database
from service.errors import ValidationFailed
from service.etags import IfMatchHeader, etag, parse_if_match
from service.hotpath import app_state, stand_in
from service.records import reads, writes
from service.records.schemas import (
    CITIZEN_ID_PATTERN,
    BatchGet,
    BatchPage,
    CitizenOut,
    ErasureReason,
    HistoryPage,
    LookupCitizen,
    LookupOut,
    RegisterCitizen,
    Registered,
    VerifyClaims,
    VerifyOut,
    WriteFields,
    WriteOut,
    is_citizen_id,
)
from service.records.service import RecordsService

router = APIRouter(prefix="/v1/citizens", tags=["citizens"])


async def records_service(request: Request) -> RecordsService:
    """The records service on the app's long-lived parts. One dependency that reads them
    itself: each dependency level FastAPI resolves costs more than these lookups."""
    state = app_state(request)
    database: Database = state["database"]
    keyring: Keyring = state["keyring"]
    return RecordsService(
        database.engine,
        keyring,
        # Fails closed (503) when the writer is down or the witness gate is shut.
        await get_audit_writer(request),
        state["records_store"],
        state["policy"],
        state.get("metrics"),
        database.settings.verify_unconstrained_per_day,
        state["clock"],
    )


Records = Annotated[RecordsService, Depends(records_service)]


def _field_list(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if len(names) > 100:
        raise ValidationFailed(
            "Too many fields.", errors=[{"loc": ["query", "fields"], "msg": "at most 100"}]
        )
    return names


# The parameters' limits, declared once for FastAPI and checked by the hot read.
PURPOSE_MIN, PURPOSE_MAX = 1, 63
FIELDS_MAX = 4000

CitizenPath = Annotated[
    str,
    Path(
        pattern=CITIZEN_ID_PATTERN,
        description="The citizen's pseudonymous id, as registration returns it (a lower-case UUID).",
    ),
]
PurposeQuery = Annotated[
    str,
    Query(min_length=PURPOSE_MIN, max_length=PURPOSE_MAX, description="Why you ask; a catalog purpose id."),
]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Registered)
async def register_citizen(
    body: RegisterCitizen,
    response: Response,
    records: Records,
    caller: Annotated[RequestFacts, Depends(facts("citizens:register"))],
) -> Registered:
    """Register a citizen with a national id and the fields your department owns.

    409 if a citizen with that national id is already registered; 422 if `fields` names
    `national_id` too (give it once, at the top level).
    """
    registered = await writes.register(records, caller, body.national_id, body.fields)
    response.headers["Location"] = f"/v1/citizens/{registered.id}"
    response.headers["ETag"] = etag(registered.version)
    return registered


@router.post("/lookup", response_model=LookupOut)
async def lookup_citizen(
    body: LookupCitizen, records: Records, caller: Annotated[RequestFacts, Depends(facts("citizens:lookup"))]
) -> LookupOut:
    """Find a citizen's id by national id, for a purpose. 404 if unknown or not allowed."""
    return await reads.lookup(records, caller.for_purpose(body.purpose), body.national_id)


@router.post("/batch-get", response_model=BatchPage)
async def batch_get(
    body: BatchGet, records: Records, caller: Annotated[RequestFacts, Depends(facts("citizens:read"))]
) -> BatchPage:
    """Read up to 1,000 citizens at once, decided field by field for each citizen."""
    return await reads.batch_get(records, caller.for_purpose(body.purpose), body.ids, body.fields)


READ_SCOPES = frozenset({"citizens:read"})


@router.get("/{citizen_id}", response_model=CitizenOut)
async def read_citizen(
    citizen_id: CitizenPath,
    purpose: PurposeQuery,
    response: Response,
    records: Records,
    caller: Annotated[RequestFacts, Depends(facts(*READ_SCOPES))],
    fields: Annotated[
        str | None, Query(max_length=FIELDS_MAX, description="Comma-separated field names.")
    ] = None,
) -> CitizenOut:
    """Read the fields your agreements allow for ``purpose``; the rest are listed in
    ``withheld`` with the reason. 403 if nothing is allowed."""
    citizen = await reads.read(records, caller.for_purpose(purpose), citizen_id, _field_list(fields))
    response.headers["ETag"] = etag(citizen.version)
    return citizen


_CITIZEN_OUT = TypeAdapter(CitizenOut)


def _query(query_string: bytes) -> dict[str, str] | None:
    """The query's parameters as Starlette's ``request.query_params`` parses them, without
    its multi-dict; None when a name is repeated (``errors.RepeatedQueryMiddleware`` refuses
    that). Without a ``%`` or ``+`` nothing is decoded, and a split is ``parse_qsl``'s
    answer at a quarter of its cost."""
    text = query_string.decode("latin-1")
    if "%" in text or "+" in text:
        pairs = parse_qsl(text, keep_blank_values=True)
        parameters = dict(pairs)
        return parameters if len(parameters) == len(pairs) else None
    parameters = {}
    given = 0
    for pair in text.split("&"):
        if pair:
            name, _equals, value = pair.partition("=")
            parameters[name] = value
            given += 1
    return parameters if len(parameters) == given else None


async def read_citizen_hot(request: Request) -> Response | None:
    """``read_citizen`` as a hot route (``service.hotpath``): the same checks of its
    parameters (None, for the declared route's 422, when one fails or is repeated), then the same calls in
    the order its dependencies run, and the same body and ETag."""
    citizen_id: str = request.path_params["citizen_id"]
    query = _query(request.scope["query_string"])
    if query is None:
        return None
    purpose, fields = query.get("purpose"), query.get("fields")
    if (
        not is_citizen_id(citizen_id)
        or purpose is None
        or not PURPOSE_MIN <= len(purpose) <= PURPOSE_MAX
        or (fields is not None and len(fields) > FIELDS_MAX)
    ):
        return None
    records: RecordsService = await stand_in(request, records_service)
    principal: Principal = await stand_in(request, get_principal)
    caller = request_facts(request, principal, READ_SCOPES, header(request, b"x-case-ref"), purpose)
    citizen = await reads.read(records, caller, citizen_id, _field_list(fields))
    # As FastAPI answers a route with a response model: the model's JSON by alias.
    response = Response(_CITIZEN_OUT.dump_json(citizen, by_alias=True), media_type="application/json")
    # Last, as FastAPI adds the endpoint's own headers after the body's.
    response.raw_headers.append((b"etag", etag(citizen.version).encode("latin-1")))
    return response


@router.patch("/{citizen_id}/fields", response_model=WriteOut)
async def write_fields(
    citizen_id: CitizenPath,
    body: WriteFields,
    response: Response,
    records: Records,
    caller: Annotated[RequestFacts, Depends(facts("citizens:write"))],
    if_match: IfMatchHeader = None,
) -> WriteOut:
    """Write fields your department owns, or that a `write` agreement delegates to it
    (then name that agreement's purpose). Send `If-Match` with the ETag you read: a stale
    one gets 412 and nothing is written. Writing `national_id` to one another citizen holds
    is 409. A field you may not write is 403; if you may write none of them, are party to
    no `write` agreement over them and may not look citizens up, the answer is 404 whether
    or not the citizen exists or was erased."""
    written = await writes.write(
        records,
        caller.for_purpose(body.purpose),
        citizen_id,
        body.fields,
        reason=body.reason,
        if_match=parse_if_match(if_match),
    )
    response.headers["ETag"] = etag(written.version)
    return written


@router.get("/{citizen_id}/fields/{field}/history", response_model=HistoryPage)
async def field_history(
    citizen_id: CitizenPath,
    field: Annotated[str, Path(min_length=1, max_length=63)],
    purpose: PurposeQuery,
    records: Records,
    caller: Annotated[RequestFacts, Depends(facts("citizens:history"))],
    cursor: Annotated[str | None, Query(max_length=12, json_schema_extra=NON_EMPTY_CURSOR_SCHEMA)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> HistoryPage:
    """Earlier versions of one field, newest first, if a `history` agreement allows it."""
    return await reads.history(
        records, caller.for_purpose(purpose), citizen_id, field, cursor=cursor, limit=limit
    )


@router.post("/{citizen_id}/verify", response_model=VerifyOut)
async def verify_claims(
    citizen_id: CitizenPath,
    body: VerifyClaims,
    records: Records,
    caller: Annotated[RequestFacts, Depends(facts("citizens:verify"))],
) -> VerifyOut:
    """Check claims (`eq`, `lte`, `gte`, `in`) against fields without seeing their values."""
    return await reads.verify(records, caller.for_purpose(body.purpose), citizen_id, body.claims)


@router.delete("/{citizen_id}", status_code=status.HTTP_204_NO_CONTENT)
async def erase_citizen(
    citizen_id: CitizenPath,
    reason: Annotated[ErasureReason, Query(description="Why: a fixed code, kept in the audit.")],
    legal_basis: Annotated[
        str, Query(min_length=1, max_length=200, description="The legal basis, kept in the audit.")
    ],
    records: Records,
    caller: Annotated[RequestFacts, Depends(facts("citizens:erase"))],
    purpose: Annotated[
        str | None,
        Query(min_length=1, max_length=63, description="Your erase agreement's purpose (not the owner)."),
    ] = None,
    if_match: IfMatchHeader = None,
) -> Response:
    """Erase a citizen by destroying their data keys. Later reads get 410 (404 from a
    caller that may not know the citizen existed); the audit stays.

    Only the department that owns `national_id` erases, or one holding an `erase`
    agreement on `national_id` (naming its purpose); anyone else gets 403, the same for a
    made-up id (which is not audited: it names no citizen). With `If-Match`, a record no
    longer at the version it names gets 412 and is not erased."""
    await writes.erase(
        records,
        caller.for_purpose(purpose),
        citizen_id,
        reason=reason,
        legal_basis=legal_basis,
        if_match=parse_if_match(if_match),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
