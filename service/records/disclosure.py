"""What a caller may learn about a citizen: the rules every read shares, once.

Pure: no I/O.
- ``may_know``: whether a caller may learn that a citizen exists: it may look citizens up,
  or is a party to an agreement over a field it asked for (permitted, or a near miss).
- ``refusal``: when nothing asked for is allowed, 403 if the caller may know the citizen
  exists (``consent-required`` when a consent-based agreement lacks only the citizen's
  consent), else 404, so a refusal never confirms a citizen to a stranger.
- ``readable``: an unknown citizen is 404; an erased one is 410 to a caller that may know
  it exists and 404 to anyone else. Read, verify and history raise it; batch-get says the
  same per citizen in ``withheld`` (``unavailable_reason``).
- ``present``: for writes and erasure, by owners: 404 unknown, 410 erased.
- ``may_know_writing``: whether a refused writer may learn that; one that may not is told
  404 whether the citizen exists, is unknown or was erased.
- ``released``: the ``FieldOut`` of each allowed field, from its current row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.catalog.schemas import Catalog
from service.errors import ServiceError
from service.policy.engine import CONSENT_REQUIRED, CompiledPolicy, Decision, RequestContext
from service.records import values
from service.records.errors import CitizenErased, CitizenNotFound, ConsentRequired, NotPermitted
from service.records.repository import CitizenRow, ValueRow
from service.records.schemas import FieldOut, Withheld
from service.records.validation import NATIONAL_ID_FIELD

NOT_KNOWN = "No citizen with that id is known to you."
ERASED = "This citizen's record was erased."
# batch-get's withheld reasons for a citizen it cannot answer for: the same facts that
# read states as 404 and 410.
NOT_KNOWN_REASON = "no such citizen is available to you"
ERASED_REASON = "the citizen's record was erased"

Plain = Mapping[tuple[str, str, int], values.JsonValue]


def erased(citizen: CitizenRow) -> bool:
    return citizen.status == "erased"


def present(citizen: CitizenRow | None) -> CitizenRow:
    """For writes and erasure: the citizen, if it exists and is not erased; else 404 or 410."""
    if citizen is None:
        raise CitizenNotFound(NOT_KNOWN)
    if erased(citizen):
        raise CitizenErased(ERASED)
    return citizen


def may_know(
    policy: CompiledPolicy, department: str, action: str, requested: Sequence[str], context: RequestContext
) -> bool:
    """Whether the caller may learn that a citizen exists (or existed, once erased).

    It may when it may look citizens up for this purpose, or when it is a party to an
    agreement over one of the fields it asked for: one that permits the field, or one
    that just missed (it needs a case reference, has expired, or its condition does not
    hold for this citizen). A field the caller owns is permitted to it, so it may too."""
    lookup = policy.decide(department, "lookup", [NATIONAL_ID_FIELD], context)
    if lookup[NATIONAL_ID_FIELD].effect == "permit":
        return True
    explained = policy.explain(department, action, requested, context)
    return any(
        explanation.decision.effect == "permit"
        or any(miss.effect == "permit" for miss in explanation.near_misses)
        for explanation in explained.values()
    )


def may_know_writing(
    policy: CompiledPolicy,
    department: str,
    requested: Sequence[str],
    decisions: Mapping[str, Decision],
    context: RequestContext,
) -> bool:
    """Whether a writer refused some of ``requested`` may learn whether the citizen exists
    or was erased: it may when it may write one of the fields (the write would tell it),
    when a ``write`` agreement names it over one of them (for whatever purpose: a delegate
    that left its purpose out is still a party), or when it may look citizens up."""
    return (
        any(d.effect == "permit" for d in decisions.values())
        or policy.party_to(department, "write", requested)
        or may_know(policy, department, "write", requested, context)
    )


def readable(citizen: CitizenRow | None, reason: str | None) -> CitizenRow:
    """The citizen a read may go on with, given ``unavailable_reason``'s answer; else 410
    for an erased citizen the caller may know existed, and 404 for any other."""
    if reason == ERASED_REASON:
        raise CitizenErased(ERASED)
    if citizen is None or reason is not None:
        raise CitizenNotFound(NOT_KNOWN)
    return citizen


def unavailable_reason(
    citizen: CitizenRow | None,
    policy: CompiledPolicy,
    department: str,
    action: str,
    requested: Sequence[str],
    context: RequestContext,
) -> str | None:
    """Why no field of this citizen can be read (unknown, or erased), or None if it can."""
    if citizen is None:
        return NOT_KNOWN_REASON
    if not erased(citizen):
        return None
    return ERASED_REASON if may_know(policy, department, action, requested, context) else NOT_KNOWN_REASON


def refusal(
    policy: CompiledPolicy,
    department: str,
    action: str,
    requested: Sequence[str],
    decisions: Mapping[str, Decision],
    context: RequestContext,
) -> ServiceError:
    """The error for a request of which nothing is allowed: 403 if the caller may know the
    citizen exists (``may_know``), else 404."""
    if not may_know(policy, department, action, requested, context):
        return CitizenNotFound(NOT_KNOWN)
    reasons = "; ".join(decisions[n].reason for n in requested)
    if any(decisions[n].reason == CONSENT_REQUIRED for n in requested):
        return ConsentRequired(
            f"Released only with the citizen's active consent, which the citizen has not given: {reasons}"
        )
    return NotPermitted(f"No agreement permits this request: {reasons}")


def allowed(requested: Sequence[str], decisions: Mapping[str, Decision]) -> list[str]:
    return [name for name in requested if decisions[name].effect == "permit"]


def withheld(requested: Sequence[str], decisions: Mapping[str, Decision]) -> list[Withheld]:
    return [
        Withheld(field=n, reason=decisions[n].reason) for n in requested if decisions[n].effect != "permit"
    ]


def released(
    catalog: Catalog,
    citizen_id: str,
    names: Sequence[str],
    current: Mapping[tuple[str, str], ValueRow],
    plain: Plain,
) -> dict[str, FieldOut]:
    """The allowed fields ``names`` of one citizen; a field never written has no value."""
    out: dict[str, FieldOut] = {}
    for name in names:
        spec = catalog.field(name)
        owner = spec.owner if spec else ""
        row = current.get((citizen_id, name))
        if row is None:
            out[name] = FieldOut(value=None, version=None, updated_at=None, owner=owner)
        else:
            out[name] = FieldOut(
                value=plain[(citizen_id, name, row.version)],
                version=row.version,
                updated_at=row.written_at,
                owner=owner,
            )
    return out
