"""Agreements over HTTP for data owners and auditors, plus explain and simulate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response

from service.audit.writer import RefusalWriterDep
from service.auth.dependencies import Principal, require
from service.auth.facts import source_address
from service.catalog.schemas import IDENTIFIER_PATTERN
from service.cursors import NON_EMPTY_CURSOR_SCHEMA
from service.db import SessionDep
from service.etags import IfMatchHeader, VersionIfMatchHeader, etag, parse_if_match
from service.policy import agreements
from service.policy import service as policy_service
from service.policy.models import AgreementVersion
from service.policy.schemas import (
    AgreementOut,
    AgreementPage,
    ChangeOut,
    DecisionOut,
    ExplainIn,
    ExplainOut,
    NearMissOut,
    SimulateOut,
)

router = APIRouter(tags=["policies"])

PolicyReader = Annotated[Principal, Depends(require("policies:read"))]
PolicyWriter = Annotated[Principal, Depends(require("policies:write"))]
Simulator = Annotated[Principal, Depends(require("policies:simulate"))]
Explainer = Annotated[Principal, Depends(require("decisions:explain"))]
Limit = Annotated[int, Query(ge=1, le=200)]
# An agreement id as every agreement has one (``catalog.schemas.Identifier``): anything else
# is refused before it reaches the store (PostgreSQL cannot even take a NUL as text).
AgreementId = Annotated[
    str, Path(pattern=IDENTIFIER_PATTERN, max_length=63, description="The agreement's id.")
]


@asynccontextmanager
async def policy_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """This app's compiled-policy holder, and the request source simulate replays."""
    app.state.policy = policy_service.PolicyHolder(on_refused=app.state.metrics.agreements_refused.inc)
    if not hasattr(app.state, "recorded_requests"):
        app.state.recorded_requests = None
    yield


def _out(row: AgreementVersion) -> AgreementOut:
    return AgreementOut.model_validate(
        {
            **row.content,
            "owner": row.owner,
            "version": row.version,
            "status": row.status,
            "author": row.author,
            "reason": row.reason,
            "created_at": row.created_at,
        }
    )


def _page(page: agreements.AgreementPage) -> AgreementPage:
    return AgreementPage(items=[_out(r) for r in page.rows], next_cursor=page.next_cursor)


@router.get("/v1/policies", response_model=AgreementPage)
async def list_agreements(
    session: SessionDep, principal: PolicyReader, cursor: str | None = None, limit: Limit = 50
) -> AgreementPage:
    """The current version of every agreement you may see (a data owner: its own; an auditor: all)."""
    return _page(await agreements.list_agreements(session, principal, cursor=cursor, limit=limit))


# An agreement body (``AgreementIn``, or ``SimulateIn`` for simulate, as /openapi.json
# declares them; see ``service.openapi.RAW_BODY_MODELS``) is read as sent and checked by the
# policy domain in one round, shape and catalog rules together, so every problem comes back
# in one 422 (FastAPI's own body check would answer the shape alone first).
AgreementBody = Annotated[dict[str, Any], Body()]


@router.post("/v1/policies", response_model=AgreementOut, status_code=201)
async def create_agreement(
    body: AgreementBody,
    request: Request,
    session: SessionDep,
    principal: PolicyWriter,
    refusals: RefusalWriterDep,
    response: Response,
) -> AgreementOut:
    """Grant a new agreement over your department's fields. 403 if it covers another
    department's fields, audited (a `policy-change` entry with decision `deny`); 409 if the
    id is taken; 422 lists every problem with the agreement at once."""
    row = await agreements.create_agreement(
        session, principal, body, audit=refusals, source=source_address(request)
    )
    response.headers["ETag"] = etag(row.version)
    response.headers["Location"] = f"/v1/policies/{row.agreement_id}"
    return _out(row)


@router.get("/v1/policies/{agreement_id}", response_model=AgreementOut)
async def get_agreement(
    agreement_id: AgreementId, session: SessionDep, principal: PolicyReader, response: Response
) -> AgreementOut:
    """The current version of one agreement; its ETag is the version number."""
    row = await agreements.get_agreement(session, principal, agreement_id)
    response.headers["ETag"] = etag(row.version)
    return _out(row)


@router.put("/v1/policies/{agreement_id}", response_model=AgreementOut)
async def replace_agreement(
    agreement_id: AgreementId,
    body: AgreementBody,
    request: Request,
    session: SessionDep,
    principal: PolicyWriter,
    refusals: RefusalWriterDep,
    response: Response,
    if_match: VersionIfMatchHeader = None,
) -> AgreementOut:
    """Replace an agreement with a new version. Needs `If-Match` with the version read (412 if stale).

    404 for an agreement your department does not have and 403 for another department's
    fields are audited (a `policy-change` entry with decision `deny`)."""
    expected = parse_if_match(if_match)
    row = await agreements.replace_agreement(
        session,
        principal,
        agreement_id,
        body,
        expected=expected,
        audit=refusals,
        source=source_address(request),
    )
    response.headers["ETag"] = etag(row.version)
    return _out(row)


