"""Every kind of audit entry, built in one place.

- ``access_entry``: an access decided field by field (records' reads and writes, and
  events' subscribe, feed and delivery): what was asked for, what was released, and the
  agreement behind each decision. ``records_access_entry`` and ``events_access_entry``
  are its two callers' shapes.
- ``notice_delivery_entry``: an access notice sent to the citizen portal's webhook,
  audited as the portal reading the citizen's access log.
- ``consent_delivery_entry``: a ``consent.changed`` event sent to a consumer's webhook
  (which citizen's consent changed; no field released).
- ``query_entry``: an auditor's, owner's or citizen portal's own query of the log.
- ``policy_change_entry``: one new agreement version, its canonical JSON in full;
  ``policy_refusal_entry``: a change of an agreement refused (403 or 404), nothing stored.
- ``catalog_change_entry``: a new catalog, in full, with every signing-key change.
- ``key_event_entry``: a key operation (a KEK made or rotated, data keys shredded).
- ``case_entry``: a consumer closing one of its cases (delayed disclosure).
- ``choice_entry``: a citizen's consent or objection made or changed, with a consent's
  signed terms in full.
- ``subscription_change_entry``: an events subscription deleted by its department, or
  disabled by the service when its receiver answered 410 Gone;
  ``subscription_refusal_entry``: such a change refused, the subscription not being the
  caller's department's.
- ``operator_entry``: an operator command on clients or signing keys (``client-create``,
  ``client-disable``, ``signing-key-rotate``) or one that made a key.

Entries hold names, versions and pseudonymous citizen ids, never a field value. This
module imports no other domain's service, so any domain may import it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from service.audit.schemas import Action, AuditEntry, Decision, Reason
from service.db import utcnow
from service.observability import current_request_id
from service.policy.terms import format_duration

if TYPE_CHECKING:
    from service.auth.dependencies import Principal
    from service.catalog.schemas import Catalog
    from service.catalog.service import CatalogChange
    from service.crypto.keyring import KeyEvent
    from service.policy.service import PolicyChange

# The client named in key-event entries the service itself causes while serving (a first KEK,
# an erasure's shredding); key events of operator commands name the operator instead
# (``service/operator.py``).
SERVICE_ACTOR = "tellonce-service"


class FieldDecision(Protocol):
    """The parts of a policy decision an entry records (``service.policy.engine.Decision``)."""

    @property
    def field(self) -> str: ...
    @property
    def effect(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def agreement(self) -> str | None: ...
    @property
    def version(self) -> int | None: ...
    @property
    def legal_basis(self) -> str | None: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def held_for(self) -> timedelta | None: ...


class AccessFacts(Protocol):
    """Who asked, and the request facts every access entry records."""

    @property
    def principal(self) -> Principal: ...
    @property
    def request_id(self) -> str: ...
    @property
    def source(self) -> str | None: ...
    @property
    def case_ref(self) -> str | None: ...


# The field -> owner map of the catalog last asked about: the catalog changes rarely, and
# a map beats ``Catalog.field``'s scan of every field, once per requested field per entry.
_owners_of: tuple[Catalog, dict[str, str]] | None = None


def _field_owners(catalog: Catalog) -> dict[str, str]:
    global _owners_of
    known = _owners_of
    if known is not None and known[0] is catalog:
        return known[1]
    owners = catalog.field_owners
    _owners_of = (catalog, owners)
    return owners


# The owners of the fields of a request in the catalog last asked about, by the request's
# field names (as asked, in order): a read asks for the same fields again and again.
_owners_asked: tuple[Catalog, dict[tuple[str, ...], list[str]]] | None = None
_OWNERS_KEPT = 4096


def _owners(catalog: Catalog, requested: Sequence[str]) -> list[str]:
    """The owners of ``requested`` fields in ``catalog``, sorted, each once (names the
    catalog does not hold have none). Shared: the entry copies it."""
    global _owners_asked
    known = _owners_asked
    if known is None or known[0] is not catalog:
        known = _owners_asked = (catalog, {})
    by_fields = known[1]
    key = tuple(requested)
    owners = by_fields.get(key)
    if owners is None:
        if len(by_fields) >= _OWNERS_KEPT:
            by_fields.clear()
        field_owners = _field_owners(catalog)
        owners = by_fields[key] = sorted({owner for name in key if (owner := field_owners.get(name))})
    return owners


# Reasons by what they record. A ``Reason`` is frozen, so entries may share one, and
# decisions repeat (the same agreement deciding the same field for the same reason), so
# most are made once instead of once per field per entry; bounded by clearing it.
_REASONS_KEPT = 4096
_reasons: dict[tuple[str, str, str | None, int | None, str | None, str, timedelta | None], Reason] = {}


def _reason(decision: FieldDecision) -> Reason:
    key = (
        decision.field,
        decision.effect,
        decision.agreement,
        decision.version,
        decision.digest,
        decision.reason,
        decision.held_for,
    )
    known = _reasons.get(key)
    if known is None:
        if len(_reasons) >= _REASONS_KEPT:
            _reasons.clear()
        field, effect, agreement, version, digest, reason, held_for = key
        known = _reasons[key] = Reason.built(
            field=field,
            effect=effect,
            agreement=agreement,
            version=version,
            digest=digest,
            reason=reason,
            held_for=format_duration(held_for) if held_for is not None else None,
        )
    return known


# The parts of an access entry that depend only on its decisions, by the decisions'
# identities: its reasons and its legal basis. The policy engine hands out the same
# ``Decision`` objects again for the same grant, field, consumer, action and purpose, so a
# read's decisions repeat from request to request. Each value keeps its decisions alive,
# so while it is kept no other object can have their ids; bounded by clearing it.
_DECIDED_KEPT = 4096
_decided: dict[tuple[int, ...], tuple[tuple[FieldDecision, ...], list[Reason], list[str]]] = {}


def _decided_parts(decided: tuple[FieldDecision, ...]) -> tuple[list[Reason], list[str]]:
    """The reasons and the sorted legal basis (that of every permitting agreement) of
    ``decided``, made once per tuple of decision objects. The lists are shared: the
    entry copies them (``AuditEntry.built``)."""
    key = tuple(map(id, decided))
    known = _decided.get(key)
    if known is None:
        if len(_decided) >= _DECIDED_KEPT:
            _decided.clear()
        reasons = [_reason(d) for d in decided]
        legal_basis = sorted({d.legal_basis for d in decided if d.effect == "permit" and d.legal_basis})
        known = _decided[key] = (decided, reasons, legal_basis)
    return known[1], known[2]


def summary(requested: Sequence[str], released: Sequence[str]) -> Decision:
    """``permit`` when everything asked for was released, ``partial`` for some, else ``deny``."""
    if not requested or not released:
        return "deny"
    return "permit" if len(released) == len(requested) else "partial"


def access_entry(
    *,
    action: Action,
    time: datetime,
    request_id: str,
    client_id: str,
    department: str,
    on_behalf_of: str | None,
    source: str | None,
    case_ref: str | None,
    citizen_id: str | None,
    owners: Iterable[str],
    requested: Sequence[str],
    released: Sequence[str],
    decisions: Iterable[FieldDecision],
    purpose: str | None,
    status: int,
    decision: Decision | None = None,
    citizen_status: str | None = None,
) -> AuditEntry:
    """An access decided per field. The legal basis is that of every permitting agreement.

    ``time`` is the decision's own time and ``citizen_status`` the status it saw, so with
    the consumer, action, purpose, case reference and fields the entry holds every input
    the decision used, and an owner can re-decide it from the log (``check-releases``);
    each reason cites the deciding agreement version's digest."""
    reasons, legal_basis = _decided_parts(tuple(decisions))
    return AuditEntry.built(
        time=time,
        request_id=request_id,
        client_id=client_id,
        department=department,
        on_behalf_of=on_behalf_of,
        action=action,
        citizen_id=citizen_id,
        owners=sorted(set(owners)),
        fields_requested=requested,
        fields_released=released,
        decision=decision or summary(requested, released),
        reasons=reasons,
        purpose=purpose,
        case_ref=case_ref,
        citizen_status=citizen_status,
        legal_basis=legal_basis,
        status=status,
        source=source,
    )


