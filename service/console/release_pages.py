"""The owner's check of every release of its fields on the live log.

The same check as ``tellonce audit check-releases`` on an exported bundle: the CLI runs
``check_bundle_releases`` over the bundle and this page ``check_stored_releases`` over the
stored log, both with the same ``ReleaseChecker``. The whole log is verified, and every
release of the owner's fields to another department is decided again from what its entry
records, against the agreement version it cites, signed by the key the owner gives. The
form starts with the key the catalog in force holds; an owner who does not trust the
operator pastes the key it keeps itself, as it would on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from service.audit import search as audit_search
from service.audit import service as audit_service
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.search import AuditAccessDep
from service.audit.verify import VerificationFailed
from service.auth.facts import source_address
from service.catalog.schemas import Catalog
from service.console.sessions import SignedIn
from service.console.web import ConsoleRoute, Posted, catalog_of, csrf_checked, needs_role, render
from service.db import SessionDep
from service.policy.signing import OwnerVerifier, SigningKeyError

router = APIRouter(route_class=ConsoleRoute)

Owner = Depends(needs_role("data-owner"))
# Unjustified releases listed on the page; the count says how many more there are.
SHOWN = 200
KEY_LIMIT = 400


@dataclass(frozen=True)
class ReleasesOutcome:
    """What the check found: its summary and the unjustified releases, worded."""

    ok: bool
    message: str
    unjustified: list[str] = field(default_factory=list)
    more: int = 0


def _page(
    request: Request,
    catalog: Catalog,
    viewer: SignedIn,
    *,
    key: str | None,
    outcome: ReleasesOutcome | None = None,
    errors: dict[str, list[str]] | None = None,
) -> Response:
    department = viewer.principal.department
    errors = errors or {}
    return render(
        request,
        "audit/releases.html",
        {
            "section": "releases",
            "department": department,
            "catalog_key": catalog.signing_keys.get(department),
            "key": key,
            "outcome": outcome,
            "errors": errors,
            "error_list": [(name, message) for name, messages in errors.items() for message in messages],
        },
        viewer=viewer,
        status_code=422 if errors else 200,
    )


@router.get("/releases", response_class=HTMLResponse)
async def releases(request: Request, session: SessionDep, viewer: SignedIn = Owner) -> Response:
    catalog = await catalog_of(session)
    return _page(request, catalog, viewer, key=catalog.signing_keys.get(viewer.principal.department))


@router.post("/releases/check", response_class=HTMLResponse)
async def check_releases(
    request: Request,
    session: SessionDep,
    access: AuditAccessDep,
    viewer: SignedIn = Depends(csrf_checked),
    _owner: SignedIn = Owner,
    posted: FormData = Posted,
) -> Response:
    catalog = await catalog_of(session)
    department = viewer.principal.department
    given = posted.get("owner_key")
    key = given.strip()[:KEY_LIMIT] if isinstance(given, str) else ""
    if not key:
        return _page(
            request, catalog, viewer, key=key, errors={"owner_key": ["Enter your department's signing key"]}
        )
    try:
        owner_key = OwnerVerifier.parse(key, department)
    except SigningKeyError as exc:
        message = f"The signing key is not one of {department}'s: {exc}"
        return _page(request, catalog, viewer, key=key, errors={"owner_key": [message]})
    # An owner reading the log of its own fields: recorded as an audit query first.
    await audit_search.record_query(
        access.writer, viewer.principal, source=source_address(request), owners=[department]
    )
    signer: NoteSigner = request.app.state.audit_signer
    try:
        _size, report = await audit_service.check_stored_releases(
            access.connect, NoteVerifier.parse(signer.verifier_key()), department, owner_key
        )
    except VerificationFailed as failure:
        outcome = ReleasesOutcome(False, f"The audit log does not verify: {failure}")
    else:
        found = [str(unjustified) for unjustified in report.unjustified]
        outcome = ReleasesOutcome(
            report.justified, report.summary(), found[:SHOWN], max(0, len(found) - SHOWN)
        )
    return _page(request, catalog, viewer, key=key, outcome=outcome)
