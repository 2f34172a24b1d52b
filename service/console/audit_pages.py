"""The audit log for auditors and data owners: search, CSV export, integrity, usage, value."""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from service.audit import observed as audit_observed
from service.audit import repository as audit_repository
from service.audit import search as audit_search
from service.audit.checkpoint import CheckpointError, NoteSigner, NoteVerifier
from service.audit.checkpoint_keys import key_range_lines
from service.audit.observed import ReplacedKeysNotGiven
from service.audit.search import AuditAccessDep, EntryQuery
from service.audit.value import Release, releases_to_others
from service.audit.verify import VerificationFailed, distinct_keys
from service.auth import permissions
from service.auth import service as auth_service
from service.auth.dependencies import Principal
from service.auth.facts import source_address
from service.catalog.schemas import Catalog
from service.console import chart
from service.console.sessions import SignedIn
from service.console.views import AuditPage, AuditRow, CheckpointView, UsageRow, VerifyOutcome
from service.console.web import (
    CITIZEN_ID_HINT,
    ConsolePageError,
    ConsoleRoute,
    Posted,
    Settings,
    catalog_names,
    catalog_of,
    csrf_checked,
    department_name,
    form_citizen_id,
    needs_role,
    render,
)
from service.db import SessionDep, utcnow
from service.digits import ascii_digits
from service.records.schemas import is_citizen_id

router = APIRouter(route_class=ConsoleRoute)

Reader = Depends(needs_role("data-owner", "auditor"))
Auditor = Depends(needs_role("auditor"))
Owner = Depends(needs_role("data-owner"))
DECISIONS = ("permit", "partial", "deny", "error")
FILTER_NAMES = ("citizen_id", "consumer", "owner", "field", "purpose", "decision", "since", "until")


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _start_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_query(params: dict[str, str], catalog: Catalog) -> tuple[EntryQuery, dict[str, list[str]]]:
    """The search form's values as a query, and the problems by field (dates are whole days)."""
    errors: dict[str, list[str]] = {}
    text = {name: params.get(name, "").strip()[:64] or None for name in FILTER_NAMES}
    # Lower-cased, as the citizen pages take it (``form_citizen_id``); refused unless it has
    # the form of a citizen id, so other text (a NUL among it) never reaches the store.
    text["citizen_id"] = form_citizen_id(text["citizen_id"]) or None
    if text["citizen_id"] is not None and not is_citizen_id(text["citizen_id"]):
        errors["citizen_id"] = [CITIZEN_ID_HINT]
    if text["decision"] is not None and text["decision"] not in DECISIONS:
        errors["decision"] = ["Choose a decision from the list"]
    for name, known in (
        ("consumer", {d.id for d in catalog.departments}),
        ("owner", {d.id for d in catalog.departments}),
        ("field", {f.name for f in catalog.fields}),
        ("purpose", {p.id for p in catalog.purposes}),
    ):
        if text[name] is not None and text[name] not in known:
            errors[name] = [f"Choose a {name} from the list"]
    since_day = until_day = None
    if text["since"] is not None:
        since_day = _day(text["since"])
        if since_day is None:
            errors["since"] = ["The from date must be a real date, for example 2026-03-01"]
    if text["until"] is not None:
        until_day = _day(text["until"])
        if until_day is None:
            errors["until"] = ["The to date must be a real date, for example 2026-03-31"]
        elif until_day == date.max:
            # The search runs to the start of the next day, and 9999-12-31 has none.
            errors["until"] = ["The to date must be before 9999-12-31"]
            until_day = None
    if since_day and until_day and until_day < since_day:
        errors["until"] = ["The to date must be the same as or after the from date"]
    query = EntryQuery(
        citizen_id=text["citizen_id"],
        consumer=text["consumer"],
        owner=text["owner"],
        field=text["field"],
        purpose=text["purpose"],
        decision=text["decision"],
        since=_start_of(since_day) if since_day else None,
        # The form's "to" day is inclusive; the audit's until is exclusive.
        until=_start_of(until_day + timedelta(days=1)) if until_day else None,
    )
    return query, errors


def _filter_params(params: dict[str, str]) -> dict[str, str]:
    return {name: params[name].strip() for name in FILTER_NAMES if params.get(name, "").strip()}


