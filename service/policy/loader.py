"""Load and validate a policy folder: ``catalog.yaml`` plus one agreements file per owner.

Every problem is reported, each as ``FILE:LINE: message``; nothing is returned unless
the whole folder is valid. ``check_agreement`` is shared with the API and the console
(through ``service.policy.checks``), which report the same problems in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.catalog.loader import CATALOG_FILE, load_catalog
from service.catalog.schemas import Catalog
from service.policy.engine import CHOICE_ACTIONS, ConditionError, check_condition_names, compile_condition
from service.policy.schemas import AgreementSpec, PolicyFile
from service.policy.signing import OwnerVerifier
from service.policy.terms import MAX_DELAY_LIMIT, parse_duration
from service.records import values as record_values
from service.sourcefile import PathKey, SourceDocument, SourceError, SourceFileError, read_yaml

Problem = tuple[PathKey, str]


@dataclass(frozen=True)
class SourcedAgreement:
    """An agreement read from a file, with where it came from."""

    spec: AgreementSpec
    owner: str
    file: str
    line: int


@dataclass(frozen=True)
class PolicyFolder:
    catalog: Catalog
    agreements: tuple[SourcedAgreement, ...]


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


def check_agreement(
    spec: AgreementSpec, owner: str, catalog: Catalog, *, signed: bool = True
) -> list[Problem]:
    """Every way ``spec`` does not fit ``catalog`` when granted by ``owner``; ``[]`` if none.

    With ``signed`` (everywhere an agreement is stored), an owner with a signing key must
    have signed it; a draft that is only simulated need not be.
    """
    problems: list[Problem] = []
    for name in ("legal_basis", "when", "max_delay", "signature"):
        if has_nul(getattr(spec, name)):
            problems.append(((name,), NUL_REFUSED))
    for field, claims in (spec.verify or {}).items():
        for operator, thresholds in claims.items():
            if any(isinstance(t, str) and has_nul(t) for t in thresholds):
                problems.append((("verify", field, operator), NUL_REFUSED))
    if spec.id in RESERVED_AGREEMENT_IDS:
        problems.append(
            (("id",), f"the id {spec.id!r} is reserved (/v1/policies/{spec.id} is another route)")
        )
    departments = {d.id for d in catalog.departments}
    purposes = {p.id for p in catalog.purposes}
    owners = catalog.field_owners
    if spec.consumer not in departments:
        problems.append((("consumer",), f"unknown department {spec.consumer!r}"))
    elif spec.consumer == owner:
        problems.append((("consumer",), "an owner needs no agreement with itself"))
    for index, field_name in enumerate(spec.fields):
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
    for index, purpose in enumerate(spec.purposes):
        if purpose not in purposes:
            problems.append((("purposes", index), f"unknown purpose {purpose!r}"))
    if spec.effect == "permit":
        if not spec.purposes:
            problems.append((("purposes",), "a permit needs at least one purpose"))
        if not (spec.legal_basis or "").strip():
            problems.append((("legal_basis",), "a permit needs a legal basis"))
    elif spec.require_case_ref:
        problems.append((("require_case_ref",), "only a permit can require a case reference"))
    problems.extend(_check_disclosure(spec))
    if spec.valid_from and spec.valid_until and spec.valid_until < spec.valid_from:
        problems.append(
            (
                ("valid_until",),
                f"the end date ({spec.valid_until}) is before the start date ({spec.valid_from})",
            )
        )
    if spec.when is not None:
        try:
            compile_condition(spec.when)
            check_condition_names(spec.when)
        except ConditionError as exc:
            problems.append((("when",), str(exc)))
    problems.extend(_check_identity_actions(spec))
    problems.extend(_check_basis(spec))
    if spec.verify is not None:
        problems.extend(_check_allowed_claims(spec, catalog))
    if signed:
        problem = signature_problem(spec.content(), owner, catalog)
        if problem is not None:
            problems.append((("signature",), problem))
    return problems


def _check_disclosure(spec: AgreementSpec) -> list[Problem]:
    """``after-case-closed`` needs a permit and a ``max_delay`` of at most five years."""
    if spec.disclosure == "immediate":
        if spec.max_delay is not None:
            return [(("max_delay",), "max_delay applies only with disclosure: after-case-closed")]
        return []
    if spec.effect != "permit":
        return [(("disclosure",), "only a permit can delay disclosure")]
    if spec.max_delay is None:
        return [(("max_delay",), "disclosure: after-case-closed needs a max_delay, such as P365D")]
    try:
        delay = parse_duration(spec.max_delay)
    except ValueError as exc:
        return [(("max_delay",), str(exc))]
    if delay <= timedelta(0) or delay > MAX_DELAY_LIMIT:
        limit = MAX_DELAY_LIMIT.days
        return [(("max_delay",), f"max_delay must be more than nothing and at most {limit} days")]
    return []


# Actions decided on the register's identity field alone. Granted on any other field they
# would do nothing, so (DESIGN, "Clarifications fixed by use") such an agreement is refused,
# naming each other field: lookup and erase are granted with ``fields: [national_id]``.
IDENTITY_FIELD = "national_id"
IDENTITY_ACTIONS = ("lookup", "erase")


def _check_identity_actions(spec: AgreementSpec) -> list[Problem]:
    problems: list[Problem] = []
    for action in spec.actions:
        if action not in IDENTITY_ACTIONS:
            continue
        for index, field in enumerate(spec.fields):
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


def _check_basis(spec: AgreementSpec) -> list[Problem]:
    """A consent-based or objectable agreement is a permit over the actions that release a
    citizen's data (the citizen's choice is known only once the citizen is); a consent is
    given to one purpose, so a consent-based agreement names exactly one."""
    if spec.basis == "statutory":
        return []
    problems: list[Problem] = []
    if spec.effect != "permit":
        problems.append((("basis",), f"only a permit can have basis {spec.basis}"))
    for index, action in enumerate(spec.actions):
        if action not in CHOICE_ACTIONS:
            allowed = ", ".join(sorted(CHOICE_ACTIONS))
            problems.append(
                (
                    ("actions", index),
                    f"an agreement with basis {spec.basis} grants only {allowed}, not {action}",
                )
            )
    if spec.basis == "consent" and len(spec.purposes) > 1:
        problems.append((("purposes",), "a consent is given to one purpose: name exactly one"))
    return problems


def _check_allowed_claims(spec: AgreementSpec, catalog: Catalog) -> list[Problem]:
    """The ``verify:`` map: only on a permit granting verify, only its own fields, and
    every threshold a valid operand of the field's type (dates may be ``today-18y``)."""
    problems: list[Problem] = []
    if "verify" not in spec.actions:
        problems.append((("verify",), "allowed claims apply only to an agreement that grants verify"))
    if spec.effect != "permit":
        problems.append((("verify",), "allowed claims apply to permits only"))
    today = datetime.now(UTC).date()
    for field_name, claims in (spec.verify or {}).items():
        field = catalog.field(field_name)
        if field_name not in spec.fields or field is None:
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


