"""Reading the log: search, export, the usage report and a citizen's access log, as the
audit API and the console both call them.

Each function takes the caller and an ``AuditAccess``: how to open a connection to read
the log with, and the writer that records the query itself. It decides what the caller
may see (``service.auth.permissions``), reads, and records the query, durably, before any
result leaves; if that record cannot be written, ``AuditUnavailable`` is raised and
nothing is returned. The app's ``AuditAccess`` (``get_audit_access``) reads on pooled
connections and records through the batched writer; tests put one on their rolled-back
transaction instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.audit import citizen_proofs
from service.audit import query as audit_query
from service.audit import repository as audit_repository
from service.audit.entries import query_entry, summary
from service.audit.errors import AuditQueryInvalid
from service.audit.repository import Connect, EntryFilter
from service.audit.schemas import ACTIONS, DECISIONS, RECORD_ACTIONS, Action
from service.audit.witnessing import WitnessConfig
from service.audit.writer import AuditWriterDep, EntrySink
from service.auth import permissions
from service.auth.dependencies import Principal
from service.cases import repository as cases_repository
from service.cases import rules
from service.catalog import service as catalog_service
from service.catalog.errors import CatalogMissing
from service.cursors import decode_text, encode_text
from service.digits import ascii_digits
from service.errors import Forbidden, InsufficientScope, NotFound, bad_cursor
from service.policy.terms import agreement_terms

EXPORT_PAGE = 500
ExportFormat = Literal["jsonl", "csv"]


@dataclass(frozen=True)
class AuditAccess:
    """What the log is read with (a connection per use), where queries are recorded, and
    a transaction for the auditors' own records beside the log (``audit.observed``)."""

    connect: Connect
    writer: EntrySink
    begin: Connect


async def get_audit_access(request: Request, writer: AuditWriterDep) -> AuditAccess:
    """The app's: pooled connections of its engine, and its batched writer (503 if stopped)."""
    engine = request.app.state.database.engine
    return AuditAccess(engine.connect, writer, engine.begin)


AuditAccessDep = Annotated[AuditAccess, Depends(get_audit_access)]


@dataclass(frozen=True)
class EntryQuery:
    """What the caller filters on; ``None`` is no filter."""

    citizen_id: str | None = None
    consumer: str | None = None
    owner: str | None = None
    field: str | None = None
    purpose: str | None = None
    decision: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: int | None
    # With proofs: the witnessed checkpoint every item's proof is against (None if none yet).
    checkpoint: str | None = None


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or time from a query parameter; naive means UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise AuditQueryInvalid(
            f"{name} is not an ISO 8601 date or time.", errors=[{"loc": ["query", name], "msg": "not a date"}]
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    # Converted here, not when bound: an offset can carry a time at the edge of the range
    # (0001-01-01T00:00:00+01:00) out of it, and that is the caller's bad input, not a 500.
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise AuditQueryInvalid(
            f"{name} is outside the range of times this service can search.",
            errors=[{"loc": ["query", name], "msg": "out of range"}],
        ) from None


# What the OpenAPI document says of ``since`` and ``until``: an RFC 3339 date-time, or a
# date (its midnight UTC). ``parse_time`` checks them, with its own 400, and also reads the
# other ISO 8601 forms ``datetime.fromisoformat`` knows.
TIME_QUERY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}],
    "maxLength": 40,
}


def check_range(since: datetime | None, until: datetime | None) -> None:
    """A window that ends before it starts is a mistake, not a question with no answer."""
    if since is not None and until is not None and until < since:
        raise AuditQueryInvalid(
            "until must not be before since.", errors=[{"loc": ["query", "until"], "msg": "before since"}]
        )


# Entry ids are 64-bit signed integers in the database; a larger cursor was never returned.
MAX_CURSOR = 2**63 - 1


def parse_cursor(value: str | None) -> int:
    if value is None:
        return 0
    if not ascii_digits(value) or len(value) > 19 or int(value) > MAX_CURSOR:
        raise bad_cursor()
    return int(value)


