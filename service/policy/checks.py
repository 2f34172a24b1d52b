"""An agreement as submitted (a ``POST`` or ``PUT /v1/policies`` body, a draft in a
``POST /v1/policies/simulate`` body, or the console's draft), checked in one round: its
shape and the catalog rules together, every problem in words.

The shape is ``AgreementIn``'s, judged part by part; the rules are
``service.policy.rules.check_agreement``, the loader's too. A part that fails its shape is
judged by nothing else (its catalog problems would be about a value the caller did not
send), and neither is a rule that reads it; everything else is judged, so a forbid with a
consent basis, no fields and a start date in month 13 hears about all three at once. In a
list whose items failed one by one, the items that passed are judged item by item all the
same: ``fields: [Bad, tax_code]`` hears that ``Bad`` is no field name and that the owner
does not own ``tax_code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from service.catalog.schemas import Catalog, Identifier
from service.errors import sayable_name
from service.policy.engine import Action
from service.policy.rules import NUL_REFUSED, Items, Problem, check_agreement, has_nul
from service.policy.schemas import AgreementIn, AgreementSpec

# What each part of an agreement is called in a message.
LABELS = {
    "id": "the agreement id",
    "consumer": "the consumer",
    "fields": "the fields",
    "actions": "the actions",
    "purposes": "the purposes",
    "legal_basis": "the legal basis",
    "valid_from": "the start date",
    "valid_until": "the end date",
    "when": "the condition",
    "require_case_ref": "whether a case reference is required",
    "disclosure": "the disclosure",
    "max_delay": "the maximum delay",
    "effect": "the effect",
    "basis": "the basis",
    "signature": "the signature",
    "verify": "the allowed claims",
    "reason": "the reason",
}
_NEEDS = {
    "id": "an agreement needs an id",
    "consumer": "an agreement needs a consumer department",
    "fields": "an agreement needs at least one field",
    "actions": "an agreement needs at least one action",
}
_PATTERNS = {
    "id": "the agreement id must be lower-case letters, digits and hyphens, starting with a letter",
    "consumer": "the consumer must be a department id: lower-case letters, digits and hyphens",
    "fields": "{input!r} is not a field name: lower-case letters, digits and underscores",
    "purposes": "{input!r} is not a purpose id: lower-case letters, digits and hyphens",
}
_ORDER = {part: index for index, part in enumerate(LABELS)}
_ACTIONS = ", ".join(get_args(Action))
# What a part that failed its shape is judged with instead, so the rest can be judged.
_STAND_INS: dict[str, Any] = {
    "id": "draft",
    "consumer": "",
    "fields": [],
    "actions": [],
    "purposes": [],
    "legal_basis": None,
    "valid_from": None,
    "valid_until": None,
    "when": None,
    "require_case_ref": False,
    "disclosure": "immediate",
    "max_delay": None,
    "effect": "permit",
    "basis": "statutory",
    "signature": None,
    "verify": None,
}


@dataclass(frozen=True)
class CheckedAgreement:
    """The agreement and the reason for the change, or every problem found (then ``spec``
    is ``None``). Each problem is its location in the body and a sentence."""

    spec: AgreementSpec | None
    reason: str
    problems: list[Problem]


@dataclass(frozen=True)
class ReadAgreement:
    """A body read against the agreement's schema, each part on its own: ``spec`` holds
    the parts that passed, and a stand-in for each part in ``failed`` (refused as
    ``schema_errors``, pydantic's own account of each). ``items``: for a list part in
    ``failed`` only because some of its items failed their shape, the items that passed
    theirs, each with its index as sent (``check_agreement`` judges them one by one)."""

    spec: AgreementSpec
    reason: str
    schema_errors: list[ErrorDetails]
    failed: frozenset[str]
    items: Mapping[str, Items] = field(default_factory=dict)


def _no_part_called(part: str) -> str:
    """A part the body names that the schema has none of: named only if ``sayable_name``
    (a national id sent as a key is personal data, not a misspelt part)."""
    said = sayable_name(part)
    return "no such part" if said is None else f"no part called {said!r}"


def _where(error: ErrorDetails) -> tuple[str | int, ...]:
    """A schema refusal's location; a part the schema has none of is located by its name
    only if ``sayable_name`` (``_no_part_called``), else by the body that holds it."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden" and loc and sayable_name(loc[-1]) is None:
        return loc[:-1]
    return loc


def shape_message(error: ErrorDetails, parts: Mapping[str, str] = LABELS) -> str:
    """A schema refusal in words: what is wrong with which part of the agreement
    (``parts``: the parts it may have)."""
    loc = error["loc"]
    part = str(loc[0]) if loc else ""
    label = LABELS.get(part, part)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        return _NEEDS.get(part, f"{label} is missing")
    if kind == "extra_forbidden":
        return f"an agreement has {_no_part_called(part)}; its parts are {', '.join(parts)}"
    if kind == "string_pattern_mismatch" and part in _PATTERNS:
        return _PATTERNS[part].format(input=value)
    if kind == "too_short" and part in _NEEDS:
        return _NEEDS[part]
    if kind == "too_long":
        return f"{label} list too many items (at most {ctx.get('max_length')})"
    if kind == "string_too_long":
        return f"{label} is too long (at most {ctx.get('max_length')} characters)"
    if kind == "literal_error" and part == "actions":
        return f"{value!r} is not an action; the actions are {_ACTIONS}"
    if kind == "literal_error" and part == "effect":
        return "the effect must be permit or forbid"
    if kind == "literal_error" and part == "disclosure":
        return "the disclosure must be immediate or after-case-closed"
    if kind == "literal_error" and part == "basis":
        return "the basis must be statutory, consent or objectable"
    if kind == "literal_error" and part == "verify":
        return f"{value!r} is not a claim an agreement can allow; the claims are eq, lte and gte"
    if kind.startswith("date_"):
        return f"{label} must be a real date, like 2027-01-31"
    if kind.startswith("bool_"):
        return f"{label} must be true or false"
    if kind == "string_type":
        return f"{label} must be text"
    if kind == "list_type":
        return f"{label} must be a list"
    if kind == "dict_type":
        return f"{label} must be a mapping"
    message = str(error["msg"])
    return f"{label}: {message[:1].lower()}{message[1:]}"


# Each part's own validator: a part that passed is judged by its parsed value (a date, not
# the number or text it was sent as), like the rest of an agreement that passed whole.
_PART_VALIDATORS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(info.rebuild_annotation())
    for name, info in AgreementSpec.model_fields.items()
    if name in _STAND_INS
}


