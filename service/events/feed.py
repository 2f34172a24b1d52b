"""The pull feed: the events a department subscribed to and may still be told of now,
decided per event and purpose (field changes) or as lines of citizens' access logs
(access notices), audited before the answer; long-polled with ``wait``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.audit.entries import events_access_entry, query_entry
from service.audit.schemas import AuditEntry
from service.auth.facts import RequestFacts
from service.db import utcnow
from service.events import repository
from service.events.cursors import decode_position, encode_position
from service.events.models import ACCESS_RECORDED, CONSENT_CHANGED, FIELDS_CHANGED
from service.events.schemas import AccessNotice, ConsentChanged, EventData, FeedPage
from service.events.service import NOTICES_SCOPE, EventsRuntime, event_data, tells
from service.records import public as records_public

MAX_WAIT_SECONDS = 30
# Outbox rows one feed read looks at before it answers (possibly with no items, but a
# cursor further on), so a consumer far behind is never held in one long scan.
FEED_SCAN_BUDGET = 5000
_FEED_BATCH = 500


@dataclass
class _FeedScan:
    items: list[EventData | AccessNotice | ConsentChanged]
    # The audit entries of this read, in order: one per (citizen, owner, purpose) of each
    # field change released, and one per consent change or access notice told.
    entries: list[AuditEntry]
    cursor: int
    # True when the scan stopped at its budget with more of the outbox still to read.
    more: bool = False


async def _scan(runtime: EventsRuntime, caller: RequestFacts, after: int | None, limit: int) -> _FeedScan:
    now = utcnow()
    items: list[EventData | AccessNotice | ConsentChanged] = []
    entries: list[AuditEntry] = []
    async with runtime.engine.connect() as conn:
        subscriptions = await repository.active_subscriptions(conn, caller.department)
        if NOTICES_SCOPE not in caller.principal.scopes:
            # Access notices are lines of citizens' access logs: only for the portal's role,
            # whichever client of the department made the subscription.
            subscriptions = [s for s in subscriptions if s.type != ACCESS_RECORDED]
        if after is None:
            # A first read starts where the department's earliest subscription started.
            after = (
                min(s.start_position for s in subscriptions)
                if subscriptions
                else await repository.head_position(conn)
            )
        if not subscriptions:
            return _FeedScan(items, entries, after)
        decide = None
        scanned = 0
        while len(items) < limit and scanned < FEED_SCAN_BUDGET:
            rows = await repository.events_after(conn, after, _FEED_BATCH)
            if not rows:
                break
            candidates = [
                (row, [s for s in subscriptions if row.position > s.start_position and _matches(s, row)])
                for row in rows
            ]
            wanted = [
                row.citizen_id for row, matching in candidates if matching and row.type == FIELDS_CHANGED
            ]
            statuses = await records_public.citizen_statuses(conn, wanted)
            if wanted and decide is None:
                decide = await runtime.policy.current(conn)
            for row, matching in candidates:
                after = row.position
                scanned += 1
                if matching and row.type == CONSENT_CHANGED:
                    # The consumer's own agreement: the consent's status, audited as told.
                    items.append(event_data(row, row.fields))
                    entries.append(
                        query_entry(caller.principal, "feed", source=caller.source, citizen_id=row.citizen_id)
                    )
                elif matching and row.type == ACCESS_RECORDED:
                    # A line of the citizen's access log, audited as the portal reading it.
                    items.append(event_data(row, row.fields))
                    entries.append(
                        query_entry(
                            caller.principal, "access-log", source=caller.source, citizen_id=row.citizen_id
                        )
                    )
                elif matching and decide is not None:
                    released, row_entries = _release(
                        caller, row, matching, statuses.get(row.citizen_id), decide, now
                    )
                    if released:
                        items.append(
                            EventData(
                                event_id=row.event_id,
                                citizen_id=row.citizen_id,
                                fields=released,
                                owner=row.owner,
                                occurred_at=row.occurred_at,
                            )
                        )
                        entries.extend(row_entries)
                if len(items) >= limit:
                    break
    return _FeedScan(items, entries, after, more=scanned >= FEED_SCAN_BUDGET)


def _matches(subscription: repository.SubscriptionRow, row: repository.EventRow) -> bool:
    return tells(subscription, row)


def _release(
    caller: RequestFacts,
    row: repository.EventRow,
    matching: Sequence[repository.SubscriptionRow],
    citizen_status: str | None,
    decide: Any,
    now: datetime,
) -> tuple[list[str], list[AuditEntry]]:
    """The fields of ``row`` the caller may be told of now, and one audit entry per purpose."""
    by_purpose: dict[str, list[str]] = {}
    for subscription in matching:
        wanted = by_purpose.setdefault(subscription.purpose, [])
        wanted.extend(f for f in row.fields if f in subscription.fields and f not in wanted)
    released: set[str] = set()
    entries = []
    for purpose, requested in by_purpose.items():
        decisions = decide(caller.department, requested, purpose, citizen_status, now)
        permitted = [f for f in requested if decisions[f].effect == "permit"]
        if permitted:
            released.update(permitted)
            entries.append(
                events_access_entry(
                    action="feed",
                    time=now,
                    client_id=caller.principal.client_id,
                    department=caller.department,
                    on_behalf_of=caller.principal.on_behalf_of,
                    citizen_id=row.citizen_id,
                    owners=[row.owner],
                    requested=requested,
                    decisions=decisions,
                    purpose=purpose,
                    status=200,
                    citizen_status=citizen_status,
                    request_id=caller.request_id,
                    source=caller.source,
                )
            )
    return [f for f in row.fields if f in released], entries


async def read_feed(
    runtime: EventsRuntime,
    caller: RequestFacts,
    *,
    after: str | None,
    limit: int,
    wait: float,
) -> FeedPage:
    """Events after the cursor that the caller subscribed to and may still subscribe to now.

    With ``wait`` the call holds until an event arrives or ``wait`` seconds pass: a commit
    in this process wakes it at once; commits in other processes are seen within the poll
    interval. Every event returned is audited before the response: a field change or a
    consent change as ``feed``, an access notice as ``access-log`` (the portal reading a
    line of the citizen's access log).
    """
    position = decode_position(after, ["query", "after"]) if after else None
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    poll = runtime.settings.events_poll_interval_seconds
    while True:
        generation = runtime.notifier.generation
        scan = await _scan(runtime, caller, position, limit)
        position = scan.cursor
        remaining = deadline - time.monotonic()
        if scan.items or remaining <= 0:
            break
        # More of the outbox to read, or something committed while scanning: look again now.
        if scan.more or runtime.notifier.generation != generation:
            continue
        await runtime.notifier.wait(min(poll, remaining))
    if scan.entries:
        await runtime.audit.record(scan.entries)
    return FeedPage(items=scan.items, cursor=encode_position(scan.cursor))
