"""Load and validate a policy folder: ``catalog.yaml`` plus one agreements file per owner.

Every problem is reported, each as ``FILE:LINE: message``; nothing is returned unless
the whole folder is valid. ``check_agreement`` is shared with the API, which reports
the same problems as 422 errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.catalog.loader import CATALOG_FILE, load_catalog
from service.catalog.schemas import Catalog
from service.policy.engine import ConditionError, compile_condition
from service.policy.schemas import AgreementSpec, PolicyFile
from service.sourcefile import PathKey, SourceError, SourceFileError, read_yaml

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


def check_agreement(spec: AgreementSpec, owner: str, catalog: Catalog) -> list[Problem]:
    """Every way ``spec`` does not fit ``catalog`` when granted by ``owner``; ``[]`` if none."""
    problems: list[Problem] = []
    departments = {d.id for d in catalog.departments}
    purposes = {p.id for p in catalog.purposes}
    owners = catalog.field_owners
    name = spec.id
    if spec.consumer not in departments:
        problems.append((("consumer",), f"agreement {name}: unknown department {spec.consumer!r}"))
    elif spec.consumer == owner:
        problems.append((("consumer",), f"agreement {name}: an owner needs no agreement with itself"))
    for index, field_name in enumerate(spec.fields):
        field_owner = owners.get(field_name)
        if field_owner is None:
            problems.append((("fields", index), f"agreement {name}: unknown field {field_name!r}"))
        elif field_owner != owner:
            problems.append(
                (
                    ("fields", index),
                    f"agreement {name}: {owner} does not own field {field_name!r} (owner: {field_owner})",
                )
            )
    for index, purpose in enumerate(spec.purposes):
        if purpose not in purposes:
            problems.append((("purposes", index), f"agreement {name}: unknown purpose {purpose!r}"))
    if spec.effect == "permit":
        if not spec.purposes:
            problems.append((("purposes",), f"agreement {name}: a permit needs at least one purpose"))
        if not (spec.legal_basis or "").strip():
            problems.append((("legal_basis",), f"agreement {name}: a permit needs a legal basis"))
    elif spec.require_case_ref:
        problems.append(
            (("require_case_ref",), f"agreement {name}: only a permit can require a case reference")
        )
    if spec.valid_from and spec.valid_until and spec.valid_until < spec.valid_from:
        problems.append(
            (
                ("valid_until",),
                f"agreement {name}: the end date (valid_until {spec.valid_until}) is before "
                f"the start date (valid_from {spec.valid_from})",
            )
        )
    if spec.when is not None:
        try:
            compile_condition(spec.when)
        except ConditionError as exc:
            problems.append((("when",), f"agreement {name}: {exc}"))
    return problems


def _policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.name != CATALOG_FILE)


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
    for path in _policy_files(directory):
        try:
            document = read_yaml(path)
        except SourceFileError as exc:
            errors.extend(exc.errors)
            continue
        if not isinstance(document.data, dict):
            errors.append(document.error((), "a policy file must be a mapping with owner and agreements"))
            continue
        try:
            policy_file = PolicyFile.model_validate(document.data)
        except ValidationError as exc:
            errors.extend(document.pydantic_errors(exc))
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
                    errors.append(document.error((*where, *loc), message))
            agreements.append(SourcedAgreement(spec, owner, document.file, line))
    if errors or catalog is None:
        raise SourceFileError(errors)
    return PolicyFolder(catalog, tuple(agreements))