def policy_files(directory: Path) -> list[Path]:
    """The policy files of a folder: every ``*.yaml`` but the catalog."""
    return sorted(p for p in directory.glob("*.yaml") if p.name != CATALOG_FILE)


def validated_policy_file(document: SourceDocument, errors: list[SourceError]) -> PolicyFile | None:
    """The policy file ``document`` holds, or None with its problems added to ``errors``."""
    try:
        return PolicyFile.model_validate(document.data)
    except ValidationError as exc:
        errors.extend(document.pydantic_errors(exc))
        return None


def load_policy_folder(directory: Path) -> PolicyFolder:
    """Read ``DIR/catalog.yaml`` and ``DIR/*.yaml``; raises ``SourceFileError`` with every problem."""
    errors: list[SourceError] = []
    catalog: Catalog | None = None
    try:
        catalog = load_catalog(directory)
    except SourceFileError as exc:
        errors.extend(exc.errors)
    agreements: list[SourcedAgreement] = []
    seen_ids: dict[str, str] = {}
    seen_owners: dict[str, str] = {}
    for path in policy_files(directory):
        try:
            document = read_yaml(path)
        except SourceFileError as exc:
            errors.extend(exc.errors)
            continue
        if not isinstance(document.data, dict):
            errors.append(document.error((), "a policy file must be a mapping with owner and agreements"))
            continue
        policy_file = validated_policy_file(document, errors)
        if policy_file is None:
            continue
        owner = policy_file.owner
        if catalog is not None and catalog.department(owner) is None:
            errors.append(document.error(("owner",), f"unknown department {owner!r}"))
        if owner in seen_owners:
            errors.append(
                document.error(("owner",), f"owner {owner} already has a file: {seen_owners[owner]}")
            )
        seen_owners.setdefault(owner, document.file)
        for index, raw in enumerate(policy_file.agreements):
            where: PathKey = ("agreements", index)
            line = document.line_of(where)
            # Ids are checked even on entries that fail the schema, so every clash is named.
            raw_id = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(raw_id, str):
                if raw_id in seen_ids:
                    errors.append(
                        document.error(
                            (*where, "id"), f"duplicate agreement id {raw_id!r} (first in {seen_ids[raw_id]})"
                        )
                    )
                else:
                    seen_ids[raw_id] = f"{document.file}:{line}"
            try:
                spec = AgreementSpec.model_validate(raw)
            except ValidationError as exc:
                errors.extend(document.pydantic_errors(exc, prefix=where))
                continue
            if catalog is not None:
                for loc, message in check_agreement(spec, owner, catalog):
                    errors.append(document.error((*where, *loc), f"agreement {spec.id}: {message}"))
            agreements.append(SourcedAgreement(spec, owner, document.file, line))
    if errors or catalog is None:
        raise SourceFileError(errors)
    return PolicyFolder(catalog, tuple(agreements))
