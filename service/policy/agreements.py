"""Agreements as data owners and auditors see and change them: the rules the policy API
and the console both call.

Each function takes the caller and the request's session. Visibility comes from
``service.auth.permissions``: another owner's agreement is reported missing (its
existence is not the caller's to know), and only the owning department changes its own.
A change refused as beyond the caller's rights (404, 403) is audited before it is
answered (``_Refusal``); the benign refusals (409, 412, 428, 422) are not.
The change itself (a new immutable version, its audit entry, the epoch bump) is
``service.policy.service``'s.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit import entries as audit_entries
from service.audit import writer as audit_writer
from service.audit.writer import EntrySink
from service.auth import permissions
from service.auth.dependencies import Principal
from service.catalog.schemas import IDENTIFIER_PATTERN, Catalog
from service.consent import repository as consent_repository
from service.cursors import decode_text, encode_text
from service.db import utcnow
from service.digits import ascii_digits
from service.errors import ValidationFailed, bad_cursor
from service.etags import IfMatch
from service.policy import repository
from service.policy import service as policy_service
from service.policy.checks import check_body, read_simulation
from service.policy.engine import Explanation, RequestContext
from service.policy.errors import (
    AgreementExists,
    AgreementNotFound,
    AgreementRevoked,
    AgreementVersionRequired,
    NotFieldOwner,
    SimulationWindowTooLarge,
    StaleAgreement,
)
from service.policy.models import AgreementVersion
from service.policy.rules import NUL_REFUSED, Problem, has_nul
from service.policy.schemas import AgreementSpec
from service.policy.signing import signing_text
from service.policy.simulate import (
    RecordedRequestSource,
    SimulationResult,
    Window,
    WindowTooLarge,
    draft_policy,
    simulate,
)
from service.policy.terms import format_duration
from service.sourcefile import PathKey


@dataclass(frozen=True)
class AgreementPage:
    rows: list[AgreementVersion]
    next_cursor: str | None


# The longest author a version (``AgreementVersion.author``) and its audit entry (as the
# entry's client id) can keep.
AUTHOR_MAX = 200


def author(principal: Principal) -> str:
    """The author a new version records: the client, and the officer it acted for.

    A client id (up to 64 characters) and an X-On-Behalf-Of (up to 200) can make more than
    ``AUTHOR_MAX``: the officer reference is then cut, the cut marked with an ellipsis and
    followed by the SHA-256 of the whole reference, so what is stored claims nothing untrue
    and still tells one officer from another.
    """
    officer = principal.on_behalf_of
    if not officer:
        return principal.client_id
    whole = f"{principal.client_id} for {officer}"
    if len(whole) <= AUTHOR_MAX:
        return whole
    tail = f"… (sha256 {hashlib.sha256(officer.encode()).hexdigest()[:16]})"
    kept = officer[: max(0, AUTHOR_MAX - len(principal.client_id) - len(" for ") - len(tail))]
    return f"{principal.client_id} for {kept}{tail}"[:AUTHOR_MAX]


def _decoded(cursor: str | None) -> str | None:
    """The agreement id or version number a cursor holds, or None for the first page."""
    return None if cursor is None else decode_text(cursor)


def _foreign_owners(fields: object, owner: str, catalog: Catalog) -> list[str]:
    """The other departments whose fields ``fields`` (as sent) names, by id."""
    owners = catalog.field_owners
    named = [f for f in fields if isinstance(f, str)] if isinstance(fields, list) else []
    return sorted({owners[f] for f in named if f in owners and owners[f] != owner})


def _grants_only_own(owner: str, foreign: list[str]) -> str:
    return f"{owner} may grant only its own fields; this covers fields of {', '.join(foreign)}"


def _dotted(loc: PathKey) -> str:
    """A problem's location in the body, as ``upsert.0.id``; the body's own, as the agreement."""
    return ".".join(str(part) for part in loc) or "the agreement"


def _refuse_problems(problems: list[Problem]) -> None:
    """422 listing every problem, in ``errors`` and in the detail (which is what the console's
    page shows, where a problem is found only as the agreement is saved)."""
    if problems:
        listed = "; ".join(f"{_dotted(loc)}: {message}" for loc, message in problems)
        raise ValidationFailed(
            f"The agreement has problems: {listed}.",
            errors=[{"loc": ["body", *loc], "msg": message} for loc, message in problems],
        )


async def _accepted(
    session: AsyncSession, principal: Principal, body: Mapping[str, Any], agreement_id: str | None = None
) -> tuple[AgreementSpec, str]:
    """The submitted agreement and reason (its fields already found to be the caller's,
    ``_Refusal.own_fields_only``): 422 with every problem."""
    catalog = await policy_service.live_catalog(session)
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
        session, owner=permissions.owner_scope(principal), after=_decoded(cursor), limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return AgreementPage(rows, encode_text(rows[-1].agreement_id) if more else None)


async def list_versions(
    session: AsyncSession, principal: Principal, agreement_id: str, *, cursor: str | None, limit: int
) -> AgreementPage:
    """Every version of one visible agreement, oldest first."""
    await get_agreement(session, principal, agreement_id)
    after_text = _decoded(cursor)
    after = None
    if after_text is not None:
        # Versions are 32-bit on PostgreSQL: more than 9 digits names no version, and would
        # not fit as a query argument.
        if not ascii_digits(after_text) or len(after_text) > 9:
            raise bad_cursor()
        after = int(after_text)
    rows = await repository.page_versions(session, agreement_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AgreementPage(rows, encode_text(str(rows[-1].version)) if more else None)


# --- changing -------------------------------------------------------------------------


def _named_id(value: object) -> str | None:
    """``value`` if it is an id an agreement can have, so an audit entry may name it; None
    otherwise (a body's id is read before it is checked, and could be anything)."""
    return value if isinstance(value, str) and re.fullmatch(IDENTIFIER_PATTERN, value) else None


@dataclass(frozen=True)
class _Refusal:
    """A change (``change``: ``created``, ``replaced``, ``revoked``, or ``simulated`` for a
    draft replayed by simulate) of ``agreement_id`` asked for by ``principal``, and where a
    refusal of it beyond the caller's rights is recorded.

    Such a refusal is audited as a ``policy-change`` entry with decision ``deny`` and the
    status answered (``entries.policy_refusal_entry``), durably, before it is raised:
    ``audit`` commits it in a transaction of its own, since the change is not made (the
    app's, ``audit.writer.AfterRollback``, rolls the request's transaction back first). If
    it cannot be written, the answer is ``AuditUnavailable`` (503) instead.

    Benign refusals are not audited: 409 (the id is taken, or already revoked), 412 (a
    stale version), 428 (no If-Match) and 422 (an agreement with problems) concern the
    owner's own agreements, or are the ordinary races of concurrent edits."""

    principal: Principal
    change: str
    agreement_id: str | None
    audit: EntrySink
    source: str | None

    async def refuse(
        self, status: int, why: str, error: Exception, owners: list[str] | None = None
    ) -> NoReturn:
        entry = audit_entries.policy_refusal_entry(
            self.principal,
            agreement_id=_named_id(self.agreement_id),
            change=self.change,
            status=status,
            why=why,
            source=self.source,
            owners=owners or [],
        )
        await self.audit.append(entry)
        raise error

    async def visible(self, session: AsyncSession, agreement_id: str) -> AgreementVersion:
        """The current version, if the caller may see it: 404 when it may not or there is
        none (the same entry for both)."""
        row = await repository.current_version(session, agreement_id)
        if row is None or not permissions.sees_agreement(self.principal, row.owner):
            await self.refuse(
                404,
                f"{self.principal.department} has no such agreement",
                AgreementNotFound(f"No agreement {agreement_id!r}."),
            )
        return row

    async def changeable(self, session: AsyncSession, agreement_id: str) -> AgreementVersion:
        """The current version, if the caller's department owns it: 404 when the caller
        may not see it or there is none (``visible``), 403 when it sees it (an auditor) but
        does not own it."""
        row = await self.visible(session, agreement_id)
        if not permissions.changes_agreement(self.principal, row.owner):
            verb = "revokes" if self.change == "revoked" else "changes"
            await self.refuse(
                403,
                f"only its owner, {row.owner}, {verb} it",
                NotFieldOwner(f"Only the owning department {verb} its agreements."),
                [row.owner],
            )
        return row

    async def own_fields_only(
        self, session: AsyncSession, body: Mapping[str, Any], owner: str | None = None
    ) -> None:
        """403 when ``body`` covers fields of departments other than ``owner`` (the caller's
        department unless named); the entry names those departments (their ids, never the
        fields or their values)."""
        owner = owner or self.principal.department
        foreign = _foreign_owners(body.get("fields"), owner, await policy_service.live_catalog(session))
        if foreign:
            why = _grants_only_own(owner, foreign)
            await self.refuse(403, why, NotFieldOwner(f"{why}."), [owner, *foreign])


async def refuse_unchangeable(
    session: AsyncSession,
    principal: Principal,
    agreement_id: str,
    *,
    audit: EntrySink,
    source: str | None = None,
) -> None:
    """What a replacement of ``agreement_id`` refuses first, and audits, whatever its body
    (``_Refusal.changeable``): 404 for an agreement the caller does not have, 403 for one
    it sees but does not own. The console runs it before it reads a draft to save."""
    await _Refusal(principal, "replaced", agreement_id, audit, source).changeable(session, agreement_id)


async def refuse_overreach(
    session: AsyncSession,
    principal: Principal,
    body: Mapping[str, Any],
    *,
    agreement_id: str | None,
    audit: EntrySink,
    source: str | None = None,
) -> None:
    """What a create (``agreement_id`` None) or a replacement of ``agreement_id`` with
    ``body`` refuses first, and audits, as beyond the caller's rights (``_Refusal``): 404
    for an agreement it does not have, 403 for another department's fields. The console
    runs it before saving a draft, whose problems it otherwise shows on the form."""
    change = "created" if agreement_id is None else "replaced"
    refusal = _Refusal(principal, change, agreement_id or body.get("id"), audit, source)
    if agreement_id is not None:
        await refusal.changeable(session, agreement_id)
    await refusal.own_fields_only(session, body)


async def create_agreement(
    session: AsyncSession,
    principal: Principal,
    body: Mapping[str, Any],
    *,
    audit: EntrySink,
    source: str | None = None,
) -> AgreementVersion:
    """A new agreement over the caller's fields from ``body`` (an agreement entry and the
    ``reason`` for it): 403 for another's fields (audited, as ``_Refusal`` says), 422
    listing every problem, 409 if the id is taken."""
    await refuse_overreach(session, principal, body, agreement_id=None, audit=audit, source=source)
    spec, reason = await _accepted(session, principal, body)
    if await id_taken(session, spec.id):
        raise AgreementExists(f"An agreement {spec.id!r} already exists; ids are unique across the catalog.")
    return await policy_service.put_agreement(
        session, None, spec, owner=principal.department, author=author(principal), reason=reason
    )


def _fresh(row: AgreementVersion, expected: IfMatch | None) -> None:
    """412 unless ``expected`` (when sent) names the current version."""
    if expected is not None and not expected.holds(row.version):
        raise StaleAgreement(f"Agreement {row.agreement_id!r} is at version {row.version}; read it again.")


async def replace_agreement(
    session: AsyncSession,
    principal: Principal,
    agreement_id: str,
    body: Mapping[str, Any],
    *,
    expected: IfMatch | None,
    audit: EntrySink,
    source: str | None = None,
) -> AgreementVersion:
    """A new version of one of the caller's agreements from ``body`` (as for a create; its
    id must be ``agreement_id``), if ``expected`` names the current version (428 without
    it or with ``*``, which names none; 412 if stale). A revoked agreement comes back into
    force this way. 404 for an agreement the caller does not have and 403 for another's
    fields come first, audited (``_Refusal``)."""
    refusal = _Refusal(principal, "replaced", agreement_id, audit, source)
    row = await refusal.changeable(session, agreement_id)
    await refusal.own_fields_only(session, body)
    _fresh(row, expected)
    if expected is None or expected.versions is None:
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


# How often a revocation without If-Match is decided again after losing a race to another
# change of the same agreement; each loss means that other change committed.
REVOKE_ATTEMPTS = 5


async def revoke_agreement(
    session: AsyncSession,
    principal: Principal,
    agreement_id: str,
    *,
    expected: IfMatch | None,
    reason: str,
    audit: EntrySink,
    source: str | None = None,
) -> AgreementVersion:
    """A new version with status ``revoked``, in force from the next request; 404 for an
    agreement the caller does not have (audited, ``_Refusal``); 412 if ``expected`` (when
    sent) no longer holds; 409 if it already is revoked; 422 for a reason holding a NUL (the
    rule ``check_agreement`` holds free text to). A revocation that loses a race to another
    change is decided again on the version then current (``REVOKE_ATTEMPTS``)."""
    if has_nul(reason):
        raise ValidationFailed(
            f"The reason for the revocation {NUL_REFUSED}.",
            errors=[{"loc": ["query", "reason"], "msg": NUL_REFUSED}],
        )
    refusal = _Refusal(principal, "revoked", agreement_id, audit, source)
    for attempt in range(REVOKE_ATTEMPTS):
        row = await refusal.changeable(session, agreement_id)
        _fresh(row, expected)
        if row.status == "revoked":
            raise AgreementRevoked(f"Agreement {agreement_id!r} is already revoked.")
        try:
            return await policy_service.revoke(session, row, author=author(principal), reason=reason)
        except StaleAgreement:
            # Another change committed since ``row`` was read: decide again on the version
            # now current, as for a revocation sent a moment later. That is 412 if an
            # If-Match no longer holds, 409 if the other change revoked it, and otherwise
            # this revocation; never a 412 for a caller that stated no precondition.
            if attempt == REVOKE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


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
    audit: EntrySink,
    citizen_id: str | None = None,
    source: str | None = None,
) -> dict[str, Explanation]:
    """Each field's decision with its near misses. A data owner asks about its own fields,
    or about its own department as consumer; asked about another department's fields for
    another consumer, it is refused (403), and the refusal is audited first, durably, through
    ``audit`` (``entries.explain_refusal_entry``, as ``_Refusal`` records a refused change;
    503 if it cannot be written). With ``citizen_id``, consent-based and
    objectable agreements are decided with that citizen's consents and objections; the
    answer then reveals them, so it is audited (an ``explain`` entry naming the citizen,
    in the caller's transaction, which commits before the answer is sent)."""
    if not permissions.sees_all(principal) and consumer != principal.department:
        catalog = await policy_service.live_catalog(session)
        owners = catalog.field_owners
        if not permissions.may_explain(principal, consumer, [owners.get(f) for f in fields]):
            foreign = sorted({o for f in fields if (o := owners.get(f)) and o != principal.department})
            # Only a department the catalog knows is named: the consumer is text as sent.
            named = consumer if catalog.department(consumer) is not None else None
            entry = audit_entries.explain_refusal_entry(
                principal, consumer=named, action=action, owners=foreign, source=source
            )
            await audit.append(entry)
            raise NotFieldOwner(
                "A data owner explains decisions on its own fields or for its own department."
            )
    conn = await session.connection()
    policy = await policy_service.current_policy(conn, holder)
    needed = policy.choices_needed(consumer, action, fields)
    if citizen_id is None or not needed:
        return policy.explain(consumer, action, fields, context)
    rows = await consent_repository.choices(conn, [citizen_id], sorted(needed))
    context = consent_repository.context_with_choices(context, citizen_id, rows)
    explained = policy.explain(consumer, action, fields, context)
    entry = audit_entries.explain_entry(
        principal,
        source=source,
        citizen_id=citizen_id,
        consumer=consumer,
        action=action,
        owners=[owner for name in fields if (owner := policy.field_owners.get(name))],
        decided=[e.decision for e in explained.values()],
        purpose=context.purpose or None,
        case_ref=context.case_ref,
    )
    await audit_writer.append_in_transaction(conn, entry)
    return explained