@router.get("/audit", response_class=HTMLResponse)
async def search(
    request: Request,
    session: SessionDep,
    access: AuditAccessDep,
    settings: Settings,
    viewer: SignedIn = Reader,
) -> Response:
    catalog = await catalog_of(session)
    params = dict(request.query_params)
    query, errors = parse_query(params, catalog)
    filters = _filter_params(params)
    after_text = params.get("after", "")
    after = int(after_text) if ascii_digits(after_text) and len(after_text) < 19 else 0
    shown_text = params.get("shown", "")
    shown = int(shown_text) if ascii_digits(shown_text) and len(shown_text) < 12 else 0
    page = None
    if not errors:
        found = await audit_search.search_entries(
            access,
            viewer.principal,
            query,
            after=after,
            limit=settings.page_size,
            source=source_address(request),
            newest_first=True,
        )
        names = {c.client_id: c.name for c in await auth_service.list_clients(session) if c.name}
        # A data owner's items come narrowed to its own fields (``search.narrowed``).
        page = AuditPage([AuditRow.of(item, names) for item in found.items], found.next_cursor)
    departments = [(d.id, d.name) for d in catalog.departments]
    selects = [
        ("consumer", "Consumer", departments),
        ("owner", "Owner of the fields", departments),
        ("field", "Field", [(f.name, f.name) for f in catalog.fields]),
        ("purpose", "Purpose", [(p.id, p.name) for p in catalog.purposes]),
        ("decision", "Decision", [(d, d.capitalize()) for d in DECISIONS]),
    ]
    error_items = [(name, message) for name in FILTER_NAMES for message in errors.get(name, [])]
    return render(
        request,
        "audit/search.html",
        {
            **catalog_names(catalog),
            "section": "audit",
            "q": {name: params.get(name, "") for name in FILTER_NAMES},
            "errors": errors,
            "error_items": error_items,
            "selects": selects,
            "page": page,
            "after": after,
            "first_number": shown + 1,
            "query_string": ("?" + urlencode(filters)) if filters else "",
            "sees_all": permissions.sees_all(viewer.principal),
            "can_export": permissions.may_export_audit(viewer.principal),
            "department_name": department_name(catalog, viewer.principal.department),
        },
        viewer=viewer,
        status_code=400 if errors else 200,
    )


@router.get("/audit/export.csv")
async def export_csv(
    request: Request, session: SessionDep, access: AuditAccessDep, viewer: SignedIn = Auditor
) -> Response:
    catalog = await catalog_of(session)
    query, errors = parse_query(dict(request.query_params), catalog)
    if errors:
        first = next(iter(errors.values()))[0]
        raise ConsolePageError(400, "The export could not start", first)
    lines = await audit_search.export_entries(
        access, viewer.principal, query, format="csv", source=source_address(request)
    )
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="audit-{stamp}.csv"',
            "Cache-Control": "no-store",
        },
    )


async def _checkpoint(access: audit_search.AuditAccess) -> CheckpointView | None:
    async with access.connect() as conn:
        row = await audit_repository.latest_checkpoint(conn)
    if row is None:
        return None
    return CheckpointView(row.tree_size, base64.b64encode(row.root_hash).decode(), row.created_at)


# The integrity form's field for the verifier keys of replaced checkpoint keys, and its limits.
REPLACED_KEYS = "replaced_keys"
REPLACED_KEYS_LABEL = "Verifier keys of replaced checkpoint keys"
REPLACED_KEYS_MAX = 20
REPLACED_KEYS_BYTES = 8 * 1024


def parse_replaced_keys(text: str) -> tuple[list[NoteVerifier], list[str]]:
    """The verifier keys pasted one per line (blank lines skipped), and the problems with
    them, worded for the form: none is read past the limits."""
    if len(text.encode()) > REPLACED_KEYS_BYTES:
        return [], [
            f"{REPLACED_KEYS_LABEL} must be at most {REPLACED_KEYS_BYTES // 1024} KiB: paste only the "
            "verifier keys of the replaced keys, one per line"
        ]
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > REPLACED_KEYS_MAX:
        return [], [
            f"{REPLACED_KEYS_LABEL} can hold at most {REPLACED_KEYS_MAX} keys; you entered {len(lines)}"
        ]
    keys: list[NoteVerifier] = []
    problems: list[str] = []
    for number, line in lines:
        try:
            keys.append(NoteVerifier.parse(line))
        except CheckpointError as exc:
            # The parser's words name what is wrong, never the text given.
            problems.append(f"Line {number} of the verifier keys is not an Ed25519 verifier key: {exc}")
    return keys, problems


