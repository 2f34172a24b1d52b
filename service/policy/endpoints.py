"""Agreements over HTTP for data owners and auditors, plus explain and simulate."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response

from service.auth.dependencies import Principal, require
from service.catalog.schemas import Catalog
from service.db import SessionDep, utcnow
from service.errors import BadRequest, ValidationFailed
from service.policy import repository
from service.policy import service as policy_service
from service.policy.engine import RequestContext
from service.policy.errors import (
    AgreementExists,
    AgreementNotFound,
    AgreementRevoked,
    AgreementVersionRequired,
    NotFieldOwner,
    StaleAgreement,
)
from service.policy.loader import check_agreement
from service.policy.models import AgreementVersion
from service.policy.schemas import (
    AgreementIn,
    AgreementOut,
    AgreementPage,
    AgreementSpec,
    ChangeOut,
    DecisionOut,
    ExplainIn,
    ExplainOut,
    NearMissOut,
    SimulateIn,
    SimulateOut,
)
from service.policy.simulate import draft_agreements, draft_policy, simulate

router = APIRouter(tags=["policies"])

PolicyReader = Annotated[Principal, Depends(require("policies:read"))]
PolicyWriter = Annotated[Principal, Depends(require("policies:write"))]
Simulator = Annotated[Principal, Depends(require("policies:simulate"))]
Explainer = Annotated[Principal, Depends(require("decisions:explain"))]
Limit = Annotated[int, Query(ge=1, le=200)]


@asynccontextmanager
async def policy_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """This app's compiled-policy holder, and the request source simulate replays."""
    app.state.policy = policy_service.PolicyHolder()
    if not hasattr(app.state, "recorded_requests"):
        app.state.recorded_requests = None
    yield


def _sees_all(principal: Principal) -> bool:
    # Auditors read every agreement; a data owner only its own department's.
    return "audit:read" in principal.scopes


def _author(principal: Principal) -> str:
    if principal.on_behalf_of:
        return f"{principal.client_id} for {principal.on_behalf_of}"
    return principal.client_id


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


def _etag(row: AgreementVersion) -> str:
    return f'"{row.version}"'


def _encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("The cursor is not valid.") from None


async def _visible(session: SessionDep, agreement_id: str, principal: Principal) -> AgreementVersion:
    row = await repository.current_version(session, agreement_id)
    # Another owner's agreement is reported as missing: its existence is not ours to tell.
    if row is None or (not _sees_all(principal) and row.owner != principal.department):
        raise AgreementNotFound(f"No agreement {agreement_id!r}.")
    return row


def _validate(spec: AgreementSpec, owner: str, catalog: Catalog, prefix: tuple[str | int, ...]) -> None:
    """403 when the agreement covers another department's fields, 422 for anything else."""
    owners = catalog.field_owners
    foreign = sorted({owners[f] for f in spec.fields if f in owners and owners[f] != owner})
    if foreign:
        raise NotFieldOwner(
            f"{owner} may grant only its own fields; this covers fields of {', '.join(foreign)}."
        )
    problems = check_agreement(spec, owner, catalog)
    if problems:
        raise ValidationFailed(
            "The agreement does not fit the catalog.",
            errors=[{"loc": ["body", *prefix, *loc], "msg": message} for loc, message in problems],
        )


def _expected_version(if_match: str | None, *, required: bool) -> int | None:
    if if_match is None:
        if required:
            raise AgreementVersionRequired("Send If-Match with the ETag of the version you read.")
        return None
    value = if_match.strip()
    value = value.removeprefix("W/").strip('"')
    try:
        return int(value)
    except ValueError:
        raise StaleAgreement("If-Match does not name a version of this agreement.") from None


