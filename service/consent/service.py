"""The rules of consents and objections. The API and the console both call these.

A consent is given to one consent-based agreement: its terms (the agreement's consumer,
purpose, fields and actions, an optional expiry and data life) are fixed and signed when it is
made; afterwards only its status moves: ``active`` <-> ``paused``, either -> ``revoked``
(final), and ``expired`` once its expiry passes (judged at read time against the
service's clock, so nothing has to run for it). An objection stands against one
objectable agreement until withdrawn.

Every change is audited in the same transaction, and a refused change leaves nothing
written behind it (the console renders a refusal on a transaction that then commits).
The access path reads these tables on every request that an agreement with a citizen's
choice decides (``RecordsService.contexts_with_choices``), so a change applies to the next
request in every process without any cache to invalidate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.audit import entries as audit_entries
from service.audit import writer as audit_writer
from service.audit.schemas import Action as AuditAction
from service.audit.schemas import canonical_json
from service.auth.dependencies import Principal
from service.auth.keys import SigningKeys
from service.consent import artefact, repository
from service.consent.errors import (
    AgreementNotFound,
    ConsentChanged,
    ConsentExists,
    ConsentFinal,
    ConsentNotFound,
    NotConsentBased,
    NotObjectable,
    ObjectionExists,
    ObjectionNotFound,
)
from service.consent.repository import ConsentRow
from service.consent.schemas import ConsentIn, ConsentOut, ConsentPage, ConsentStatus, ObjectionOut
from service.cursors import decode_text, encode_text
from service.errors import NotFound, ValidationFailed, bad_cursor
from service.events import service as events_service
from service.policy.engine import Agreement
from service.policy.service import PolicyHolder
from service.records import public as records_public

NO_SUCH_CITIZEN = "No such citizen."


@dataclass(frozen=True)
class ConsentRuntime:
    """What the rules need from the running app: the live agreements, the key consents
    are signed with and its issuer, and the clock expiry is judged by."""

    policy: PolicyHolder
    keys: SigningKeys
    issuer: str
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class Actor:
    """Who changes a citizen's choices (the citizen portal's client, or a console user)
    and from where: what the audit entry records."""

    principal: Principal
    source: str | None


def status_at(row: ConsentRow, now: datetime) -> ConsentStatus:
    """The consent's status now: its stored one, or ``expired`` once its expiry passed."""
    if row.status == "revoked":
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "paused" if row.status == "paused" else "active"


def consent_out(row: ConsentRow, now: datetime) -> ConsentOut:
    return ConsentOut(
        id=row.id,
        citizen_id=row.citizen_id,
        agreement=row.agreement,
        consumer=row.consumer,
        purpose=row.purpose,
        fields=list(row.fields),
        actions=list(row.actions or ()),
        status=status_at(row, now),
        created_at=row.created_at,
        expires_at=row.expires_at,
        data_life=row.data_life,
        signature=row.signature,
    )


async def _known_citizen(conn: AsyncConnection, citizen_id: str) -> None:
    """404 for an unknown or erased citizen (an erased one has nothing left to consent to)."""
    statuses = await records_public.citizen_statuses(conn, [citizen_id]) if len(citizen_id) <= 36 else {}
    if statuses.get(citizen_id) in (None, "erased"):
        raise NotFound(NO_SUCH_CITIZEN)


async def _agreement(
    conn: AsyncConnection, runtime: ConsentRuntime, agreement_id: str, loc: tuple[str, str]
) -> Agreement:
    """The live permit ``agreement_id``; 422 naming ``loc`` (where the id was sent) if none."""
    policy = await runtime.policy.current(conn)
    for agreement in policy.agreements:
        if agreement.id == agreement_id and agreement.effect == "permit":
            return agreement
    raise AgreementNotFound(
        f"No live agreement {agreement_id!r}.", errors=[{"loc": list(loc), "msg": "unknown agreement"}]
    )


async def _audit(
    conn: AsyncConnection,
    actor: Actor,
    action: AuditAction,
    citizen_id: str,
    agreement: Agreement,
    change: str,
    *,
    purpose: str | None = None,
    document: str | None = None,
) -> None:
    entry = audit_entries.choice_entry(
        actor.principal,
        action,
        source=actor.source,
        citizen_id=citizen_id,
        owner=agreement.owner,
        consumer=agreement.consumer,
        agreement=agreement.id,
        version=agreement.version,
        change=change,
        purpose=purpose,
        document=document,
    )
    await audit_writer.append_in_transaction(conn, entry)