def _replaced_message(failure: ReplacedKeysNotGiven) -> str:
    """The failure, in plain words, where the log records that keys it no longer holds
    signed checkpoints: which keys, which checkpoints, and where to paste them."""
    spans = []
    for key in failure.replaced:
        sizes = (
            f"up to size {key.up_to_size}"
            if key.after_size == 0
            else f"after size {key.after_size} up to size {key.up_to_size}"
        )
        spans.append(f"the checkpoints {sizes} were signed by the replaced key {key.key}")
    if len(failure.replaced) == 1:
        held, paste = "that key", "Paste that key's verifier key"
    else:
        held, paste = "those keys", "Paste their verifier keys, one per line,"
    return (
        f"This log records that its checkpoint key was replaced: {'; '.join(spans)}. This service "
        f"no longer holds {held}, so it cannot check those checkpoints by itself. {paste} into "
        f'"{REPLACED_KEYS_LABEL}" below and verify again. A verifier key is what tellonce init '
        "printed when the key was made, for auditors to keep."
    )


async def _verify(
    request: Request, access: audit_search.AuditAccess, viewer: Principal, replaced: list[NoteVerifier]
) -> VerifyOutcome:
    """The whole-log check of ``tellonce audit verify``, recorded as an audit query first,
    anchored on the largest checkpoint an auditor verified before (``audit.observed``).
    It trusts the installation's own key and the verifier keys of replaced keys the
    auditor gave, as the CLI trusts several ``--key``."""
    await audit_search.record_query(access.writer, viewer, source=source_address(request))
    signer: NoteSigner = request.app.state.audit_signer
    keys = distinct_keys([NoteVerifier.parse(signer.verifier_key()), *replaced])
    try:
        result = await audit_observed.verify_for_auditor(access.connect, access.begin, keys, viewer.client_id)
    except ReplacedKeysNotGiven as failure:
        return VerifyOutcome(False, 0, _replaced_message(failure))
    except VerificationFailed as failure:
        return VerifyOutcome(False, 0, f"Verification failed: {failure}")
    anchored = (
        f" It still holds the {result.anchored_at} entries an auditor verified before, unchanged."
        if result.anchored_at
        else ""
    )
    return VerifyOutcome(
        True,
        result.size,
        f"All {result.size} entries were hashed again and every column auditors filter on was "
        f"checked against its entry; the tree matches all {result.checkpoints} signed checkpoints."
        + anchored,
        tuple(key_range_lines(result.key_ranges)),
        result.unrecorded_key_switches,
    )


def _integrity_page(
    request: Request,
    checkpoint: CheckpointView | None,
    viewer: SignedIn,
    *,
    outcome: VerifyOutcome | None = None,
    replaced_keys: str = "",
    errors: dict[str, list[str]] | None = None,
) -> Response:
    signer: NoteSigner = request.app.state.audit_signer
    errors = errors or {}
    return render(
        request,
        "audit/integrity.html",
        {
            "section": "integrity",
            "checkpoint": checkpoint,
            "outcome": outcome,
            "own_key": NoteVerifier.parse(signer.verifier_key()).label(),
            "replaced_keys": replaced_keys,
            "replaced_keys_label": REPLACED_KEYS_LABEL,
            "replaced_keys_max": REPLACED_KEYS_MAX,
            "errors": errors,
            "error_list": [(name, message) for name, messages in errors.items() for message in messages],
        },
        viewer=viewer,
        status_code=422 if errors else 200,
    )


@router.get("/audit/integrity", response_class=HTMLResponse)
async def integrity(request: Request, access: AuditAccessDep, viewer: SignedIn = Auditor) -> Response:
    return _integrity_page(request, await _checkpoint(access), viewer)


@router.post("/audit/integrity/verify", response_class=HTMLResponse)
async def verify_now(
    request: Request,
    access: AuditAccessDep,
    viewer: SignedIn = Depends(csrf_checked),
    _auditor: SignedIn = Auditor,
    posted: FormData = Posted,
) -> Response:
    given = posted.get(REPLACED_KEYS)
    # Public keys, echoed back in the field (escaped, as every value the page shows), but
    # never more of them than the field takes.
    text = given[:REPLACED_KEYS_BYTES] if isinstance(given, str) else ""
    replaced, problems = parse_replaced_keys(given if isinstance(given, str) else "")
    if problems:
        # Refused before the check: nothing was verified, so no audit query is recorded.
        return _integrity_page(
            request, await _checkpoint(access), viewer, replaced_keys=text, errors={REPLACED_KEYS: problems}
        )
    outcome = await _verify(request, access, viewer.principal, replaced)
    return _integrity_page(request, await _checkpoint(access), viewer, outcome=outcome, replaced_keys=text)


