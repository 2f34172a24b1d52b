"""Consents and objections over HTTP, for the citizen portal: HTTP only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request, Response, status

from service.auth.dependencies import Principal, require
from service.auth.facts import source_address
from service.catalog.schemas import IDENTIFIER_PATTERN
from service.consent import service as consent_service
from service.consent.schemas import (
    ConsentChange,
    ConsentIn,
    ConsentOut,
    ConsentPage,
    ObjectionOut,
    ObjectionPage,
)
from service.cursors import NON_EMPTY_CURSOR_SCHEMA
from service.db import SessionDep
from service.events import service as events_service
from service.records.schemas import CITIZEN_ID_PATTERN

router = APIRouter(prefix="/v1/citizens", tags=["consent"])

Portal = Annotated[Principal, Depends(require("citizens:consent"))]
# Path ids in the forms the service issues them; anything else is refused (422) before it
# reaches the store, which on PostgreSQL cannot even take a NUL as text.
CitizenPath = Annotated[
    str, Path(pattern=CITIZEN_ID_PATTERN, max_length=36, description="The citizen's pseudonymous id.")
]
ConsentPath = Annotated[
    str, Path(pattern=CITIZEN_ID_PATTERN, max_length=36, description="The consent's id (a lower-case UUID).")
]
AgreementPath = Annotated[
    str, Path(pattern=IDENTIFIER_PATTERN, max_length=63, description="The agreement's id.")
]


def _actor(caller: Principal, request: Request) -> consent_service.Actor:
    return consent_service.Actor(caller, source_address(request))


@router.post("/{citizen_id}/consents", status_code=status.HTTP_201_CREATED)
async def give_consent(
    citizen_id: CitizenPath,
    body: ConsentIn,
    caller: Portal,
    request: Request,
    session: SessionDep,
    after_commit: BackgroundTasks,
) -> ConsentOut:
    """The citizen consents to a consent-based agreement. The consumer may read the
    agreement's fields of this citizen from its very next request until the consent is
    paused, revoked or expires. ``signature`` is a compact JWS of the consent's terms,
    signed with a key of ``/.well-known/evidence-keys.json``: keep it as evidence."""
    runtime = consent_service.runtime_of(request.app.state)
    given = await consent_service.grant(session, runtime, _actor(caller, request), citizen_id, body)
    # Once committed (the session ends before background tasks run): wake this process's
    # feeds and dispatcher for the consent.changed event.
    after_commit.add_task(events_service.notify, request.app.state)
    return given


@router.patch("/{citizen_id}/consents/{consent_id}")
async def change_consent(
    citizen_id: CitizenPath,
    consent_id: ConsentPath,
    body: ConsentChange,
    caller: Portal,
    request: Request,
    session: SessionDep,
    after_commit: BackgroundTasks,
) -> ConsentOut:
    """Pause (``paused``), resume (``active``) or revoke (``revoked``, final) a consent;
    the next read by the consumer follows it. 409 for a revoked or expired consent."""
    runtime = consent_service.runtime_of(request.app.state)
    changed = await consent_service.change(
        session, runtime, _actor(caller, request), citizen_id, consent_id, body.status
    )
    after_commit.add_task(events_service.notify, request.app.state)
    return changed


@router.get("/{citizen_id}/consents")
async def list_consents(
    citizen_id: CitizenPath,
    caller: Portal,
    request: Request,
    session: SessionDep,
    cursor: str | None = Query(None, max_length=200, json_schema_extra=NON_EMPTY_CURSOR_SCHEMA),
    limit: int = Query(100, ge=1, le=1000),
) -> ConsentPage:
    """The citizen's consents, oldest first, each with its status now. Audited
    (``consent-list``)."""
    runtime = consent_service.runtime_of(request.app.state)
    return await consent_service.list_consents(
        session, runtime, _actor(caller, request), citizen_id, cursor=cursor, limit=limit
    )


@router.post("/{citizen_id}/objections/{agreement}", status_code=status.HTTP_201_CREATED)
async def object_to_agreement(
    citizen_id: CitizenPath, agreement: AgreementPath, caller: Portal, request: Request, session: SessionDep
) -> ObjectionOut:
    """The citizen objects to an objectable agreement: it releases nothing of this
    citizen's from the next request on. 422 for an agreement that is not objectable."""
    runtime = consent_service.runtime_of(request.app.state)
    return await consent_service.object_to(session, runtime, _actor(caller, request), citizen_id, agreement)


@router.delete("/{citizen_id}/objections/{agreement}", status_code=status.HTTP_204_NO_CONTENT)
async def withdraw_objection(
    citizen_id: CitizenPath, agreement: AgreementPath, caller: Portal, request: Request, session: SessionDep
) -> Response:
    """The citizen withdraws an objection; the agreement applies again from the next request."""
    runtime = consent_service.runtime_of(request.app.state)
    await consent_service.withdraw_objection(session, runtime, _actor(caller, request), citizen_id, agreement)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{citizen_id}/objections")
async def list_objections(
    citizen_id: CitizenPath,
    caller: Portal,
    request: Request,
    session: SessionDep,
) -> ObjectionPage:
    """The agreements the citizen has objected to. Audited (``objection-list``)."""
    runtime = consent_service.runtime_of(request.app.state)
    items = await consent_service.list_objections(session, runtime, _actor(caller, request), citizen_id)
    return ObjectionPage(items=items)