# --- consents ---------------------------------------------------------------------------


async def grant(
    session: AsyncSession, runtime: ConsentRuntime, actor: Actor, citizen_id: str, body: ConsentIn
) -> ConsentOut:
    """A new, active consent of the citizen to ``body.agreement``; signed and audited.

    422 when the agreement is unknown or not consent-based, or the expiry has passed;
    409 while the citizen holds another consent to it that is neither revoked nor expired."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    agreement = await _agreement(conn, runtime, body.agreement, ("body", "agreement"))
    if agreement.basis != "consent":
        raise NotConsentBased(
            f"Agreement {agreement.id} has basis {agreement.basis}: "
            + (
                "the citizen may object to it instead."
                if agreement.basis == "objectable"
                else "it applies by law, and consent does not apply."
            ),
            errors=[{"loc": ["body", "agreement"], "msg": f"basis is {agreement.basis}"}],
        )
    now = runtime.clock()
    expires_at = body.expires_at
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValidationFailed(
                "expires_at needs a time zone.",
                errors=[{"loc": ["body", "expires_at"], "msg": "no time zone"}],
            )
        try:
            # Kept in UTC: 9999-12-31T23:59:59-12:00 is no instant there, and neither is
            # 0001-01-01T00:00:00+01:00, which is long past rather than too late.
            expires_at = expires_at.astimezone(UTC)
            passed = expires_at <= now
        except OverflowError:
            if expires_at.year > 1:
                raise ValidationFailed(
                    "expires_at is later than the last instant the store can keep.",
                    errors=[{"loc": ["body", "expires_at"], "msg": "out of range"}],
                ) from None
            passed = True
        if passed:
            raise ValidationFailed(
                "expires_at has passed.", errors=[{"loc": ["body", "expires_at"], "msg": "in the past"}]
            )
    consent_id = str(uuid.uuid4())
    fields = list(agreement.fields)
    actions = list(agreement.actions)
    purpose = agreement.purposes[0]
    terms = artefact.terms(
        issuer=runtime.issuer,
        consent_id=consent_id,
        citizen_id=citizen_id,
        agreement=agreement.id,
        owner=agreement.owner,
        consumer=agreement.consumer,
        purpose=purpose,
        fields=fields,
        actions=actions,
        created_at=now,
        expires_at=expires_at,
        data_life=body.data_life,
    )
    row = ConsentRow(
        id=consent_id,
        citizen_id=citizen_id,
        agreement=agreement.id,
        consumer=agreement.consumer,
        purpose=purpose,
        fields=fields,
        actions=actions,
        status="active",
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
        data_life=body.data_life,
        signature=artefact.sign(terms, runtime.keys),
    )
    # Two grants sent at once (a double click) must not both be stored, or revoking the one
    # the citizen sees would leave the other in force. So the grants of one citizen to one
    # agreement take turns: on PostgreSQL an advisory lock, on SQLite the write lock, which
    # the insert takes (the reads before it each saw the store as it was then, and another
    # grant may have committed since). Whoever comes second sees the first's consent and
    # is refused, its insert deleted again in the same transaction, so that no caller (the
    # console renders the refusal and commits) can keep it. Not a savepoint: on SQLite a
    # SAVEPOINT would open the transaction before the insert, and its reads' snapshot could
    # then not take the write lock once another writer had committed.
    await repository.hold_consents_of(conn, citizen_id, agreement.id)
    await repository.insert_consent(conn, row)
    for held in await repository.open_consents(conn, citizen_id, agreement.id, besides=consent_id):
        if status_at(held, now) in ("active", "paused"):
            await repository.withdraw_insert(conn, consent_id)
            raise ConsentExists(
                f"Consent {held.id} to {agreement.id} is {held.status}: resume or revoke it instead."
            )
    await _tell_consumer(conn, row, agreement.owner, "active", now)
    await _audit(
        conn,
        actor,
        "consent-change",
        citizen_id,
        agreement,
        "active",
        purpose=purpose,
        document=canonical_json(terms),
    )
    return consent_out(row, now)


# How often a change is decided again after losing a race to another change of the same
# consent; each loss means that other change committed.
CHANGE_ATTEMPTS = 5


async def change(
    session: AsyncSession,
    runtime: ConsentRuntime,
    actor: Actor,
    citizen_id: str,
    consent_id: str,
    status: str,
) -> ConsentOut:
    """Pause, resume or revoke a consent; audited. Asking for the status it has changes
    nothing; a revoked or expired consent never changes again (409)."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    for _attempt in range(CHANGE_ATTEMPTS):
        row = await repository.get_consent(conn, citizen_id, consent_id) if len(consent_id) <= 36 else None
        if row is None:
            raise ConsentNotFound(f"The citizen has no consent {consent_id!r}.")
        now = runtime.clock()
        current = status_at(row, now)
        if current == status:
            return consent_out(row, now)
        if current in ("revoked", "expired"):
            raise ConsentFinal(f"Consent {row.id} is {current}: give a new consent instead.")
        if await repository.set_status(conn, row.id, row.status, status, now):
            break
        # Another change committed since ``row`` was read: decide again on the status now
        # stored, as for a change sent a moment later (so two revocations sent together
        # both answer as revoked, and a resume that lost to a revocation is 409 final).
    else:
        raise ConsentChanged(f"Consent {consent_id} changed while this request was made; read it again.")
    agreement = await _logged_agreement(conn, runtime, row)
    await _tell_consumer(conn, row, agreement.owner, status, now)
    await _audit(conn, actor, "consent-change", citizen_id, agreement, status, purpose=row.purpose)
    changed = ConsentRow(**{**row.__dict__, "status": status, "updated_at": now})
    return consent_out(changed, now)