@router.get("/v1/policies", response_model=AgreementPage)
async def list_agreements(
    session: SessionDep, principal: PolicyReader, cursor: str | None = None, limit: Limit = 50
) -> AgreementPage:
    """The current version of every agreement you may see (a data owner: its own; an auditor: all)."""
    owner = None if _sees_all(principal) else principal.department
    rows = await repository.page_current(session, owner=owner, after=_decode_cursor(cursor), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].agreement_id) if more else None
    return AgreementPage(items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.post("/v1/policies", response_model=AgreementOut, status_code=201)
async def create_agreement(
    body: AgreementIn, session: SessionDep, principal: PolicyWriter, response: Response
) -> AgreementOut:
    """Grant a new agreement over your department's fields. 409 if the id is taken."""
    spec = body.spec()
    catalog = await policy_service.live_catalog(session)
    _validate(spec, principal.department, catalog, ())
    if await repository.current_version(session, spec.id) is not None:
        raise AgreementExists(f"An agreement {spec.id!r} already exists; ids are unique across the catalog.")
    row = await policy_service.put_agreement(
        session, None, spec, owner=principal.department, author=_author(principal), reason=body.reason
    )
    response.headers["ETag"] = _etag(row)
    response.headers["Location"] = f"/v1/policies/{row.agreement_id}"
    return _out(row)


@router.get("/v1/policies/{agreement_id}", response_model=AgreementOut)
async def get_agreement(
    agreement_id: str, session: SessionDep, principal: PolicyReader, response: Response
) -> AgreementOut:
    """The current version of one agreement; its ETag is the version number."""
    row = await _visible(session, agreement_id, principal)
    response.headers["ETag"] = _etag(row)
    return _out(row)


@router.put("/v1/policies/{agreement_id}", response_model=AgreementOut)
async def replace_agreement(
    agreement_id: str,
    body: AgreementIn,
    session: SessionDep,
    principal: PolicyWriter,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> AgreementOut:
    """Replace an agreement with a new version. Needs `If-Match` with the version read (412 if stale)."""
    row = await _visible(session, agreement_id, principal)
    if row.owner != principal.department:
        raise NotFieldOwner("Only the owning department changes its agreements.")
    expected = _expected_version(if_match, required=True)
    if expected != row.version:
        raise StaleAgreement(f"Agreement {agreement_id!r} is at version {row.version}; read it again.")
    spec = body.spec()
    if spec.id != agreement_id:
        raise ValidationFailed(
            "The body's id must be the agreement's id.",
            errors=[{"loc": ["body", "id"], "msg": "id mismatch"}],
        )
    catalog = await policy_service.live_catalog(session)
    _validate(spec, principal.department, catalog, ())
    new = await policy_service.put_agreement(
        session, row, spec, owner=principal.department, author=_author(principal), reason=body.reason
    )
    response.headers["ETag"] = _etag(new)
    return _out(new)


@router.delete("/v1/policies/{agreement_id}", response_model=AgreementOut)
async def revoke_agreement(
    agreement_id: str,
    session: SessionDep,
    principal: PolicyWriter,
    response: Response,
    reason: Annotated[str, Query(max_length=1000)] = "revoked",
    if_match: Annotated[str | None, Header()] = None,
) -> AgreementOut:
    """Revoke an agreement: a new version with status `revoked`, in force from the next request."""
    row = await _visible(session, agreement_id, principal)
    if row.owner != principal.department:
        raise NotFieldOwner("Only the owning department revokes its agreements.")
    expected = _expected_version(if_match, required=False)
    if expected is not None and expected != row.version:
        raise StaleAgreement(f"Agreement {agreement_id!r} is at version {row.version}; read it again.")
    if row.status == "revoked":
        raise AgreementRevoked(f"Agreement {agreement_id!r} is already revoked.")
    new = await policy_service.revoke(session, row, author=_author(principal), reason=reason)
    response.headers["ETag"] = _etag(new)
    return _out(new)


@router.get("/v1/policies/{agreement_id}/versions", response_model=AgreementPage)
async def list_versions(
    agreement_id: str,
    session: SessionDep,
    principal: PolicyReader,
    cursor: str | None = None,
    limit: Limit = 50,
) -> AgreementPage:
    """Every version of one agreement, oldest first, with author, time and reason."""
    await _visible(session, agreement_id, principal)
    after_text = _decode_cursor(cursor)
    after = None
    if after_text is not None:
        if not after_text.isdigit():
            raise BadRequest("The cursor is not valid.")
        after = int(after_text)
    rows = await repository.page_versions(session, agreement_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(str(rows[-1].version)) if more else None
    return AgreementPage(items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.post("/v1/decisions/explain", response_model=ExplainOut)
async def explain(body: ExplainIn, request: Request, session: SessionDep, principal: Explainer) -> ExplainOut:
    """Why can (or can't) a consumer do an action on fields for a purpose, field by field.

    Each decision names the agreement and version that decided it, and the near misses:
    agreements that would apply but for the purpose, the dates, a case reference or a
    condition. A data owner may ask about its own fields or about its own department
    as consumer.
    """
    if not _sees_all(principal) and body.consumer != principal.department:
        catalog = await policy_service.live_catalog(session)
        owners = catalog.field_owners
        if any(owners.get(f) != principal.department for f in body.fields):
            raise NotFieldOwner(
                "A data owner explains decisions on its own fields or for its own department."
            )
    conn = await session.connection()
    policy = await policy_service.current_policy(conn, request.app.state.policy)
    context = RequestContext(body.purpose, body.case_ref, utcnow(), body.citizen_status)
    explained = policy.explain(body.consumer, body.action, body.fields, context)
    return ExplainOut(
        decisions={
            name: DecisionOut(
                effect=e.decision.effect,
                agreement=e.decision.agreement,
                version=e.decision.version,
                reason=e.decision.reason,
                legal_basis=e.decision.legal_basis,
                allowed_claims=e.decision.to_record()["allowed_claims"],
                near_misses=[NearMissOut(**m.to_record()) for m in e.near_misses],
            )
            for name, e in explained.items()
        }
    )


@router.post("/v1/policies/simulate", response_model=SimulateOut)
async def simulate_change(
    body: SimulateIn, request: Request, session: SessionDep, principal: Simulator
) -> SimulateOut:
    """Replay recorded requests against a draft (live agreements plus `upsert`, minus `remove`).

    Reports every decision that would change, counted by consumer, field, action and
    purpose. Live policy is never changed.
    """
    catalog = await policy_service.live_catalog(session)
    owners = catalog.field_owners
    upserts = []
    for index, spec in enumerate(body.upsert):
        if _sees_all(principal):
            owner = next((owners[f] for f in spec.fields if f in owners), principal.department)
        else:
            owner = principal.department
        _validate(spec, owner, catalog, ("upsert", index))
        current = await repository.current_version(session, spec.id)
        if current is not None and current.owner != owner:
            raise AgreementExists(f"Agreement id {spec.id!r} belongs to another owner.")
        upserts.append(spec.to_engine(owner, (current.version + 1) if current else 1))
    for agreement_id in body.remove:
        await _visible(session, agreement_id, principal)
    conn = await session.connection()
    live = await policy_service.current_policy(conn, request.app.state.policy)
    draft = draft_policy(live, draft_agreements(live.agreements, upserts, body.remove))
    result = await simulate(live, draft, request.app.state.recorded_requests, body.since)
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
    return SimulateOut(evaluated=result.evaluated, changed=result.changed, changes=changes)