@router.delete("/v1/policies/{agreement_id}", response_model=AgreementOut)
async def revoke_agreement(
    agreement_id: AgreementId,
    request: Request,
    session: SessionDep,
    principal: PolicyWriter,
    refusals: RefusalWriterDep,
    response: Response,
    reason: Annotated[str, Query(max_length=1000)] = "revoked",
    if_match: IfMatchHeader = None,
) -> AgreementOut:
    """Revoke an agreement: a new version with status `revoked`, in force from the next request.

    404 for an agreement your department does not have is audited (a `policy-change` entry
    with decision `deny`)."""
    expected = parse_if_match(if_match)
    row = await agreements.revoke_agreement(
        session,
        principal,
        agreement_id,
        expected=expected,
        reason=reason,
        audit=refusals,
        source=source_address(request),
    )
    response.headers["ETag"] = etag(row.version)
    return _out(row)


@router.get("/v1/policies/{agreement_id}/versions", response_model=AgreementPage)
async def list_versions(
    agreement_id: AgreementId,
    session: SessionDep,
    principal: PolicyReader,
    cursor: Annotated[str | None, Query(json_schema_extra=NON_EMPTY_CURSOR_SCHEMA)] = None,
    limit: Limit = 50,
) -> AgreementPage:
    """Every version of one agreement, oldest first, with author, time and reason."""
    return _page(await agreements.list_versions(session, principal, agreement_id, cursor=cursor, limit=limit))


@router.post("/v1/decisions/explain", response_model=ExplainOut)
async def explain(
    body: ExplainIn,
    request: Request,
    session: SessionDep,
    principal: Explainer,
    refusals: RefusalWriterDep,
) -> ExplainOut:
    """Why can (or can't) a consumer do an action on fields for a purpose, field by field.

    Each decision names the agreement and version that decided it, and the near misses:
    agreements that would apply but for the purpose, the dates, a case reference or a
    condition. A data owner may ask about its own fields or about its own department
    as consumer; 403 otherwise, audited (an `explain` entry with decision `deny`).

    An agreement with basis ``consent`` or ``objectable`` is decided with the consents and
    objections of ``citizen_id``, or without any when it is left out: the reason is then
    ``consent-required`` (or ``objected``), and the near miss names the agreement. An
    answer decided with a citizen's choices is audited (action ``explain``).

    With ``case_ref``, a refusal the citizen's access log holds back without citing an
    agreement (the field's owner gave the consumer no delayed-disclosure agreement, but
    another owner did) says how long it is held at most in ``held_for``, an ISO 8601
    duration such as ``P365D``; its agreement is not named.
    """
    explained = await agreements.explain(
        session,
        principal,
        request.app.state.policy,
        consumer=body.consumer,
        action=body.action,
        fields=list(body.fields),
        context=agreements.now_context(body.purpose, body.case_ref, body.citizen_status),
        audit=refusals,
        citizen_id=body.citizen_id,
        source=source_address(request),
    )
    decisions: dict[str, DecisionOut] = {}
    for name, e in explained.items():
        record = agreements.explanation_record(e)
        decisions[name] = DecisionOut(
            effect=record["effect"],
            agreement=record["agreement"],
            version=record["version"],
            reason=record["reason"],
            legal_basis=record["legal_basis"],
            allowed_claims=record["allowed_claims"],
            held_for=record["held_for"],
            near_misses=[NearMissOut(**m) for m in record["near_misses"]],
        )
    return ExplainOut(decisions=decisions)


@router.post("/v1/policies/simulate", response_model=SimulateOut)
async def simulate_change(
    body: AgreementBody,
    request: Request,
    session: SessionDep,
    principal: Simulator,
    refusals: RefusalWriterDep,
) -> SimulateOut:
    """Replay recorded requests against a draft (live agreements plus `upsert`, minus `remove`).

    Reports every decision that would change, counted by consumer, field, action and
    purpose. Live policy is never changed. The body (`SimulateIn`) is checked in one
    round: every problem with it and with each draft is listed at once. A draft over
    another department's fields is 403, audited (a `policy-change` entry with decision
    `deny`).

    Consent-based and objectable agreements are replayed with each citizen's consents and
    objections as they stand now; `withheld_by_choice` counts the field decisions the
    draft withholds for lack of consent (`consent-required`) or for an objection.

    The replay reads the audit log, so it is audited as an audit query (`audit-query`).

    One simulation replays at most `TELLONCE_SIMULATE_MAX_ENTRIES` audited requests for the
    fields the draft changes (100,000 unless configured). A window holding more is refused
    with 422 `simulation-window-too-large` before anything is replayed; its `detail` and
    its error at `["body", "since"]` name the earliest `since` from which it fits.
    """
    result = await agreements.simulate_draft(
        session,
        principal,
        request.app.state.policy,
        request.app.state.recorded_requests,
        body,
        limit=request.app.state.settings.simulate_max_entries,
        audit=refusals,
        source=source_address(request),
    )
    changes = [
        ChangeOut.model_validate(
            {
                "consumer": key[0],
                "field": key[1],
                "action": key[2],
                "purpose": key[3],
                "before": key[4],
                "after": key[5],
                "count": count,
            }
        )
        for key, count in sorted(result.changes.items())
    ]
    return SimulateOut(
        evaluated=result.evaluated,
        changed=result.changed,
        changes=changes,
        withheld_by_choice=dict(result.withheld_by_choice),
    )
