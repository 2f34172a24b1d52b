"""What ``tellonce import`` checks before it writes anything: the file's shape, and that
every column is one the department may write in the chosen mode."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from service.catalog import service as catalog_service
from service.catalog.schemas import FIELD_NAME_PATTERN, Catalog
from service.errors import ServiceError
from service.records import import_files
from service.records.import_files import ImportFormat, ScannedFile
from service.records.validation import NATIONAL_ID_FIELD

ImportMode = Literal["register", "update"]


class ImportRefused(Exception):
    """The import cannot start (the file or its columns); nothing was written. The
    message names columns and rules, never a value."""


@dataclass(frozen=True)
class ImportPlan:
    """A checked file, ready to import: every column is one the department writes."""

    path: Path
    file_format: ImportFormat
    department: str
    mode: ImportMode
    catalog: Catalog
    scanned: ScannedFile

    @property
    def fields(self) -> list[str]:
        return [name for name in self.scanned.columns if name != NATIONAL_ID_FIELD]


async def plan_import(
    engine: AsyncEngine, path: Path, file_format: ImportFormat, department: str, mode: ImportMode
) -> ImportPlan:
    """Read the file's shape and check its columns against the catalog; ``ImportRefused``
    names every problem at once."""
    try:
        scanned = import_files.scan(path, file_format)
    except import_files.ImportFileError as exc:
        raise ImportRefused(str(exc)) from None
    async with engine.connect() as conn:
        try:
            catalog = await catalog_service.current_cached(conn)
        except ServiceError as exc:
            raise ImportRefused(exc.detail) from None
    problems = column_problems(catalog, department, mode, scanned.columns, file_format)
    if problems:
        raise ImportRefused("; ".join(problems))
    return ImportPlan(path, file_format, department, mode, catalog, scanned)


_FIELD_NAME = re.compile(FIELD_NAME_PATTERN)


def _names(names: Sequence[str]) -> str:
    """Column names to repeat back: only those of a field name's form. Any other may be a
    value (a JSON Lines object keyed by a national id, a CSV header line that is a row) or
    carry terminal control sequences, so it is counted and not shown."""
    shown = [name for name in names if _FIELD_NAME.fullmatch(name)]
    hidden = len(names) - len(shown)
    if not hidden:
        return ", ".join(shown)
    withheld = f"{hidden} not of a field name's form (not shown, in case they hold values)"
    return ", ".join([*shown, withheld]) if shown else withheld


def column_problems(
    catalog: Catalog,
    department: str,
    mode: ImportMode,
    columns: Sequence[str],
    file_format: ImportFormat = "csv",
) -> list[str]:
    """Why these columns cannot be imported by ``department`` in ``mode`` (empty: they can)."""
    if catalog.department(department) is None:
        return [f"no department {department!r} in the catalog"]
    if NATIONAL_ID_FIELD not in columns:
        # Likely a file without a header (or not JSON Lines at all), whose first line is a
        # citizen's values: no column name is repeated back.
        if file_format == "jsonl":
            return [
                f"no {NATIONAL_ID_FIELD} key (a JSON Lines file holds one object per line; the "
                "keys found are not shown, in case the file holds values where keys should be)"
            ]
        return [
            f"no {NATIONAL_ID_FIELD} column (a CSV file's first line must name its columns; "
            "the names found are not shown, in case that line holds values)"
        ]
    problems: list[str] = []
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        problems.append(f"columns named twice: {_names(repeated)}")
    unknown = sorted({name for name in columns if catalog.field(name) is None})
    if unknown:
        problems.append(f"columns that are not catalog fields: {_names(unknown)}")
    owners = catalog.field_owners
    foreign = sorted(
        {
            f"{name} (owned by {owners[name]})"
            for name in columns
            if name in owners and name != NATIONAL_ID_FIELD and owners[name] != department
        }
    )
    if foreign:
        problems.append(f"columns of fields {department} does not own: {', '.join(foreign)}")
    registrar = owners.get(NATIONAL_ID_FIELD)
    if mode == "register" and registrar != department:
        problems.append(
            f"only {registrar or 'the owner of national_id'} registers citizens; import {department}'s "
            "fields into registered citizens with --mode update"
        )
    if mode == "update" and not [name for name in columns if name != NATIONAL_ID_FIELD]:
        problems.append("no field to update besides national_id")
    return problems
