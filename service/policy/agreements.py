"""Agreements as data owners and auditors see and change them: the rules the policy API
and the console both call.

Each function takes the caller and the request's session. Visibility comes from
``service.auth.permissions``: another owner's agreement is reported missing (its
existence is not the caller's to know), and only the owning department changes its own.
The change itself (a new immutable version, its audit entry, the epoch bump) is
``service.policy.service``'s.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import permissions
from service.auth.dependencies import Principal
from service.catalog.schemas import Catalog
from service.db import utcnow
from service.errors import BadRequest, ValidationFailed
from service.policy import repository
from service.policy import service as policy_service
from service.policy.checks import check_body
from service.policy.engine import Explanation, RequestContext
from service.policy.errors import (
    AgreementExists,
    AgreementNotFound,
    AgreementRevoked,
    AgreementVersionRequired,
    NotFieldOwner,
    StaleAgreement,
)
from service.policy.loader import Problem, check_agreement
from service.policy.models import AgreementVersion
from service.policy.schemas import AgreementSpec
from service.policy.signing import signing_text
from service.policy.simulate import (
    RecordedRequestSource,
    SimulationResult,
    draft_agreements,
    draft_policy,
    simulate,
)


@dataclass(frozen=True)
class AgreementPage:
    rows: list[AgreementVersion]
    next_cursor: str | None


def author(principal: Principal) -> str:
    """The author a new version records: the client, and the officer it acted for."""
    if principal.on_behalf_of:
        return f"{principal.client_id} for {principal.on_behalf_of}"
    return principal.client_id


def etag(row: AgreementVersion) -> str:
    return f'"{row.version}"'


def expected_version(if_match: str | None) -> int | None:
    """The version an ``If-Match`` names, or ``None`` without one; 412 when unreadable."""
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    try:
        return int(value)
    except ValueError:
        raise StaleAgreement("If-Match does not name a version of this agreement.") from None


def _encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("The cursor is not valid.") from None


def _refuse_foreign(fields: object, owner: str, catalog: Catalog) -> None:
    """403 when the agreement covers another department's fields (named as sent)."""
    owners = catalog.field_owners
    named = [f for f in fields if isinstance(f, str)] if isinstance(fields, list) else []
    foreign = sorted({owners[f] for f in named if f in owners and owners[f] != owner})
    if foreign:
        raise NotFieldOwner(
            f"{owner} may grant only its own fields; this covers fields of {', '.join(foreign)}."
        )


def _refuse_problems(problems: list[Problem], prefix: tuple[str | int, ...] = ()) -> None:
    if problems:
        raise ValidationFailed(
            "The agreement has problems; each is listed in errors.",
            errors=[{"loc": ["body", *prefix, *loc], "msg": message} for loc, message in problems],
        )


async def _accepted(
    session: AsyncSession, principal: Principal, body: Mapping[str, Any], agreement_id: str | None = None
) -> tuple[AgreementSpec, str]:
    """The submitted agreement and reason: 403 for another department's fields, 422 with
    every other problem."""
    catalog = await policy_service.live_catalog(session)
    _refuse_foreign(body.get("fields"), principal.department, catalog)
    checked = check_body(body, principal.department, catalog, agreement_id=agreement_id)
    _refuse_problems(checked.problems)
    if checked.spec is None:  # never: a body without a spec has problems
        raise ValidationFailed("The agreement could not be read.")
    return checked.spec, checked.reason


def text_to_sign(spec: AgreementSpec, owner: str, catalog: Catalog) -> str | None:
    """The exact text ``owner`` signs for ``spec`` to be stored (its signature removed, the
    owner set); ``None`` when the owner has no signing key and stores agreements unsigned."""
    if owner not in catalog.signing_keys:
        return None
    return signing_text(spec.content(), owner)


def validate(spec: AgreementSpec, owner: str, catalog: Catalog, prefix: tuple[str | int, ...] = ()) -> None:
    """A draft for simulation: 403 for another department's fields, 422 for anything else
    (unsigned drafts are fine: nothing is stored)."""
    _refuse_foreign(list(spec.fields), owner, catalog)
    _refuse_problems(check_agreement(spec, owner, catalog, signed=False), prefix)


async def id_taken(session: AsyncSession, agreement_id: str) -> bool:
    """Agreement ids are unique across the catalog, whoever owns them."""
    return await repository.current_version(session, agreement_id) is not None


# --- reading --------------------------------------------------------------------------


async def get_agreement(session: AsyncSession, principal: Principal, agreement_id: str) -> AgreementVersion:
    """The current version, if ``principal`` may see it; 404 otherwise."""
    row = await repository.current_version(session, agreement_id)
    if row is None or not permissions.sees_agreement(principal, row.owner):
        raise AgreementNotFound(f"No agreement {agreement_id!r}.")
    return row