def records_access_entry(
    access: AccessFacts,
    action: Action,
    *,
    citizen_id: str | None,
    catalog: Catalog,
    requested: Sequence[str],
    released: Sequence[str],
    decisions: Mapping[str, FieldDecision],
    purpose: str | None,
    status: int,
    decision: Decision | None = None,
    decided_at: datetime | None = None,
    citizen_status: str | None = None,
) -> AuditEntry:
    """A records access (read, batch-get, lookup, verify, history, register, write, erase):
    the owners are those of the requested fields in ``catalog``."""
    return access_entry(
        action=action,
        # The decision's own time, when a policy decision was made (entries without one,
        # such as a registration, are stamped now).
        time=decided_at or utcnow(),
        request_id=access.request_id,
        client_id=access.principal.client_id,
        department=access.principal.department,
        on_behalf_of=access.principal.on_behalf_of,
        source=access.source,
        case_ref=access.case_ref,
        citizen_id=citizen_id,
        owners=_owners(catalog, requested),
        requested=requested,
        released=released,
        decisions=decisions.values(),
        purpose=purpose,
        status=status,
        decision=decision,
        citizen_status=citizen_status,
    )


def events_access_entry(
    *,
    action: Action,
    time: datetime,
    client_id: str,
    department: str,
    citizen_id: str | None,
    owners: Sequence[str],
    requested: Sequence[str],
    decisions: Mapping[str, FieldDecision],
    purpose: str,
    status: int,
    citizen_status: str | None,
    request_id: str | None = None,
    on_behalf_of: str | None = None,
    source: str | None = None,
) -> AuditEntry:
    """A subscription, a feed read or a webhook delivery: released is what ``decisions`` permit.
    A delivery has no request, so it gets an id of its own."""
    return access_entry(
        action=action,
        time=time,
        request_id=request_id or uuid.uuid4().hex,
        client_id=client_id,
        department=department,
        on_behalf_of=on_behalf_of,
        source=source,
        case_ref=None,
        citizen_id=citizen_id,
        owners=owners,
        requested=requested,
        released=[f for f in requested if f in decisions and decisions[f].effect == "permit"],
        decisions=[decisions[f] for f in requested if f in decisions],
        purpose=purpose,
        status=status,
        citizen_status=citizen_status,
    )


