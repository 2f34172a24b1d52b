"""Load and validate ``catalog.yaml``; every error names the file and the line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.catalog.schemas import Catalog
from service.records.validation import NATIONAL_ID_FIELD
from service.sourcefile import SourceDocument, SourceError, SourceFileError, read_yaml

CATALOG_FILE = "catalog.yaml"


def load_catalog(directory: Path) -> Catalog:
    """Read ``DIR/catalog.yaml``; raises ``SourceFileError`` listing every problem."""
    path = directory / CATALOG_FILE
    if not path.is_file():
        raise SourceFileError([SourceError(str(path), 0, "catalog.yaml not found")])
    return validate_catalog(read_yaml(path))


def validate_catalog(document: SourceDocument) -> Catalog:
    if not isinstance(document.data, dict):
        raise SourceFileError([document.error((), "the catalog must be a mapping")])
    try:
        catalog = Catalog.model_validate(document.data)
    except ValidationError as exc:
        raise SourceFileError(document.pydantic_errors(exc)) from None
    problems = _cross_check(catalog, document)
    if problems:
        raise SourceFileError(problems)
    return catalog


def _duplicates(document: SourceDocument, section: str, ids: list[str]) -> list[SourceError]:
    seen: set[str] = set()
    problems = []
    for index, item_id in enumerate(ids):
        if item_id in seen:
            problems.append(document.error((section, index), f"duplicate {section[:-1]} {item_id!r}"))
        seen.add(item_id)
    return problems


def _cross_check(catalog: Catalog, document: SourceDocument) -> list[SourceError]:
    problems = [
        *_duplicates(document, "departments", [d.id for d in catalog.departments]),
        *_duplicates(document, "purposes", [p.id for p in catalog.purposes]),
        *_duplicates(document, "fields", [f.name for f in catalog.fields]),
    ]
    departments = {d.id for d in catalog.departments}
    death_fields = 0
    for index, spec in enumerate(catalog.fields):
        where = ("fields", index)
        if spec.owner not in departments:
            problems.append(
                document.error((*where, "owner"), f"field {spec.name!r}: unknown owner {spec.owner!r}")
            )
        if spec.type == "enum" and not spec.values:
            problems.append(document.error(where, f"field {spec.name!r}: an enum needs values"))
        if spec.type != "enum" and spec.values is not None:
            problems.append(
                document.error((*where, "values"), f"field {spec.name!r}: only an enum has values")
            )
        if spec.max_length is not None and spec.type != "string":
            problems.append(
                document.error((*where, "max_length"), f"field {spec.name!r}: only a string has max_length")
            )
        if spec.name == NATIONAL_ID_FIELD and not (spec.searchable and spec.type == "string"):
            # Its blind index is how a citizen is found by national id, and how a second
            # registration of one id is refused: without it both would silently stop.
            problems.append(
                document.error(where, f"field {spec.name!r}: the national id must be a searchable string")
            )
        if spec.marks_death:
            death_fields += 1
            if spec.type != "date":
                problems.append(
                    document.error(
                        (*where, "marks_death"), f"field {spec.name!r}: the death field must be a date"
                    )
                )
            if death_fields > 1:
                problems.append(document.error((*where, "marks_death"), "only one field may mark death"))
    return problems


def catalog_content(catalog: Catalog) -> dict[str, Any]:
    return catalog.model_dump(mode="json")


def catalog_hash(catalog: Catalog) -> str:
    canonical = json.dumps(catalog_content(catalog), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