def explanation_record(explanation: Explanation) -> dict[str, Any]:
    """One field's explanation as the API and ``tellonce policies explain`` show it: the
    decision as the audit records it, its near misses, and ``held_for``: for a refusal under
    a case held from the citizen without citing an agreement (the refused field's owner gave
    the consumer no delayed-disclosure agreement), the longest it is held, as an ISO 8601
    duration as the audit reason's ``held_for`` is written; null otherwise. It is a duration
    only, never the agreement it comes from, which may be another owner's."""
    decision = explanation.decision
    return {
        **decision.to_record(),
        "held_for": format_duration(decision.held_for) if decision.held_for is not None else None,
        "near_misses": [m.to_record() for m in explanation.near_misses],
    }


async def simulate_draft(
    session: AsyncSession,
    principal: Principal,
    holder: policy_service.PolicyHolder,
    recorded: RecordedRequestSource | None,
    body: Mapping[str, Any],
    *,
    limit: int,
    audit: EntrySink,
    source: str | None = None,
) -> SimulationResult:
    """Replay recorded requests since ``body``'s ``since`` against the live agreements plus
    its ``upsert`` drafts minus its ``remove`` ids. Live policy is never changed.

    The replay reads the audit log (and the citizens' consents and objections), so it is an
    audit query and audited as one: an ``audit-query`` entry naming who asked, from
    ``source``, and the owners whose fields were replayed, in the caller's transaction,
    which commits before the answer is sent.

    At most ``limit`` audit entries (``Settings.simulate_max_entries``) are replayed: a
    window holding more is refused (422, ``SimulationWindowTooLarge``, naming the later
    ``since`` that fits) before any is decoded. That refusal has read the log too, so its
    ``audit-query`` entry (decision ``deny``, status 422) is written durably through
    ``audit`` before it is raised.

    Each draft is judged as a create would be (unsigned drafts are fine: nothing is
    stored), under its owner: the caller's department, or for an auditor the owner of its
    fields. 403 for a draft over another department's fields, audited as a refused change
    (``_Refusal``, change ``simulated``); otherwise 422 listing every problem with the body
    and every draft at once; 404 for an id to remove the caller may not see, audited the
    same way.
    """
    catalog = await policy_service.live_catalog(session)
    owners = catalog.field_owners
    read = read_simulation(body)
    owned: list[tuple[int, Mapping[str, Any], str]] = []
    for index, draft in read.drafts:
        owner = principal.department
        fields = draft.get("fields")
        if permissions.sees_all(principal) and isinstance(fields, list):
            owner = next((owners[f] for f in fields if isinstance(f, str) and f in owners), owner)
        await _Refusal(principal, "simulated", draft.get("id"), audit, source).own_fields_only(
            session, draft, owner
        )
        owned.append((index, draft, owner))
    problems = list(read.problems)
    specs: list[tuple[AgreementSpec, str]] = []
    for index, draft, owner in owned:
        checked = check_body(draft, owner, catalog, signed=False, with_reason=False)
        problems += [(("upsert", index, *loc), message) for loc, message in checked.problems]
        if checked.spec is not None:
            specs.append((checked.spec, owner))
    problems.sort(key=_draft_order)  # stable: each draft's problems keep check_body's order
    _refuse_problems(problems)
    drafts = []
    for spec, owner in specs:
        current = await repository.current_version(session, spec.id)
        if current is not None and current.owner != owner:
            raise AgreementExists(f"Agreement id {spec.id!r} belongs to another owner.")
        drafts.append(spec.to_engine(owner, (current.version + 1) if current else 1))
    for agreement_id in read.remove:
        await _Refusal(principal, "simulated", agreement_id, audit, source).visible(session, agreement_id)
    conn = await session.connection()
    live = await policy_service.current_policy(conn, holder)
    changed = draft_policy(live, drafts, read.remove)

    async def choices(
        citizen_id: str, context: RequestContext, agreement_ids: frozenset[str]
    ) -> RequestContext:
        rows = await consent_repository.choices(conn, [citizen_id], sorted(agreement_ids))
        return consent_repository.context_with_choices(context, citizen_id, rows)

    # Only the fields of the departments whose agreements the draft adds, changes or
    # removes can be decided differently, and only they are replayed and counted.
    removed = set(read.remove)
    changing = {a.owner for a in drafts} | {a.owner for a in live.agreements if a.id in removed}
    changing |= {owner for owner, agreement_id, _version in live.refused if agreement_id in removed}
    fields = frozenset(name for name, owner in live.field_owners.items() if owner in changing)
    window = Window(read.since, frozenset(changing), fields)
    try:
        result = await simulate(live, changed, recorded, window, choices, limit=limit)
    except WindowTooLarge as too_large:
        entry = audit_entries.query_entry(principal, source=source, owners=sorted(changing), status=422)
        await audit.append(entry)
        raise SimulationWindowTooLarge(too_large.limit, read.since, too_large.fits_since) from None
    if recorded is not None:
        entry = audit_entries.query_entry(principal, source=source, owners=sorted(changing))
        await audit_writer.append_in_transaction(conn, entry)
    return result


def _draft_order(problem: Problem) -> tuple[int, int]:
    """Problems with ``remove`` and ``since`` first, then each draft's in ``upsert`` order."""
    loc = problem[0]
    if loc and loc[0] == "upsert" and len(loc) > 1 and isinstance(loc[1], int):
        return (1, loc[1])
    return (0, 0)


def now_context(purpose: str, case_ref: str | None, citizen_status: str | None) -> RequestContext:
    """The request context of an explain asked now."""
    return RequestContext(purpose, case_ref, utcnow(), citizen_status)