async def list_agreements(
    session: AsyncSession, principal: Principal, *, cursor: str | None, limit: int
) -> AgreementPage:
    """The current version of every agreement ``principal`` may see, by id."""
    rows = await repository.page_current(
        session, owner=permissions.owner_scope(principal), after=_decode_cursor(cursor), limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return AgreementPage(rows, _encode_cursor(rows[-1].agreement_id) if more else None)


async def list_versions(
    session: AsyncSession, principal: Principal, agreement_id: str, *, cursor: str | None, limit: int
) -> AgreementPage:
    """Every version of one visible agreement, oldest first."""
    await get_agreement(session, principal, agreement_id)
    after_text = _decode_cursor(cursor)
    after = None
    if after_text is not None:
        if not after_text.isdigit():
            raise BadRequest("The cursor is not valid.")
        after = int(after_text)
    rows = await repository.page_versions(session, agreement_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AgreementPage(rows, _encode_cursor(str(rows[-1].version)) if more else None)


# --- changing -------------------------------------------------------------------------


async def create_agreement(
    session: AsyncSession, principal: Principal, body: Mapping[str, Any]
) -> AgreementVersion:
    """A new agreement over the caller's fields from ``body`` (an agreement entry and the
    ``reason`` for it): 403 for another's fields, 422 listing every problem, 409 if the id
    is taken."""
    spec, reason = await _accepted(session, principal, body)
    if await id_taken(session, spec.id):
        raise AgreementExists(f"An agreement {spec.id!r} already exists; ids are unique across the catalog.")
    return await policy_service.put_agreement(
        session, None, spec, owner=principal.department, author=author(principal), reason=reason
    )


async def _changeable(
    session: AsyncSession, principal: Principal, agreement_id: str, expected: int | None, verb: str
) -> AgreementVersion:
    row = await get_agreement(session, principal, agreement_id)
    if not permissions.changes_agreement(principal, row.owner):
        raise NotFieldOwner(f"Only the owning department {verb} its agreements.")
    if expected is not None and expected != row.version:
        raise StaleAgreement(f"Agreement {agreement_id!r} is at version {row.version}; read it again.")
    return row


async def replace_agreement(
    session: AsyncSession,
    principal: Principal,
    agreement_id: str,
    body: Mapping[str, Any],
    *,
    expected: int | None,
) -> AgreementVersion:
    """A new version of one of the caller's agreements from ``body`` (as for a create; its
    id must be ``agreement_id``), if ``expected`` names the current version (428 without
    it, 412 if stale). A revoked agreement comes back into force this way."""
    row = await _changeable(session, principal, agreement_id, expected, "changes")
    if expected is None:
        raise AgreementVersionRequired("Send If-Match with the ETag of the version you read.")
    spec, reason = await _accepted(session, principal, body, agreement_id)
    return await policy_service.put_agreement(
        session,
        row,
        spec,
        owner=principal.department,
        author=author(principal),
        reason=reason,
    )


async def revoke_agreement(
    session: AsyncSession, principal: Principal, agreement_id: str, *, expected: int | None, reason: str
) -> AgreementVersion:
    """A new version with status ``revoked``, in force from the next request; 409 if it
    already is."""
    row = await _changeable(session, principal, agreement_id, expected, "revokes")
    if row.status == "revoked":
        raise AgreementRevoked(f"Agreement {agreement_id!r} is already revoked.")
    return await policy_service.revoke(session, row, author=author(principal), reason=reason)


# --- explain and simulate ---------------------------------------------------------------


async def explain(
    session: AsyncSession,
    principal: Principal,
    holder: policy_service.PolicyHolder,
    *,
    consumer: str,
    action: str,
    fields: list[str],
    context: RequestContext,
) -> dict[str, Explanation]:
    """Each field's decision with its near misses. A data owner asks about its own fields,
    or about its own department as consumer."""
    if not permissions.sees_all(principal) and consumer != principal.department:
        owners = (await policy_service.live_catalog(session)).field_owners
        if not permissions.may_explain(principal, consumer, [owners.get(f) for f in fields]):
            raise NotFieldOwner(
                "A data owner explains decisions on its own fields or for its own department."
            )
    policy = await policy_service.current_policy(await session.connection(), holder)
    return policy.explain(consumer, action, fields, context)


async def simulate_draft(
    session: AsyncSession,
    principal: Principal,
    holder: policy_service.PolicyHolder,
    recorded: RecordedRequestSource | None,
    *,
    upsert: list[AgreementSpec],
    remove: list[str],
    since: datetime | None = None,
) -> SimulationResult:
    """Replay recorded requests against the live agreements plus ``upsert`` minus ``remove``.

    Each upsert is validated as a create would be, under its owner: the caller's
    department, or for an auditor the owner of its fields. Live policy is never changed.
    """
    catalog = await policy_service.live_catalog(session)
    owners = catalog.field_owners
    drafts = []
    for index, spec in enumerate(upsert):
        owner = principal.department
        if permissions.sees_all(principal):
            owner = next((owners[f] for f in spec.fields if f in owners), principal.department)
        validate(spec, owner, catalog, ("upsert", index))
        current = await repository.current_version(session, spec.id)
        if current is not None and current.owner != owner:
            raise AgreementExists(f"Agreement id {spec.id!r} belongs to another owner.")
        drafts.append(spec.to_engine(owner, (current.version + 1) if current else 1))
    for agreement_id in remove:
        await get_agreement(session, principal, agreement_id)
    live = await policy_service.current_policy(await session.connection(), holder)
    draft = draft_policy(live, draft_agreements(live.agreements, drafts, remove))
    return await simulate(live, draft, recorded, since)


def now_context(purpose: str, case_ref: str | None, citizen_status: str | None) -> RequestContext:
    """The request context of an explain asked now."""
    return RequestContext(purpose, case_ref, utcnow(), citizen_status)