def notice_delivery_entry(
    *, time: datetime, client_id: str, department: str, citizen_id: str, source: str | None
) -> AuditEntry:
    """An access notice sent to the citizen portal's webhook: one line of the citizen's
    access log, so audited as the portal reading it (``access-log``). No request, so an id
    of its own."""
    return AuditEntry.built(
        time=time,
        request_id=uuid.uuid4().hex,
        client_id=client_id,
        department=department,
        action="access-log",
        citizen_id=citizen_id,
        decision="permit",
        status=200,
        source=source,
    )


def consent_delivery_entry(
    *, time: datetime, client_id: str, department: str, citizen_id: str, owner: str, source: str | None
) -> AuditEntry:
    """A ``consent.changed`` event sent to the consumer's webhook: which citizen's consent
    to an agreement of ``owner`` changed, no field released. No request, so an id of its own."""
    return AuditEntry.built(
        time=time,
        request_id=uuid.uuid4().hex,
        client_id=client_id,
        department=department,
        action="deliver",
        citizen_id=citizen_id,
        owners=[owner],
        decision="permit",
        reasons=[Reason.built(field="", effect="permit", reason="consent.changed")],
        status=200,
        source=source,
    )


def query_entry(
    principal: Principal,
    action: Action = "audit-query",
    *,
    source: str | None,
    citizen_id: str | None = None,
    owners: Sequence[str] = (),
    status: int = 200,
) -> AuditEntry:
    """An audit query (search, export, usage report, proof, verification, simulation) or a
    citizen's access log, read by ``principal``; with a ``status`` of 400 or more, one
    refused after it read the log (decision ``deny``)."""
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=principal.client_id,
        department=principal.department,
        on_behalf_of=principal.on_behalf_of,
        action=action,
        citizen_id=citizen_id,
        owners=owners,
        decision="permit" if status < 400 else "deny",
        status=status,
        source=source,
    )


def case_entry(access: AccessFacts, case_ref: str, *, closed: bool, time: datetime) -> AuditEntry:
    """A consumer closing one of its cases (``closed``), or refused (no such case of its
    department). No citizen: a case spans many."""
    return AuditEntry.built(
        time=time,
        request_id=access.request_id,
        client_id=access.principal.client_id,
        department=access.principal.department,
        on_behalf_of=access.principal.on_behalf_of,
        action="case-close",
        case_ref=case_ref,
        decision="permit" if closed else "deny",
        status=200 if closed else 404,
        source=access.source,
    )


