"""Shapes of query results: entry items, CSV lines, usage counts, access-log items."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any, Literal

from service.audit import repository as audit_repository
from service.audit.repository import Connect, EntryFilter
from service.cases.rules import SHOWN_AT_ONCE, Shown

CSV_COLUMNS = (
    "id",
    "leaf_index",
    "time",
    "request_id",
    "client_id",
    "department",
    "on_behalf_of",
    "action",
    "citizen_id",
    "owners",
    "fields_requested",
    "fields_released",
    "decision",
    "reasons",
    "purpose",
    "case_ref",
    "legal_basis",
    "status",
    "source",
)


def entry_item(entry_id: int, leaf_index: int | None, canonical: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(canonical)
    return {"id": entry_id, "leaf_index": leaf_index, "entry": entry}


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV
# Injection"): such a cell is prefixed with a single quote so it is read as text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_row(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def csv_header() -> str:
    return _csv_row(list(CSV_COLUMNS))


def csv_line(item: dict[str, Any]) -> str:
    entry = item["entry"]
    values = [_cell(item["id"]), _cell(item["leaf_index"])]
    values += [_cell(entry.get(column)) for column in CSV_COLUMNS[2:]]
    return _csv_row(values)


def access_item(canonical: str, shown: Shown = SHOWN_AT_ONCE) -> dict[str, Any]:
    """One line of a citizen's access log; officer and client identities are left out. An
    access that was held from the citizen says when it was disclosed, and why."""
    entry = json.loads(canonical)
    item = {
        "time": entry["time"],
        "department": entry["department"],
        "action": entry["action"],
        "fields": entry["fields_released"] or entry["fields_requested"],
        "purpose": entry["purpose"],
        "decision": entry["decision"],
    }
    if shown.disclosed_at is not None:
        item["disclosed_at"] = shown.disclosed_at.isoformat()
        item["disclosed_by"] = shown.disclosed_by
    return item


async def usage_counts(
    connect: Connect,
    entry_filter: EntryFilter,
    period: Literal["day", "month"],
    field_owners: dict[str, str],
    only_owner: str | None,
) -> list[dict[str, Any]]:
    """Released fields counted by (consumer, owner, field, purpose, period), the counting
    done by the database (``repository.released_counts``); a field's owner is the
    catalog's, and with ``only_owner`` only that owner's fields are counted."""
    async with connect() as conn:
        groups = await audit_repository.released_counts(conn, entry_filter, period)
    # One row a group: a field has one owner, so no two groups share a row.
    report = [
        {
            "consumer": consumer,
            "owner": field_owners.get(name),
            "field": name,
            "purpose": purpose,
            "period": day,
            "count": count,
        }
        for consumer, purpose, day, name, count in groups
        if only_owner is None or field_owners.get(name) == only_owner
    ]
    return sorted(report, key=usage_order)


def usage_order(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """The usage report's order, and each row's key in it: period, consumer, field, purpose
    (a field has one owner, so no two rows share it)."""
    return (row["period"], row["consumer"], row["field"], row["purpose"] or "")