def entry_filter(
    principal: Principal, query: EntryQuery, view: OwnerView | None = None
) -> EntryFilter | None:
    """The stored filter for ``query``; a data owner (``view``) is confined to entries
    touching its fields. ``None`` when nothing the data owner may see can match: it named
    another department as owner or another department's field, which the items it sees
    never name, so matching on them would tell it what they leave out. A data owner's
    ``decision`` is matched on its narrowed entries (``visible``), not stored here."""
    if query.decision is not None and query.decision not in DECISIONS:
        raise AuditQueryInvalid(
            f"decision must be one of {', '.join(DECISIONS)}.",
            errors=[{"loc": ["query", "decision"], "msg": "unknown decision"}],
        )
    if query.action is not None and query.action not in ACTIONS:
        raise AuditQueryInvalid(
            "action is not a known audit action.",
            errors=[{"loc": ["query", "action"], "msg": "unknown action"}],
        )
    check_range(query.since, query.until)
    if view is not None and (
        query.owner not in (None, view.department)
        or (query.field is not None and query.field not in view.fields)
    ):
        return None
    return EntryFilter(
        citizen_id=query.citizen_id,
        consumer=query.consumer,
        owner=query.owner,
        field=query.field,
        purpose=query.purpose,
        decision=query.decision if view is None else None,
        action=query.action,
        since=query.since,
        until=query.until,
        visible_to_owner=permissions.owner_scope(principal),
    )


def visible(item: dict[str, Any], view: OwnerView | None, query: EntryQuery) -> dict[str, Any] | None:
    """``item`` as ``view`` sees it (``narrowed``), or ``None`` when that fails the query's
    ``decision`` (an auditor's decision is matched in the database)."""
    shown = narrowed(item, view)
    if view is not None and query.decision is not None and shown["entry"]["decision"] != query.decision:
        return None
    return shown


def _recorded_owners(query: EntryQuery, view: OwnerView | None) -> list[str]:
    """The ``owners`` of a query's own entry: the owner it asked about, which a data owner
    can only be itself (another department's data owner is not shown its queries)."""
    if query.owner is None or (view is not None and query.owner != view.department):
        return []
    return [query.owner]


async def record_query(
    writer: EntrySink,
    principal: Principal,
    action: Action = "audit-query",
    *,
    source: str | None,
    citizen_id: str | None = None,
    owners: Sequence[str] = (),
) -> None:
    """Audit a query of the log, durably, before any of its result leaves; ``citizen_id`` is
    the citizen it asked about (a search or export filtered on one, a proof of an entry
    naming one, a citizen's access log), so the log says who looked into that citizen."""
    await writer.append(query_entry(principal, action, source=source, citizen_id=citizen_id, owners=owners))


async def search_entries(
    access: AuditAccess,
    principal: Principal,
    query: EntryQuery,
    *,
    after: int,
    limit: int,
    source: str | None,
    newest_first: bool = False,
) -> Page:
    """One page of matching entries, oldest first (the API) or newest first (the console), as
    ``{id, leaf_index, entry}`` items."""
    permissions.require_audit_reader(principal)
    items: list[dict[str, Any]] = []
    more = False
    async with access.connect() as conn:
        view = await owner_view(conn, principal)
        stored_filter = entry_filter(principal, query, view)
        scanned_to = after
        while stored_filter is not None:
            rows = await audit_repository.page_entries(
                conn, stored_filter, scanned_to, limit + 1, newest_first=newest_first
            )
            for entry_id, leaf, canonical in rows:
                if len(items) == limit:
                    more = True
                    break
                scanned_to = entry_id
                shown = visible(audit_query.entry_item(entry_id, leaf, canonical), view, query)
                if shown is not None:
                    items.append(shown)
            if more or len(rows) <= limit:
                break
    await record_query(
        access.writer,
        principal,
        source=source,
        citizen_id=query.citizen_id,
        owners=_recorded_owners(query, view),
    )
    return Page(items, items[-1]["id"] if more else None)


@dataclass(frozen=True)
class OwnerView:
    """What a data owner sees of the log: its department and the fields it owns."""

    department: str
    fields: frozenset[str]


async def owner_view(conn: AsyncConnection, principal: Principal) -> OwnerView | None:
    """The view ``principal`` is confined to; ``None`` for an auditor, who sees it all."""
    department = permissions.owner_scope(principal)
    if department is None:
        return None
    catalog = await catalog_service.current_cached(conn)
    return OwnerView(department, frozenset(f.name for f in catalog.fields if f.owner == department))


# The parts of an entry that list field names.
_FIELD_LISTS = ("fields_requested", "fields_released")