def policy_change_entry(change: PolicyChange) -> AuditEntry:
    """A new agreement version; its author is the client (and officer) who made it."""
    return AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=change.author,
        department=change.owner,
        action="policy-change",
        owners=[change.owner],
        decision="permit",
        reasons=[
            Reason(
                field="",
                effect=change.status,
                agreement=change.agreement_id,
                version=change.version,
                digest=change.digest or None,
                reason=change.reason,
            )
        ],
        status=200,
        document=change.document or None,
    )


def policy_refusal_entry(
    principal: Principal,
    *,
    agreement_id: str | None,
    change: str,
    status: int,
    why: str,
    source: str | None,
    owners: Iterable[str] = (),
) -> AuditEntry:
    """A change of an agreement (``change``: ``created``, ``replaced``, ``revoked``) that
    ``principal`` asked for and was refused with ``status``: 403 for an agreement over other
    departments' fields (``owners`` names them beside the caller's department), or one only
    its owner changes; 404 for one the caller's department does not have, another's or
    none, recorded alike so the entry of one is the entry of any (only the id asked for is
    named). ``agreement_id`` is None when the request named no valid one.

    Decision ``deny``, with no version and no document: nothing was stored, and the
    releases check takes agreement versions from permitted policy-change entries only."""
    said = f"agreement {agreement_id or '(no valid id)'} not {change}: {why}"
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=principal.client_id,
        department=principal.department,
        on_behalf_of=principal.on_behalf_of,
        action="policy-change",
        owners=sorted({principal.department, *owners}),
        decision="deny",
        reasons=[Reason.built(field="", effect="deny", agreement=agreement_id, reason=said)],
        status=status,
        source=source,
    )


def explain_refusal_entry(
    principal: Principal,
    *,
    consumer: str | None,
    action: str,
    owners: Iterable[str],
    source: str | None,
) -> AuditEntry:
    """An explanation ``principal`` asked for and was refused (403): a data owner asking how
    another ``consumer`` (None when it is no department the catalog knows) is decided on
    fields of other departments (``owners``, beside the caller's; fields the catalog does
    not know name none). It names the consumer and the action asked about and those
    departments, never the fields, a citizen or a value."""
    said = (
        f"explain as {consumer or '(an unknown department)'} would {action} refused: "
        f"{principal.department} explains decisions on its own fields or for its own department"
    )
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=principal.client_id,
        department=principal.department,
        on_behalf_of=principal.on_behalf_of,
        action="explain",
        owners=sorted({principal.department, *owners}),
        decision="deny",
        reasons=[Reason.built(field="", effect="deny", reason=said)],
        status=403,
        source=source,
    )


def catalog_change_entry(change: CatalogChange) -> AuditEntry:
    """The new catalog in full, and one reason per department whose signing key changed,
    naming the old and the new verifier key (``none`` for no key)."""
    reasons = [Reason(field="", effect="stored", version=change.version, reason=change.reason)]
    for department, old, new in change.key_changes:
        reasons.append(
            Reason(
                field="",
                effect="signing-key",
                reason=f"{department} signing key: {old or 'none'} -> {new or 'none'}",
            )
        )
    return AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=change.author,
        department="",
        action="catalog-change",
        owners=sorted({department for department, _old, _new in change.key_changes}),
        decision="permit",
        reasons=reasons,
        status=200,
        document=change.document,
    )


def key_event_entry(event: KeyEvent, actor: str = SERVICE_ACTOR) -> AuditEntry:
    """A key operation by ``actor``. The detail holds versions, counts and pseudonymous
    citizen ids; never key material."""
    detail = ", ".join(f"{key}={value}" for key, value in sorted(event.detail.items()))
    department = event.department or ""
    return AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=actor,
        department=department,
        action="key-operation",
        citizen_id=str(event.detail["citizen_id"]) if "citizen_id" in event.detail else None,
        owners=[department] if department else [],
        decision="permit",
        reasons=[Reason(field="", effect="permit", reason=f"{event.action}: {detail}")],
        status=200,
    )


