"""What verify may be asked, so that it cannot serve as a value oracle.

Where the deciding agreement fixes the claims that may be asked (``verify:``), any other
claim is refused (403). Where it leaves them open, each comparison counts against a daily
limit per (consumer, citizen, field), shared through the database: beyond it, 429 until
the next UTC day. Asking the same field of the same citizen again within a day is flagged
in the audit entry and the probing metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from service.audit.schemas import Reason
from service.auth.facts import RequestFacts
from service.catalog.schemas import Catalog
from service.policy.engine import Decision
from service.records import repository, values
from service.records.service import RecordsService


def outside_agreements(
    catalog: Catalog,
    claims: Mapping[str, Mapping[str, Any]],
    decisions: Mapping[str, Decision],
    allowed: Sequence[str],
    today: date,
) -> list[str]:
    """Why each claim outside what its deciding agreement fixes is refused; [] if none."""
    refusals: list[str] = []
    for name in allowed:
        fixed = decisions[name].allowed_claims
        spec = catalog.field(name)
        if fixed is None or spec is None:
            continue
        permitted = {
            (operator, values.comparable(spec, values.operand(spec, threshold, today)))
            for operator, thresholds in fixed.items()
            for threshold in thresholds
        }
        # An 'in' is a choice of 'eq' claims: each of its values must be a fixed 'eq'. Both
        # sides compared as the claim itself is (an identifier without case or spaces).
        asked = [
            (operator, values.comparable(spec, values.operand(spec, operand, today)))
            for op, raw in claims[name].items()
            for operator, operand in ([("eq", item) for item in raw] if op == "in" else [(op, raw)])
        ]
        if any(pair not in permitted for pair in asked):
            listed = ", ".join(f"{op} {t}" for op, thresholds in fixed.items() for t in thresholds)
            refusals.append(
                f"agreement {decisions[name].agreement} allows only these claims on {name}: {listed}"
            )
    return refusals


async def count_open_claims(
    records: RecordsService,
    facts: RequestFacts,
    citizen_id: str,
    claims: Mapping[str, Mapping[str, Any]],
    open_fields: Sequence[str],
    today: date,
) -> tuple[list[Reason], list[str]]:
    """Count the comparisons asked of ``open_fields`` (left open by their agreement, and
    neither owned nor readable by the caller); return the probing flags for the audit
    and the fields over the daily limit."""
    if not open_fields:
        return [], []
    totals: dict[str, tuple[int, int]] = {}
    async with records.transactions.begin() as conn:
        # Each count holds its row until the commit. Counted in one order (the fields'
        # names, not the order the claims were sent in), two requests asking of the same
        # fields cannot each hold a row the other waits for (a deadlock on PostgreSQL).
        for name in sorted(open_fields):
            asked = values.comparisons(claims[name])
            total = await repository.add_verify_comparisons(
                conn,
                consumer=facts.department,
                citizen_id=citizen_id,
                field=name,
                day=today,
                comparisons=asked,
            )
            totals[name] = (asked, total)
    if any(total == asked for asked, total in totals.values()):
        # A first count of the day: earlier days' counts go, in a transaction of their own
        # (deleting them where rows are counted would hold them while waiting for a row
        # another request holds, and that one may be deleting them too).
        async with records.transactions.begin() as conn:
            await repository.prune_verify_comparisons(conn, before=today)
    limit = records.open_claims_per_day
    flags: list[Reason] = []
    limited: list[str] = []
    for name in open_fields:
        asked, total = totals[name]
        over = total > limit
        if over:
            limited.append(name)
        if total > asked:
            flags.append(
                Reason(
                    field=name,
                    effect="probing",
                    reason=f"repeated open claims: {total} comparisons of {name} on this citizen today "
                    f"(limit {limit})",
                )
            )
            if records.metrics is not None:
                records.metrics.verify_probing.labels(facts.department, name, str(over).lower()).inc()
    return flags, limited


def seconds_to_next_day(now: datetime) -> int:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), time.min, tzinfo=UTC)
    return max(1, int((tomorrow - now).total_seconds()))