def narrowed(item: dict[str, Any], view: OwnerView | None) -> dict[str, Any]:
    """A search item as ``view`` may see it (``None``: the whole entry). An entry that
    also named other departments' fields keeps only the owner's: among the fields asked
    for and released, among the reasons about fields, and in ``owners``. Its legal bases, which do not
    say which field each was for, are left out (the owner's reasons cite its agreements
    and versions). An access's decision becomes that of the owner's fields alone (``partial``
    would say how the other departments' fields were decided). Who asked, when, and for what
    purpose and case stay: that is the access to the owner's fields. Such an item is marked
    ``"narrowed": true``; its entry is then not the logged leaf (an auditor's proof calls
    show that)."""
    if view is None:
        return item
    entry: dict[str, Any] = item["entry"]
    reasons = [r for r in entry.get("reasons") or [] if isinstance(r, dict)]
    # A reason with no field is about the entry as a whole (a policy change, an explanation
    # asked for): it names no department's field, so it is not narrowed away.
    named = {
        *(f for key in _FIELD_LISTS for f in entry.get(key) or []),
        *(r["field"] for r in reasons if r.get("field")),
    }
    if named <= view.fields and set(entry.get("owners") or []) <= {view.department}:
        return item
    kept = dict(entry)
    for key in _FIELD_LISTS:
        kept[key] = [f for f in entry.get(key) or [] if f in view.fields]
    kept["reasons"] = [r for r in reasons if not r.get("field") or r["field"] in view.fields]
    kept["owners"] = [o for o in entry.get("owners") or [] if o == view.department]
    kept["legal_basis"] = []
    requested, released = entry.get("fields_requested") or [], entry.get("fields_released") or []
    if kept["fields_requested"] and entry.get("decision") == summary(requested, released):
        # A decision made of its fields (an access) is made again of the owner's alone.
        kept["decision"] = summary(kept["fields_requested"], kept["fields_released"])
    return {**item, "entry": kept, "narrowed": True}


async def export_entries(
    access: AuditAccess,
    principal: Principal,
    query: EntryQuery,
    *,
    format: ExportFormat,
    source: str | None,
) -> AsyncIterator[str]:
    """Every matching entry as JSON lines or CSV, read page by page as it is streamed.

    The first page is read, and the export audited, before this returns: a query the
    database refuses (or a database that is down) is an error answer, not a stream that
    starts with 200 and breaks. The later pages are read lazily as the lines go out."""
    if not permissions.may_export_audit(principal):
        raise InsufficientScope(
            f"This call needs the scope {permissions.EXPORTS_AUDIT}.", (permissions.EXPORTS_AUDIT,)
        )
    async with access.connect() as conn:
        view = await owner_view(conn, principal)
        stored_filter = entry_filter(principal, query, view)
        first: list[tuple[int, int | None, str]] = []
        if stored_filter is not None:
            first = await audit_repository.page_entries(conn, stored_filter, 0, EXPORT_PAGE)
    await record_query(
        access.writer,
        principal,
        source=source,
        citizen_id=query.citizen_id,
        owners=_recorded_owners(query, view),
    )

    async def lines() -> AsyncIterator[str]:
        if format == "csv":
            yield audit_query.csv_header()
        rows = first
        while True:
            for entry_id, leaf, canonical in rows:
                item = visible(audit_query.entry_item(entry_id, leaf, canonical), view, query)
                if item is not None:
                    yield audit_query.csv_line(item) if format == "csv" else json.dumps(item) + "\n"
            if stored_filter is None or len(rows) < EXPORT_PAGE:
                return
            async with access.connect() as conn:
                rows = await audit_repository.page_entries(conn, stored_filter, rows[-1][0], EXPORT_PAGE)

    return lines()


async def usage_report(
    session: AsyncSession,
    access: AuditAccess,
    principal: Principal,
    *,
    period: Literal["day", "month"],
    consumer: str | None = None,
    owner: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None,
) -> list[dict[str, Any]]:
    """Released fields counted by consumer, owner, field, purpose and period. A data owner
    reports only on its own fields (403 for another owner's)."""
    permissions.require_audit_reader(principal)
    check_range(since, until)
    confined = permissions.owner_scope(principal)
    if confined is not None:
        if owner is not None and owner != confined:
            raise Forbidden("A data owner reports only on its own fields.")
        owner = confined
    try:
        field_owners = (await catalog_service.current(session))[1].field_owners
    except CatalogMissing:
        # No catalog yet: fields have no known owner, and nothing is counted for an owner.
        field_owners = {}
    stored_filter = EntryFilter(consumer=consumer, owner=owner, since=since, until=until)
    counts = await audit_query.usage_counts(access.connect, stored_filter, period, field_owners, owner)
    await record_query(access.writer, principal, source=source, owners=[owner] if owner else [])
    return counts


# A usage report's cursor: the key of the last row shown (``query.usage_order``), so the
# next page starts after that row whatever rows the log has gained meanwhile. (An offset
# shifted when a new consumer, field or purpose took a place before it, showing a row twice.)
_USAGE_CURSOR = "u1:"
_USAGE_KEY_MAX = 200