def choice_entry(
    principal: Principal,
    action: Action,
    *,
    source: str | None,
    citizen_id: str,
    owner: str,
    consumer: str,
    agreement: str,
    version: int,
    change: str,
    purpose: str | None = None,
    document: str | None = None,
) -> AuditEntry:
    """A citizen's consent or objection made or changed through ``principal`` (the citizen
    portal or the console). ``change`` is the new status (``active``, ``paused``,
    ``revoked``; ``objected``, ``withdrawn``); ``document`` a consent's signed terms as
    canonical JSON, so the log alone holds every consent a release relied on."""
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=principal.client_id,
        department=principal.department,
        on_behalf_of=principal.on_behalf_of,
        action=action,
        citizen_id=citizen_id,
        owners=[owner],
        decision="permit",
        reasons=[
            Reason.built(
                field="", effect=change, agreement=agreement, version=version, reason=f"{consumer}: {change}"
            )
        ],
        purpose=purpose,
        status=200,
        source=source,
        document=document,
    )


def explain_entry(
    principal: Principal,
    *,
    source: str | None,
    citizen_id: str,
    consumer: str,
    action: str,
    owners: Iterable[str],
    decided: Sequence[FieldDecision],
    purpose: str | None,
    case_ref: str | None,
) -> AuditEntry:
    """Decisions explained with one citizen's consents and objections, which the
    explanation reveals: who asked (``principal``), for which consumer and action, and each
    field's decision. Nothing is released, and the entry is not on the citizen's access
    log (neither are the choices themselves)."""
    asked = Reason.built(field="", effect="explained", reason=f"as {consumer} would {action}")
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=principal.client_id,
        department=principal.department,
        on_behalf_of=principal.on_behalf_of,
        action="explain",
        citizen_id=citizen_id,
        owners=sorted(set(owners)),
        fields_requested=[d.field for d in decided],
        decision="permit",
        reasons=[asked, *(_reason(d) for d in decided)],
        purpose=purpose,
        case_ref=case_ref,
        status=200,
        source=source,
    )


def subscription_change_entry(
    *,
    client_id: str,
    department: str,
    subscription_id: str,
    change: str,
    fields: Sequence[str],
    owners: Iterable[str],
    purpose: str | None,
    status: int,
    source: str | None,
    on_behalf_of: str | None = None,
    why: str = "",
    refused: bool = False,
) -> AuditEntry:
    """A subscription that changed (``change``: ``deleted``, ``disabled``, ``enabled``,
    ``secret-rotated``, with ``why`` when there is more to say), named with its fields, their
    owners and its purpose; or, ``refused``, a change that was asked for and not made
    (decision deny, ``why`` saying why). It releases nothing and names no citizen."""
    said = f"subscription {subscription_id} {'not ' if refused else ''}{change}" + (f": {why}" if why else "")
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=client_id,
        department=department,
        on_behalf_of=on_behalf_of,
        action="subscription-change",
        owners=sorted(set(owners)),
        fields_requested=fields,
        decision="deny" if refused else "permit",
        reasons=[Reason.built(field="", effect=change, reason=said)],
        purpose=purpose,
        status=status,
        source=source,
    )


def subscription_refusal_entry(
    *,
    client_id: str,
    department: str,
    subscription_id: str,
    change: str,
    source: str | None,
    on_behalf_of: str | None = None,
) -> AuditEntry:
    """A change (``change``: ``deleted``, ...) refused with 404 because ``department`` has no
    such subscription: another department's, an unknown or a deleted one, recorded alike so
    that the log's entry of one is the entry of any (only the id asked for is named)."""
    said = f"subscription {subscription_id} not {change}: {department} has no such subscription"
    return AuditEntry.built(
        time=utcnow(),
        request_id=current_request_id(),
        client_id=client_id,
        department=department,
        on_behalf_of=on_behalf_of,
        action="subscription-change",
        decision="deny",
        reasons=[Reason.built(field="", effect="deny", reason=said)],
        status=404,
        source=source,
    )


def operator_entry(actor: str, action: str, department: str, what: str) -> AuditEntry:
    """An operator command that changed who may call the service or what signs tokens
    (``client-create``, ``client-disable``, ``signing-key-rotate``), or made a key (init)."""
    return AuditEntry.model_validate(
        {
            "time": utcnow().isoformat(),
            "request_id": current_request_id(),
            "client_id": actor,
            "department": department,
            "action": action,
            "owners": [],
            "decision": "permit",
            "reasons": [{"field": "", "effect": "permit", "reason": what}],
            "status": 200,
        }
    )