def _parsed_parts(parts: Mapping[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for name, value in parts.items():
        try:
            parsed[name] = _PART_VALIDATORS[name].validate_python(value)
        except ValidationError:
            continue  # passed within the whole, so not expected; judged as its stand-in
    return parsed


# The item validator of each list part, such as ``fields`` (a list of field names).
_ITEM_VALIDATORS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(get_args(info.annotation)[0])
    for name, info in AgreementSpec.model_fields.items()
    if name in _STAND_INS and get_origin(info.annotation) is list
}


def _well_formed_items(body: Mapping[str, Any], errors: list[ErrorDetails]) -> dict[str, Items]:
    """For each list part refused only item by item, the items that passed their shape
    (with their indices); a list refused as a whole (not a list, empty) has none."""
    refused: dict[str, set[int]] = {}
    whole: set[str] = set()
    for error in errors:
        loc = error["loc"]
        if not loc or str(loc[0]) not in _ITEM_VALIDATORS:
            continue
        if len(loc) > 1 and isinstance(loc[1], int):
            refused.setdefault(str(loc[0]), set()).add(loc[1])
        else:
            whole.add(str(loc[0]))
    items: dict[str, Items] = {}
    for name, indices in refused.items():
        values = body.get(name)
        if name in whole or not isinstance(values, list):
            continue
        kept: list[tuple[int, Any]] = []
        for index, value in enumerate(values):
            if index in indices:
                continue
            try:
                kept.append((index, _ITEM_VALIDATORS[name].validate_python(value)))
            except ValidationError:
                continue  # passed within the list, so not expected; left unjudged
        items[name] = kept
    return items


def read_body(body: Mapping[str, Any], *, with_reason: bool = True) -> ReadAgreement:
    """``body`` read as an agreement entry, with the ``reason`` for the change if
    ``with_reason`` (a draft to simulate and a policy file's entry have none)."""
    try:
        if with_reason:
            submitted = AgreementIn.model_validate(body)
            return ReadAgreement(submitted.spec(), submitted.reason, [], frozenset())
        return ReadAgreement(AgreementSpec.model_validate(body), "", [], frozenset())
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    failed = frozenset(str(error["loc"][0]) if error["loc"] else "" for error in errors)
    kept = _parsed_parts({k: v for k, v in body.items() if k in _STAND_INS and k not in failed})
    spec = AgreementSpec.model_construct(**(_STAND_INS | kept))
    reason = body.get("reason", "") if with_reason and "reason" not in failed else ""
    items = _well_formed_items(body, errors)
    return ReadAgreement(spec, reason if isinstance(reason, str) else "", errors, failed, items)


def rule_problems(
    read: ReadAgreement,
    owner: str,
    catalog: Catalog,
    *,
    agreement_id: str | None = None,
    signed: bool = True,
) -> list[Problem]:
    """Every rule ``read`` breaks as an agreement ``owner`` grants, judged on the parts
    that passed their shape (``check_agreement``). ``agreement_id`` (a change to an
    existing agreement) is the id the body must carry."""
    problems: list[Problem] = []
    if has_nul(read.reason):
        problems.append((("reason",), NUL_REFUSED))
    if agreement_id is not None and "id" not in read.failed and read.spec.id != agreement_id:
        problems.append((("id",), f"the id must be the agreement's own id, {agreement_id}"))
    problems += check_agreement(
        read.spec, owner, catalog, signed=signed, unknown=read.failed, items=read.items
    )
    return problems


def check_body(
    body: Mapping[str, Any],
    owner: str,
    catalog: Catalog,
    *,
    agreement_id: str | None = None,
    signed: bool = True,
    with_reason: bool = True,
) -> CheckedAgreement:
    """Every problem with ``body`` as an agreement ``owner`` grants, at once, in words:
    each part's shape, and every rule over the parts that passed theirs.

    ``with_reason`` as for ``read_body``; ``agreement_id`` as for ``rule_problems``;
    ``signed`` as for ``check_agreement``.
    """
    read = read_body(body, with_reason=with_reason)
    parts = LABELS if with_reason else {k: v for k, v in LABELS.items() if k != "reason"}
    problems = [(_where(error), shape_message(error, parts)) for error in read.schema_errors]
    problems += rule_problems(read, owner, catalog, agreement_id=agreement_id, signed=signed)
    if problems:
        problems.sort(key=lambda problem: _ORDER.get(str(problem[0][0]) if problem[0] else "", len(_ORDER)))
        return CheckedAgreement(None, read.reason, problems)
    return CheckedAgreement(read.spec, read.reason, [])


MAX_DRAFTS = 1000


def _in_utc(moment: datetime) -> datetime:
    # A time zone is required (the store keeps UTC), and the instant must exist in UTC:
    # 9999-12-31T23:59:59-12:00 does not.
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


class _Simulation(BaseModel):
    """The envelope of a ``POST /v1/policies/simulate`` body; each draft in ``upsert`` is
    checked as an agreement by ``check_body``."""

    model_config = ConfigDict(extra="forbid")

    upsert: list[Any] = Field(default_factory=list, max_length=MAX_DRAFTS)
    remove: list[Identifier] = Field(default_factory=list, max_length=MAX_DRAFTS)
    since: Annotated[AwareDatetime, AfterValidator(_in_utc)] | None = None


_SIMULATION_PARTS = "upsert, remove and since"


def _simulation_message(error: ErrorDetails) -> str:
    loc = error["loc"]
    part = str(loc[0]) if loc else ""
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"a simulation has {_no_part_called(part)}; its parts are {_SIMULATION_PARTS}"
    if kind == "too_long":
        what = "draft agreements" if part == "upsert" else "agreement ids"
        return f"{part} lists too many {what} (at most {(error.get('ctx') or {}).get('max_length')})"
    if kind == "list_type":
        return f"{part} must be a list of " + ("draft agreements" if part == "upsert" else "agreement ids")
    if part == "remove":
        return f"{error.get('input')!r} is not an agreement id"
    if part == "since":
        return "since must be a date and time with a time zone, like 2026-11-01T00:00:00Z"
    message = str(error["msg"])
    return f"{part}: {message[:1].lower()}{message[1:]}"


@dataclass(frozen=True)
class CheckedSimulation:
    """A simulate body read: the drafts (as sent, each a mapping), the ids to remove and
    the window start, or every problem with the envelope and with each draft's shape
    (``check_body``, called by ``agreements.simulate_draft``, judges a draft once its
    owner is known)."""

    drafts: list[tuple[int, Mapping[str, Any]]]
    remove: list[str]
    since: datetime | None
    problems: list[Problem]


def read_simulation(body: Mapping[str, Any]) -> CheckedSimulation:
    """The envelope of a simulate body, with a problem for each draft that is not a mapping.
    Each draft comes with its index in ``upsert``."""
    problems: list[Problem] = []
    upsert = body.get("upsert", [])
    try:
        checked = _Simulation.model_validate(body)
        remove, since = list(checked.remove), checked.since
    except ValidationError as exc:
        problems += [(_where(error), _simulation_message(error)) for error in exc.errors()]
        remove, since = [], None
    if not isinstance(upsert, list) or len(upsert) > MAX_DRAFTS:
        upsert = []  # refused above, as a whole
    drafts: list[tuple[int, Mapping[str, Any]]] = []
    for index, draft in enumerate(upsert):
        if isinstance(draft, Mapping):
            drafts.append((index, draft))
        else:
            problems.append((("upsert", index), "each draft must be an agreement: a mapping of its parts"))
    return CheckedSimulation(drafts, remove, since, problems)
