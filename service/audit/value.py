"""What counts as value: one rule for the console's Value and Usage pages and the demo's report.

A usage row counts when another department was given an owner's field for a stated purpose.
Two kinds of audited release do not: registrations and an owner's own writes carry no
purpose (the register seeding a citizen's fields is not anyone using them), and an owner
reading its own fields is not sharing. Pure: rows are the usage report's
``{consumer, owner, field, purpose, period, count}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Release:
    """Fields of ``owner`` released to another department, ``count`` times in ``period``."""

    consumer: str
    owner: str
    field: str
    purpose: str
    period: str
    count: int


def counts_as_value(consumer: str | None, owner: str | None, purpose: str | None) -> bool:
    return bool(consumer) and bool(owner) and bool(purpose) and consumer != owner


def releases_to_others(rows: Iterable[Mapping[str, Any]]) -> list[Release]:
    """The usage rows that count as value, in their order."""
    return [
        Release(
            consumer=str(row["consumer"]),
            owner=str(row["owner"]),
            field=str(row["field"]),
            purpose=str(row["purpose"]),
            period=str(row.get("period") or ""),
            count=int(row["count"]),
        )
        for row in rows
        if counts_as_value(row.get("consumer"), row.get("owner"), row.get("purpose"))
    ]


def value_by_owner(rows: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    """Owner -> consumer -> fields released to that consumer (the demo report's table)."""
    folded: dict[str, Counter[str]] = {}
    for release in releases_to_others(rows):
        folded.setdefault(release.owner, Counter())[release.consumer] += release.count
    return folded