def _releases(rows: list[UsageRow]) -> list[Release]:
    # The one rule of what counts (service/audit/value.py), shared with the demo's report.
    return releases_to_others(asdict(row) for row in rows)


async def _usage(
    request: Request,
    session: AsyncSession,
    access: audit_search.AuditAccess,
    viewer: Principal,
    period: Literal["day", "month"],
    since: datetime,
) -> list[UsageRow]:
    """The usage report the API serves, from ``since`` on (itself recorded as an audit query)."""
    counts = await audit_search.usage_report(
        session, access, viewer, period=period, since=since, source=source_address(request)
    )
    return [UsageRow.of(count) for count in counts]


def daily_counts(rows: list[UsageRow]) -> list[chart.DayCount]:
    """Fields released to other departments, summed per day and consumer."""
    totals: Counter[tuple[date, str]] = Counter()
    for release in _releases(rows):
        day = _day(release.period[:10])
        if day is not None:
            totals[(day, release.consumer)] += release.count
    return [chart.DayCount(day, consumer, count) for (day, consumer), count in sorted(totals.items())]


@router.get("/audit/usage", response_class=HTMLResponse)
async def usage(
    request: Request,
    session: SessionDep,
    access: AuditAccessDep,
    settings: Settings,
    viewer: SignedIn = Reader,
) -> Response:
    catalog = await catalog_of(session)
    today = utcnow().date()
    days = [today - timedelta(days=offset) for offset in range(settings.chart_days - 1, -1, -1)]
    rows = await _usage(request, session, access, viewer.principal, "day", _start_of(days[0]))
    counts = daily_counts(rows)
    names = {d.id: d.name for d in catalog.departments}
    return render(
        request,
        "audit/usage.html",
        {
            **catalog_names(catalog),
            "section": "usage",
            "days": days,
            "chart": chart.usage_svg(counts, days, names),
            "table": counts,
            "sees_all": permissions.sees_all(viewer.principal),
            "department_name": department_name(catalog, viewer.principal.department),
        },
        viewer=viewer,
    )


def _month_start(day: date) -> date:
    return day.replace(day=1)


def month_summary(rows: list[UsageRow], month: str) -> list[dict[str, Any]]:
    """Per other department: fields released to it, by purpose and by field, largest first."""
    totals: Counter[str] = Counter()
    purposes: dict[str, Counter[str]] = defaultdict(Counter)
    fields: dict[str, Counter[str]] = defaultdict(Counter)
    for release in _releases(rows):
        if release.period[:7] != month:
            continue
        totals[release.consumer] += release.count
        purposes[release.consumer][release.purpose] += release.count
        fields[release.consumer][release.field] += release.count
    return [
        {
            "consumer": consumer,
            "count": count,
            "purposes": purposes[consumer].most_common(),
            "fields": fields[consumer].most_common(),
        }
        for consumer, count in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


@router.get("/value", response_class=HTMLResponse)
async def value(
    request: Request, session: SessionDep, access: AuditAccessDep, viewer: SignedIn = Owner
) -> Response:
    catalog = await catalog_of(session)
    this_month = _month_start(utcnow().date())
    last_month = _month_start(this_month - timedelta(days=1))
    rows = await _usage(request, session, access, viewer.principal, "month", _start_of(last_month))
    months = []
    for key, start, label in (
        ("this-month", this_month, f"This month ({this_month:%B %Y})"),
        ("last-month", last_month, f"Last month ({last_month:%B %Y})"),
    ):
        summary = month_summary(rows, start.strftime("%Y-%m"))
        months.append(
            {"key": key, "label": label, "rows": summary, "total": sum(r["count"] for r in summary)}
        )
    return render(
        request,
        "value.html",
        {
            **catalog_names(catalog),
            "section": "value",
            "months": months,
            "department_name": department_name(catalog, viewer.principal.department),
        },
        viewer=viewer,
    )
