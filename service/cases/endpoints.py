"""``POST /v1/cases/{case_ref}/close``: HTTP only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from service.audit.writer import get_audit_writer
from service.auth.facts import CASE_REF_SCHEMA, RequestFacts, check_case_ref, facts
from service.cases import service as cases_service
from service.cases.schemas import CaseOut
from service.db import Database
from service.events import service as events_service

router = APIRouter(prefix="/v1/cases", tags=["cases"])

Consumer = Annotated[RequestFacts, Depends(facts("cases:close", case_ref=False))]


@router.post("/{case_ref:path}/close", response_model=CaseOut)
async def close_case(
    case_ref: Annotated[
        str,
        Path(
            max_length=300,
            description="The case reference, as sent in X-Case-Ref.",
            json_schema_extra=CASE_REF_SCHEMA,
        ),
    ],
    consumer: Consumer,
    request: Request,
) -> CaseOut:
    """Close one of your department's cases. Accesses made under an agreement with
    `disclosure: after-case-closed` are kept from the citizen's access log and access
    notices until their case is closed (or the agreement's `max_delay` passes); from now on
    the citizen sees every access made under this case, with its original time.

    404 for a reference your department never sent under such an agreement (another
    department's case is not yours to close). Closing a closed case changes nothing."""
    check_case_ref(case_ref, ["path", "case_ref"])
    database: Database = request.app.state.database
    closed = await cases_service.close(
        database.engine.connect,
        database.engine.begin,
        await get_audit_writer(request),
        consumer,
        case_ref,
        request.app.state.clock(),
    )
    # The dispatcher in this process releases the case's held notices now, not at its next poll.
    events_service.notify(request.app.state)
    return closed
