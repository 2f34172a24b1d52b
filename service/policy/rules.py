"""The rules one agreement must keep against the catalog: the policy domain's own
validation, which the loader (``tellonce policies apply``), the API and the
console all run (the last two through ``service.policy.checks``).

Each rule names the parts of the agreement it reads. A part that failed its shape is
``unknown``: no rule that reads it is judged (its problem would be about a value the
author did not write, or one already refused), and every other rule is, so independent
problems are all reported at once. A rule that judges a list item by item (a field's
owner, a purpose's existence) still judges the items of an unknown list that passed their
own shape, where only other items failed theirs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from service.catalog.schemas import Catalog
from service.policy.engine import CHOICE_ACTIONS, ConditionError, check_condition_names, compile_condition
from service.policy.schemas import AgreementSpec
from service.policy.signing import OwnerVerifier
from service.policy.terms import MAX_DELAY_LIMIT, parse_duration
from service.records import values as record_values
from service.sourcefile import PathKey

Problem = tuple[PathKey, str]
T = TypeVar("T")
# The items of a list part, each with its index in the list as sent.
Items = Sequence[tuple[int, Any]]


def signature_problem(content: dict[str, Any], owner: str, catalog: Catalog) -> str | None:
    """Why ``content`` lacks a valid signature by ``owner``; ``None`` when it has one or
    ``owner`` has no signing key (a department without a key keeps working unsigned)."""
    vkey = catalog.signing_keys.get(owner)
    if vkey is None:
        return None
    return OwnerVerifier.parse(vkey).problem(content, owner)


# Ids an agreement cannot take: ``/v1/policies/<id>`` names another route there
# (``POST /v1/policies/simulate``), so no method of the agreement's routes would reach it.
RESERVED_AGREEMENT_IDS = frozenset({"simulate"})

# Free text an agreement carries. A NUL is refused in all of it: PostgreSQL cannot store
# one in text, and SQLite would, so the same agreement would be kept on one and not the
# other (``service.policy.agreements.revoke_agreement`` holds a revoke's reason to it too).
NUL_REFUSED = "must not contain a NUL character"


def has_nul(text: str | None) -> bool:
    return text is not None and "\x00" in text


class _Known:
    """Which parts of an agreement a rule may read: those that passed their shape, and the
    well-formed items of a list part only some of whose items failed theirs."""

    def __init__(self, unknown: Collection[str], items: Mapping[str, Items]) -> None:
        self._unknown = frozenset(unknown)
        self._items = items

    def __call__(self, *parts: str) -> bool:
        return self._unknown.isdisjoint(parts)

    def items(self, part: str, values: Sequence[T]) -> list[tuple[int, T]]:
        """The items of list ``part`` (``values`` when it passed its shape) a rule judging
        one item at a time may read, each with its index as sent."""
        if part not in self._unknown:
            return list(enumerate(values))
        return list(self._items.get(part, ()))

    @property
    def any_unknown(self) -> bool:
        return bool(self._unknown)


def check_agreement(
    spec: AgreementSpec,
    owner: str,
    catalog: Catalog,
    *,
    signed: bool = True,
    unknown: Collection[str] = frozenset(),
    items: Mapping[str, Items] | None = None,
) -> list[Problem]:
    """Every way ``spec`` does not fit ``catalog`` when granted by ``owner``; ``[]`` if none.

    ``unknown``: the parts that failed their shape (``spec`` holds a stand-in for each);
    a rule reading any of them is not judged, except item by item over ``items``: for an
    unknown list part only some of whose items failed their shape, the items that passed,
    each with its index as sent. With ``signed`` (everywhere an agreement is stored), an
    owner with a signing key must have signed it; a draft that is only simulated need not be.
    """
    known = _Known(unknown, items or {})
    problems: list[Problem] = []
    for name in ("legal_basis", "when", "max_delay", "signature"):
        if known(name) and has_nul(getattr(spec, name)):
            problems.append(((name,), NUL_REFUSED))
    if known("verify"):
        for field, claims in (spec.verify or {}).items():
            for operator, thresholds in claims.items():
                if any(isinstance(t, str) and has_nul(t) for t in thresholds):
                    problems.append((("verify", field, operator), NUL_REFUSED))
    if known("id") and spec.id in RESERVED_AGREEMENT_IDS:
        problems.append(
            (("id",), f"the id {spec.id!r} is reserved (/v1/policies/{spec.id} is another route)")
        )
    if known("consumer"):
        problems.extend(_check_consumer(spec, owner, catalog))
    problems.extend(_check_fields(known.items("fields", spec.fields), owner, catalog))
    purposes = {p.id for p in catalog.purposes}
    for index, purpose in known.items("purposes", spec.purposes):
        if purpose not in purposes:
            problems.append((("purposes", index), f"unknown purpose {purpose!r}"))
    if known("effect") and spec.effect == "permit":
        if known("purposes") and not spec.purposes:
            problems.append((("purposes",), "a permit needs at least one purpose"))
        if known("legal_basis") and not (spec.legal_basis or "").strip():
            problems.append((("legal_basis",), "a permit needs a legal basis"))
    elif known("effect", "require_case_ref") and spec.require_case_ref:
        problems.append((("require_case_ref",), "only a permit can require a case reference"))
    problems.extend(_check_disclosure(spec, known))
    if (
        known("valid_from", "valid_until")
        and spec.valid_from
        and spec.valid_until
        and spec.valid_until < spec.valid_from
    ):
        problems.append(
            (
                ("valid_until",),
                f"the end date ({spec.valid_until}) is before the start date ({spec.valid_from})",
            )
        )
    if known("when") and spec.when is not None:
        try:
            compile_condition(spec.when)
            check_condition_names(spec.when)
        except ConditionError as exc:
            problems.append((("when",), str(exc)))
    problems.extend(
        _check_identity_actions(known.items("actions", spec.actions), known.items("fields", spec.fields))
    )
    problems.extend(_check_basis(spec, known))
    if known("verify") and spec.verify is not None:
        problems.extend(_check_allowed_claims(spec, catalog, known))
    # A signature over an agreement with a part that failed its shape cannot be judged (it
    # covers what was sent, not the stand-in); a missing one can.
    if signed and known("signature") and not (known.any_unknown and spec.signature is not None):
        problem = signature_problem(spec.content(), owner, catalog)
        if problem is not None:
            problems.append((("signature",), problem))
    return problems


def _check_consumer(spec: AgreementSpec, owner: str, catalog: Catalog) -> list[Problem]:
    if catalog.department(spec.consumer) is None:
        return [(("consumer",), f"unknown department {spec.consumer!r}")]
    if spec.consumer == owner:
        return [(("consumer",), "an owner needs no agreement with itself")]
    return []


def _check_fields(fields: list[tuple[int, str]], owner: str, catalog: Catalog) -> list[Problem]:
    problems: list[Problem] = []
    owners = catalog.field_owners
    for index, field_name in fields:
        field_owner = owners.get(field_name)
        if field_owner is None:
            problems.append((("fields", index), f"unknown field {field_name!r}"))
        elif field_owner != owner:
            problems.append(
                (
                    ("fields", index),
                    f"{owner} does not own field {field_name!r} (owner: {field_owner})",
                )
            )
    return problems


def _check_disclosure(spec: AgreementSpec, known: _Known) -> list[Problem]:
    """``after-case-closed`` needs a permit and a ``max_delay`` of at most five years. A
    ``max_delay`` given with it is judged on its own even under a forbid."""
    if not known("disclosure"):
        return []
    if spec.disclosure == "immediate":
        if known("max_delay") and spec.max_delay is not None:
            return [(("max_delay",), "max_delay applies only with disclosure: after-case-closed")]
        return []
    problems: list[Problem] = []
    forbids = known("effect") and spec.effect != "permit"
    if forbids:
        problems.append((("disclosure",), "only a permit can delay disclosure"))
    if not known("max_delay"):
        return problems
    if spec.max_delay is None:
        # Asked for only where the delay is allowed: under a forbid, the delay is the problem.
        if not forbids:
            problems.append(
                (("max_delay",), "disclosure: after-case-closed needs a max_delay, such as P365D")
            )
        return problems
    try:
        delay = parse_duration(spec.max_delay)
    except ValueError as exc:
        return [*problems, (("max_delay",), str(exc))]
    if delay <= timedelta(0) or delay > MAX_DELAY_LIMIT:
        limit = MAX_DELAY_LIMIT.days
        problems.append((("max_delay",), f"max_delay must be more than nothing and at most {limit} days"))
    return problems


# Actions decided on the register's identity field alone. Granted on any other field they
# would do nothing, so (DESIGN, "Clarifications fixed by use") such an agreement is refused,
# naming each other field: lookup and erase are granted with ``fields: [national_id]``.
IDENTITY_FIELD = "national_id"
IDENTITY_ACTIONS = ("lookup", "erase")


def _check_identity_actions(actions: list[tuple[int, str]], fields: list[tuple[int, str]]) -> list[Problem]:
    problems: list[Problem] = []
    for _index, action in actions:
        if action not in IDENTITY_ACTIONS:
            continue
        for index, field in fields:
            if field == IDENTITY_FIELD:
                continue
            problems.append(
                (
                    ("fields", index),
                    f"{action} is granted on {IDENTITY_FIELD}, not on {field}; "
                    f"grant {action} in an agreement of its own with fields: [{IDENTITY_FIELD}]",
                )
            )
    return problems


def _check_basis(spec: AgreementSpec, known: _Known) -> list[Problem]:
    """A consent-based or objectable agreement is a permit over the actions that release a
    citizen's data (the citizen's choice is known only once the citizen is); a consent is
    given to one purpose, so a consent-based agreement names exactly one."""
    if not known("basis") or spec.basis == "statutory":
        return []
    problems: list[Problem] = []
    if known("effect") and spec.effect != "permit":
        problems.append((("basis",), f"only a permit can have basis {spec.basis}"))
    for index, action in known.items("actions", spec.actions):
        if action not in CHOICE_ACTIONS:
            allowed = ", ".join(sorted(CHOICE_ACTIONS))
            problems.append(
                (
                    ("actions", index),
                    f"an agreement with basis {spec.basis} grants only {allowed}, not {action}",
                )
            )
    if known("purposes") and spec.basis == "consent" and len(spec.purposes) > 1:
        problems.append((("purposes",), "a consent is given to one purpose: name exactly one"))
    return problems


def _check_allowed_claims(spec: AgreementSpec, catalog: Catalog, known: _Known) -> list[Problem]:
    """The ``verify:`` map: only on a permit granting verify, only its own fields, and
    every threshold a valid operand of the field's type (dates may be ``today-18y``)."""
    problems: list[Problem] = []
    if known("actions") and "verify" not in spec.actions:
        problems.append((("verify",), "allowed claims apply only to an agreement that grants verify"))
    if known("effect") and spec.effect != "permit":
        problems.append((("verify",), "allowed claims apply to permits only"))
    today = datetime.now(UTC).date()
    for field_name, claims in (spec.verify or {}).items():
        field = catalog.field(field_name)
        if field is None or (known("fields") and field_name not in spec.fields):
            problems.append(
                (
                    ("verify", field_name),
                    f"allowed claims name {field_name!r}, which is not one of its fields",
                )
            )
            continue
        if not claims:
            problems.append((("verify", field_name), f"list at least one allowed claim for {field_name}"))
        for operator, thresholds in claims.items():
            where = ("verify", field_name, operator)
            if operator in ("lte", "gte") and field.type not in ("date", "integer"):
                problems.append((where, f"the claim '{operator}' applies only to dates and integers"))
                continue
            if not thresholds:
                problems.append((where, f"list at least one threshold for '{operator}' on {field_name}"))
            for index, threshold in enumerate(thresholds):
                try:
                    record_values.operand(field, threshold, today)
                except record_values.ValueRejected as exc:
                    problems.append(
                        (
                            (*where, index),
                            f"the threshold {threshold!r} for {field_name} {exc}",
                        )
                    )
    return problems