async def _tell_consumer(
    conn: AsyncConnection, row: ConsentRow, owner: str, status: str, now: datetime
) -> None:
    """A ``consent.changed`` event for the consumer department's subscriptions, in this
    transaction: the citizen's id, the consent, the agreement and the status; no value."""
    await events_service.record_consent_change(
        conn,
        citizen_id=row.citizen_id,
        consent_id=row.id,
        agreement=row.agreement,
        owner=owner,
        consumer=row.consumer,
        purpose=row.purpose,
        fields=row.fields,
        status=status,
        occurred_at=now,
    )


async def _logged_agreement(conn: AsyncConnection, runtime: ConsentRuntime, row: ConsentRow) -> Agreement:
    """The agreement a consent is to, as live now; one since revoked is named by the
    consent's own terms, so pausing or revoking such a consent is still audited."""
    policy = await runtime.policy.current(conn)
    for agreement in policy.agreements:
        if agreement.id == row.agreement:
            return agreement
    owner = policy.field_owners.get(row.fields[0], "") if row.fields else ""
    return Agreement(
        id=row.agreement, owner=owner, consumer=row.consumer, fields=tuple(row.fields), actions=(), version=0
    )


def _cursor(row: ConsentRow) -> str:
    return encode_text(f"{row.created_at.isoformat()}|{row.id}")


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    # Printable ASCII, or refused (``service.cursors``): a NUL would reach the store.
    created_at, bar, consent_id = decode_text(cursor).partition("|")
    try:
        after = datetime.fromisoformat(created_at)
    except ValueError:
        raise bad_cursor() from None
    # The list's cursors hold an aware time and a consent id (a UUID); a forged one with a
    # naive or out-of-range time would reach the store as a 500.
    if not bar or after.tzinfo is None or len(consent_id) > 36:
        raise bad_cursor()
    try:
        return after.astimezone(UTC), consent_id
    except OverflowError:
        raise bad_cursor() from None


async def _consent_page(
    conn: AsyncConnection, runtime: ConsentRuntime, citizen_id: str, *, cursor: str | None, limit: int
) -> ConsentPage:
    rows = await repository.page_consents(conn, citizen_id, _after(cursor), limit + 1)
    now = runtime.clock()
    page = rows[:limit]
    return ConsentPage(
        items=[consent_out(row, now) for row in page],
        next_cursor=_cursor(page[-1]) if len(rows) > limit and page else None,
    )


async def _audit_listing(conn: AsyncConnection, actor: Actor, action: AuditAction, citizen_id: str) -> None:
    """A citizen's consents or objections were read through ``actor``: which agreements a
    citizen agreed to or objected to is about the citizen, so the reading is audited, in
    the request's transaction (committed before the answer leaves)."""
    entry = audit_entries.query_entry(actor.principal, action, source=actor.source, citizen_id=citizen_id)
    await audit_writer.append_in_transaction(conn, entry)


