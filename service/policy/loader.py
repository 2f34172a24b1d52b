"""Load and validate a policy folder: ``catalog.yaml`` plus one agreements file per owner.

Every problem is reported, each as ``FILE:LINE: message``; nothing is returned unless
the whole folder is valid. Each agreement is read and judged by ``service.policy.checks``
(``read_body`` and ``rule_problems``), as the API and the console judge theirs: a schema
problem in one part does not hide the rules broken by the others. Nor does a value YAML
cannot build (an unquoted ``valid_from: 2027-13-01``): it is that entry's problem, named
with the part and the line, and the part is judged as one that failed its shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.catalog.loader import CATALOG_FILE, load_catalog
from service.catalog.schemas import Catalog
from service.policy.checks import read_body, rule_problems
from service.policy.schemas import AgreementSpec, PolicyFile
from service.sourcefile import PathKey, SourceDocument, SourceError, SourceFileError, read_yaml


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


def policy_files(directory: Path) -> list[Path]:
    """The policy files of a folder: every ``*.yaml`` but the catalog."""
    return sorted(p for p in directory.glob("*.yaml") if p.name != CATALOG_FILE)


def not_a_mapping(document: SourceDocument) -> SourceError | None:
    """The refusal of a policy file that is not a mapping (empty, a list, a scalar), or
    None: ``apply`` and ``sign`` alike refuse such a file rather than pass it over."""
    if isinstance(document.data, dict):
        return None
    return document.error((), "a policy file must be a mapping with owner and agreements")


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
            document = read_yaml(path, keep_unreadable=True)
        except SourceFileError as exc:
            errors.extend(exc.errors)
            continue
        if (refusal := not_a_mapping(document)) is not None:
            errors.append(refusal)
            errors.extend(error for _at, error in document.unreadable)
            continue
        policy_file = validated_policy_file(document, errors)
        if policy_file is None:
            errors.extend(error for _at, error in document.unreadable)
            continue
        # A value YAML could not build in an agreement entry is that entry's problem, named
        # below with the entry; one anywhere else is reported as it is.
        unreadable: dict[int, list[tuple[PathKey, SourceError]]] = {}
        for at, error in document.unreadable:
            if len(at) > 1 and at[0] == "agreements" and isinstance(at[1], int):
                unreadable.setdefault(at[1], []).append((at[2:], error))
            else:
                errors.append(error)
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
            read = read_body(raw, with_reason=False)
            errors.extend(document.schema_errors(read.schema_errors, prefix=where))
            problems = rule_problems(read, owner, catalog) if catalog is not None else []
            name = raw_id if isinstance(raw_id, str) else f"at {'.'.join(map(str, where))}"
            for part, error in unreadable.get(index, []):
                named = ": ".join(
                    [f"agreement {name}", *([".".join(map(str, part))] if part else []), error.message]
                )
                errors.append(SourceError(error.file, error.line, named))
            for loc, message in problems:
                errors.append(document.error((*where, *loc), f"agreement {name}: {message}"))
            if not read.schema_errors and not problems:
                agreements.append(SourcedAgreement(read.spec, owner, document.file, line))
    if errors or catalog is None:
        raise SourceFileError(errors)
    return PolicyFolder(catalog, tuple(agreements))
