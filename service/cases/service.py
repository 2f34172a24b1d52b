"""Closing a case: from then on the citizen sees every access made under it.

A case is opened by the first access that needs it (``RecordsService.open_cases``, on the
read path, through ``repository.open_case``) and closed only by its own department.
Closing is audited in its own transaction, and a refusal before it is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit.entries import case_entry
from service.audit.writer import append_in_transaction
from service.auth.facts import RequestFacts
from service.cases import repository
from service.cases.errors import CaseNotFound
from service.cases.schemas import CaseOut
from service.records.service import AuditSink

Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


async def close(
    connect: Connect, begin: Connect, audit: AuditSink, facts: RequestFacts, case_ref: str, now: datetime
) -> CaseOut:
    """Close the caller's department's case ``case_ref``; 404 for a reference it never
    used under a delayed-disclosure agreement (another department's case included: a
    reference is its department's own, and another's is not confirmed). Closing a closed
    case changes nothing and answers the same."""
    async with connect() as conn:
        found = await repository.get_case(conn, facts.department, case_ref)
    if found is None:
        # The refusal is durable in the log before it is answered.
        await audit.append(case_entry(facts, case_ref, closed=False, time=now))
        raise CaseNotFound("Your department has no case with that reference.")
    async with begin() as conn:
        closed = await repository.close_case(conn, facts.department, case_ref, now, facts.principal.client_id)
        found = await repository.get_case(conn, facts.department, case_ref)
        if closed:
            # In the closing's own transaction: no closing is unaccounted for, and no entry
            # tells of a closing that did not commit (503 and still open if it cannot be
            # written). A repeat closing changed nothing, so it tells of nothing.
            await append_in_transaction(conn, case_entry(facts, case_ref, closed=True, time=now))
    if found is None:  # cases are never deleted; this is only for the type checker
        raise CaseNotFound("Your department has no case with that reference.")
    return CaseOut(
        department=found.department,
        case_ref=found.case_ref,
        opened_at=found.opened_at,
        closed_at=found.closed_at,
    )
