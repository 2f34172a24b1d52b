"""What a caller may learn about a citizen: the rules every read shares, once.

Pure: no I/O.
- ``present``: an unknown citizen is 404; an erased one is 410, to read, batch-get,
  verify, history and write alike (batch-get says it per citizen, in ``withheld``).
- ``refusal``: when nothing asked for is allowed, 403 if the caller may know the citizen
  exists, else 404, so a refusal never confirms a citizen to a stranger.
- ``released``: the ``FieldOut`` of each allowed field, from its current row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.audit.schemas import Decision as AuditDecision
from service.catalog.schemas import Catalog
from service.errors import ServiceError
from service.policy.engine import CompiledPolicy, Decision, RequestContext
from service.records import values
from service.records.errors import CitizenErased, CitizenNotFound, NotPermitted
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
    """The citizen, if it exists and is not erased; else 404 or 410."""
    if citizen is None:
        raise CitizenNotFound(NOT_KNOWN)
    if erased(citizen):
        raise CitizenErased(ERASED)
    return citizen


def refusal(
    policy: CompiledPolicy,
    department: str,
    action: str,
    requested: Sequence[str],
    decisions: Mapping[str, Decision],
    context: RequestContext,
) -> ServiceError:
    """The error for a request of which nothing is allowed: 403 if the caller may know the
    citizen exists, else 404.

    A caller may know when it may look citizens up for this purpose, or when it is a party
    to an agreement over one of the fields that just missed (it needs a case reference,
    has expired, or its condition does not hold for this citizen).
    """
    lookup = policy.decide(department, "lookup", [NATIONAL_ID_FIELD], context)
    explained = policy.explain(department, action, requested, context)
    may_know = lookup[NATIONAL_ID_FIELD].effect == "permit" or any(
        miss.effect == "permit" for explanation in explained.values() for miss in explanation.near_misses
    )
    if not may_know:
        return CitizenNotFound(NOT_KNOWN)
    reasons = "; ".join(decisions[n].reason for n in requested)
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


def summary(requested: Sequence[str], released: Sequence[str]) -> AuditDecision:
    """The audit's decision for a request: permit, partial or deny."""
    if not requested or not released:
        return "deny"
    return "permit" if len(released) == len(requested) else "partial"