async def list_consents(
    session: AsyncSession,
    runtime: ConsentRuntime,
    actor: Actor,
    citizen_id: str,
    *,
    cursor: str | None,
    limit: int,
) -> ConsentPage:
    """One page of the citizen's consents, oldest first, each with its status now;
    audited as ``consent-list``."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    page = await _consent_page(conn, runtime, citizen_id, cursor=cursor, limit=limit)
    await _audit_listing(conn, actor, "consent-list", citizen_id)
    return page


# --- objections -------------------------------------------------------------------------


async def object_to(
    session: AsyncSession, runtime: ConsentRuntime, actor: Actor, citizen_id: str, agreement_id: str
) -> ObjectionOut:
    """The citizen objects to an objectable agreement: it releases nothing of theirs from
    the next request on. 422 for an agreement that is not objectable; 409 if objected."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    agreement = await _agreement(conn, runtime, agreement_id, ("path", "agreement"))
    if agreement.basis != "objectable":
        raise NotObjectable(
            f"Agreement {agreement.id} has basis {agreement.basis}: "
            + (
                "it releases only with consent, so withhold or revoke consent instead."
                if agreement.basis == "consent"
                else "it applies by law, and cannot be objected to."
            )
        )
    if await repository.has_objection(conn, citizen_id, agreement.id):
        raise ObjectionExists(f"The citizen has already objected to {agreement.id}.")
    now = runtime.clock()
    if not await repository.insert_objection(conn, citizen_id, agreement.id, now):
        # A concurrent objection was recorded between the check above and this insert.
        raise ObjectionExists(f"The citizen has already objected to {agreement.id}.")
    await _audit(conn, actor, "objection-change", citizen_id, agreement, "objected")
    return ObjectionOut(
        citizen_id=citizen_id,
        agreement=agreement.id,
        consumer=agreement.consumer,
        fields=list(agreement.fields),
        created_at=now,
    )


async def withdraw_objection(
    session: AsyncSession, runtime: ConsentRuntime, actor: Actor, citizen_id: str, agreement_id: str
) -> None:
    """The citizen withdraws an objection: the agreement applies again from the next request."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    if not await repository.delete_objection(conn, citizen_id, agreement_id):
        raise ObjectionNotFound(f"The citizen has not objected to {agreement_id!r}.")
    policy = await runtime.policy.current(conn)
    agreement = next((a for a in policy.agreements if a.id == agreement_id), None)
    if agreement is None:
        agreement = Agreement(id=agreement_id, owner="", consumer="", fields=(), actions=(), version=0)
    await _audit(conn, actor, "objection-change", citizen_id, agreement, "withdrawn")


async def list_objections(
    session: AsyncSession, runtime: ConsentRuntime, actor: Actor, citizen_id: str
) -> list[ObjectionOut]:
    """The agreements the citizen has objected to; audited as ``objection-list``."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    objections = await _objections(conn, runtime, citizen_id)
    await _audit_listing(conn, actor, "objection-list", citizen_id)
    return objections


async def _objections(conn: AsyncConnection, runtime: ConsentRuntime, citizen_id: str) -> list[ObjectionOut]:
    policy = await runtime.policy.current(conn)
    live: dict[str, Agreement] = {a.id: a for a in policy.agreements}
    out = []
    for row in await repository.citizen_objections(conn, citizen_id):
        agreement = live.get(row.agreement)
        out.append(
            ObjectionOut(
                citizen_id=citizen_id,
                agreement=row.agreement,
                consumer=agreement.consumer if agreement else "",
                fields=list(agreement.fields) if agreement else [],
                created_at=row.created_at,
            )
        )
    return out


@dataclass(frozen=True)
class Choices:
    """Every consent (oldest first) and objection of one citizen: what the console's
    choices page shows."""

    consents: list[ConsentOut]
    objections: list[ObjectionOut]


CHOICES_PAGE = 1000


async def all_choices(
    session: AsyncSession, runtime: ConsentRuntime, actor: Actor, citizen_id: str
) -> Choices:
    """Every consent and objection of the citizen, read in pages, audited once each as
    ``consent-list`` and ``objection-list`` (one view, not one entry per page)."""
    conn = await session.connection()
    await _known_citizen(conn, citizen_id)
    consents: list[ConsentOut] = []
    cursor = None
    while True:
        page = await _consent_page(conn, runtime, citizen_id, cursor=cursor, limit=CHOICES_PAGE)
        consents.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    objections = await _objections(conn, runtime, citizen_id)
    await _audit_listing(conn, actor, "consent-list", citizen_id)
    await _audit_listing(conn, actor, "objection-list", citizen_id)
    return Choices(consents, objections)


def runtime_of(state: Any) -> ConsentRuntime:
    """The consent runtime of an app's ``state``."""
    auth = state.auth
    return ConsentRuntime(policy=state.policy, keys=auth.keys, issuer=auth.issuer.issuer, clock=state.clock)