def usage_page(
    counts: Sequence[dict[str, Any]], cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of ``counts`` (in the report's order) after ``cursor``, ``limit`` of them,
    and the cursor of the next page (None at the end)."""
    after = _usage_after(cursor)
    rows = [row for row in counts if after is None or audit_query.usage_order(row) > after]
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    return page, encode_text(_USAGE_CURSOR + json.dumps(list(audit_query.usage_order(page[-1]))))


def _usage_after(cursor: str | None) -> tuple[str, str, str, str] | None:
    if cursor is None:
        return None
    text = decode_text(cursor)
    if not text.startswith(_USAGE_CURSOR):
        raise bad_cursor()
    try:
        key = json.loads(text[len(_USAGE_CURSOR) :])
    except (ValueError, RecursionError):
        # A forged cursor may nest its JSON too deep to parse; no cursor given nests at all.
        raise bad_cursor() from None
    if (
        not isinstance(key, list)
        or len(key) != 4
        or not all(isinstance(part, str) and len(part) <= _USAGE_KEY_MAX for part in key)
    ):
        raise bad_cursor()
    return (key[0], key[1], key[2], key[3])


async def citizen_access_log(
    access: AuditAccess,
    principal: Principal,
    citizen_id: str,
    *,
    after: int,
    limit: int,
    source: str | None,
    now: datetime,
    proofs: WitnessConfig | None = None,
) -> Page:
    """Every access to one citizen's record the citizen may see ``now``, officers'
    identities left out; 404 for an unknown citizen. An access under delayed disclosure
    is left out until its case is closed or its maximum delay has passed, then shown with
    its original time and when and why it was disclosed (``disclosed_at``,
    ``disclosed_by``). With ``proofs`` (the witnessing configuration) each item also
    carries its inclusion proof against the newest witnessed checkpoint, which the page
    carries: each proof stands alone, so the lines left out take nothing from the others."""
    async with access.connect() as conn:
        if len(citizen_id) > 64 or not await audit_repository.citizen_exists(conn, citizen_id):
            raise NotFound("No such citizen.")
        stored_filter = EntryFilter(citizen_id=citizen_id, actions=RECORD_ACTIONS)
        shown: list[tuple[tuple[int, int | None, str], rules.Shown]] = []
        scanned_to, more = after, False
        while True:
            rows = await audit_repository.page_entries(conn, stored_filter, scanned_to, limit + 1)
            for row, seen in zip(rows, await _shown(conn, rows, now), strict=True):
                scanned_to = row[0]
                if seen.visible:
                    shown.append((row, seen))
                if len(shown) > limit:
                    break
            if len(shown) > limit:
                more = True
                break
            if len(rows) <= limit:
                break
        shown = shown[:limit]
        witnessed = (
            await citizen_proofs.proofs_for(
                conn, proofs, [(leaf, canonical) for (_id, leaf, canonical), _seen in shown]
            )
            if proofs is not None
            else None
        )
    await record_query(access.writer, principal, "access-log", source=source, citizen_id=citizen_id)
    items = [audit_query.access_item(canonical, seen) for (_id, _leaf, canonical), seen in shown]
    next_cursor = shown[-1][0][0] if more else None
    if witnessed is None:
        return Page(items, next_cursor)
    for item, proof in zip(items, witnessed.proofs, strict=True):
        item["proof"] = proof
    return Page(items, next_cursor, checkpoint=witnessed.note)


def _case_of(entry: dict[str, Any]) -> tuple[str, str]:
    return (entry["department"], entry.get("case_ref") or "")


async def _shown(conn: Any, rows: Sequence[tuple[int, int | None, str]], now: datetime) -> list[rules.Shown]:
    """Whether the citizen may see each entry of ``rows`` ``now`` (``service.cases.rules``)."""
    entries = [json.loads(canonical) for _id, _leaf, canonical in rows]
    terms = await agreement_terms.of(conn, rules.all_cited(entries))
    delays = [rules.delay_of(entry, terms) for entry in entries]
    cases = {
        (entry["department"], entry["case_ref"])
        for entry, delay in zip(entries, delays, strict=True)
        if delay is not None and entry.get("case_ref")
    }
    closed = await cases_repository.closed_at(conn, cases)
    return [
        rules.shown(rules.entry_time(entry), delay, closed.get(_case_of(entry)), now)
        for entry, delay in zip(entries, delays, strict=True)
    ]
