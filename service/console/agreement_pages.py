"""Agreements: the list, one agreement with its history and diffs, the saved page, revoke.
Creating and changing one (check, simulate, save) is the editor, ``agreement_editor.py``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from service.audit.writer import RefusalWriterDep
from service.auth import permissions
from service.auth.facts import source_address
from service.catalog.schemas import IDENTIFIER_PATTERN, Catalog
from service.console import forms
from service.console.sessions import SignedIn
from service.console.views import AgreementRecord
from service.console.web import (
    ConsolePageError,
    ConsoleRoute,
    Posted,
    catalog_names,
    catalog_of,
    csrf_checked,
    department_name,
    needs_role,
    render,
)
from service.db import SessionDep, utcnow
from service.digits import ascii_digits
from service.etags import IfMatch
from service.policy import agreements
from service.policy.errors import AgreementNotFound

router = APIRouter(route_class=ConsoleRoute)

# Agreements and versions read per call while a page gathers them all.
PAGE = 200
OwnerOrAuditor = Depends(needs_role("data-owner", "auditor"))
# An agreement id in the address, as the API's (``policy.endpoints.AgreementId``): anything
# that is no id is refused (the 400 page) before it reaches the store, which may not even
# take it as text (PostgreSQL and a NUL).
AgreementId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN, max_length=63)]
Owner = Depends(needs_role("data-owner"))


def page_names(catalog: Catalog) -> dict[str, Any]:
    """The names every agreement page shows: departments, fields, purposes, and today."""
    return {**catalog_names(catalog), "today": utcnow().date()}


def not_found(agreement_id: str) -> ConsolePageError:
    """The one page for an agreement the viewer may not see and for one there is not:
    another owner's agreement is simply not there, as in the API."""
    return ConsolePageError(404, "Agreement not found", f"There is no agreement {agreement_id} you can see.")


async def current_and_history(
    session: AsyncSession, viewer: SignedIn, agreement_id: str
) -> tuple[AgreementRecord, list[AgreementRecord]]:
    """The current version and the whole history of an agreement the viewer may see."""
    versions: list[AgreementRecord] = []
    cursor = None
    while True:
        try:
            page = await agreements.list_versions(
                session, viewer.principal, agreement_id, cursor=cursor, limit=PAGE
            )
        except AgreementNotFound:
            raise not_found(agreement_id) from None
        versions.extend(AgreementRecord.of(row) for row in page.rows)
        if page.next_cursor is None:
            return versions[-1], versions
        cursor = page.next_cursor


async def changeable(
    session: AsyncSession, viewer: SignedIn, agreement_id: str, title: str, detail: str
) -> AgreementRecord:
    """The current version of an agreement the viewer may change or revoke: active, and
    one its department changes. Otherwise 409, with ``title`` and ``detail``."""
    current, _versions = await current_and_history(session, viewer, agreement_id)
    if current.status != "active" or not permissions.changes_agreement(viewer.principal, current.owner):
        raise ConsolePageError(409, title, detail)
    return current


def version_number(value: Any) -> int:
    """The version a posted form was made from (its ``If-Match``); 400 if it is not one."""
    text = str(value or "")
    if not ascii_digits(text) or len(text) > 9:
        raise ConsolePageError(
            400, "The form is out of date", "Open the agreement again and repeat the change."
        )
    return int(text)


@router.get("/agreements", response_class=HTMLResponse)
async def list_agreements(
    request: Request, session: SessionDep, viewer: SignedIn = OwnerOrAuditor
) -> Response:
    catalog = await catalog_of(session)
    records: list[AgreementRecord] = []
    cursor = None
    while True:
        page = await agreements.list_agreements(session, viewer.principal, cursor=cursor, limit=PAGE)
        records.extend(AgreementRecord.of(row) for row in page.rows)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return render(
        request,
        "agreements/list.html",
        {
            **page_names(catalog),
            "section": "agreements",
            "agreements": sorted(records, key=lambda r: (r.owner, r.id)),
            "sees_all": permissions.sees_all(viewer.principal),
            "can_edit": permissions.may_write_agreements(viewer.principal),
            "department_name": department_name(catalog, viewer.principal.department),
        },
        viewer=viewer,
    )


@router.get("/agreements/{agreement_id}/saved", response_class=HTMLResponse)
async def saved(
    agreement_id: AgreementId,
    request: Request,
    session: SessionDep,
    version: str = "",
    viewer: SignedIn = Owner,
) -> Response:
    catalog = await catalog_of(session)
    _current_row, versions = await current_and_history(session, viewer, agreement_id)
    shown = next((v for v in versions if str(v.version) == version), versions[-1])
    revoked = shown.status == "revoked"
    return render(
        request,
        "agreements/confirmation.html",
        {
            **page_names(catalog),
            "section": "agreements",
            "agreement": shown,
            "heading": "Agreement revoked" if revoked else "Agreement saved",
            "message": (
                f"{shown.id} is revoked. Requests it allowed are now refused."
                if revoked
                else f"Version {shown.version} of {shown.id} is now in force."
            ),
        },
        viewer=viewer,
    )


@router.get("/agreements/{agreement_id}", response_class=HTMLResponse)
async def agreement_detail(
    agreement_id: AgreementId,
    request: Request,
    session: SessionDep,
    viewer: SignedIn = OwnerOrAuditor,
) -> Response:
    catalog = await catalog_of(session)
    current, versions = await current_and_history(session, viewer, agreement_id)
    return render(
        request,
        "agreements/detail.html",
        {
            **page_names(catalog),
            "section": "agreements",
            "agreement": current,
            "versions": versions,
            "can_edit": permissions.may_write_agreements(viewer.principal)
            and permissions.changes_agreement(viewer.principal, current.owner),
        },
        viewer=viewer,
    )


@router.get("/agreements/{agreement_id}/diff", response_class=HTMLResponse)
async def agreement_diff(
    agreement_id: AgreementId,
    request: Request,
    session: SessionDep,
    viewer: SignedIn = OwnerOrAuditor,
) -> Response:
    _current_row, versions = await current_and_history(session, viewer, agreement_id)
    by_number = {str(v.version): v for v in versions}
    old = by_number.get(request.query_params.get("from", ""))
    new = by_number.get(request.query_params.get("to", ""))
    if old is None or new is None:
        raise ConsolePageError(404, "Version not found", "Choose two versions from the agreement's history.")
    lines = forms.version_diff(old.content, new.content, f"version {old.version}", f"version {new.version}")
    return render(
        request,
        "agreements/diff.html",
        {
            "section": "agreements",
            "agreement_id": agreement_id,
            "old": old,
            "new": new,
            "lines": lines,
            "status_changed": old.status != new.status,
        },
        viewer=viewer,
    )


@router.get("/agreements/{agreement_id}/revoke", response_class=HTMLResponse)
async def revoke_page(
    agreement_id: AgreementId, request: Request, session: SessionDep, viewer: SignedIn = Owner
) -> Response:
    catalog = await catalog_of(session)
    current = await changeable(
        session,
        viewer,
        agreement_id,
        "This agreement cannot be revoked",
        "Only an active agreement you own is revoked.",
    )
    return render(
        request,
        "agreements/revoke.html",
        {**page_names(catalog), "section": "agreements", "agreement": current},
        viewer=viewer,
    )


@router.post("/agreements/{agreement_id}/revoke")
async def revoke(
    agreement_id: AgreementId,
    request: Request,
    session: SessionDep,
    refusals: RefusalWriterDep,
    viewer: SignedIn = Depends(csrf_checked),
    _owner: SignedIn = Owner,
    posted: FormData = Posted,
) -> Response:
    expected = version_number(posted.get("expected_version"))
    reason = str(posted.get("reason") or "").strip()[:1000] or "revoked in the console"
    try:
        row = await agreements.revoke_agreement(
            session,
            viewer.principal,
            agreement_id,
            expected=IfMatch.version(expected),
            reason=reason,
            audit=refusals,
            source=source_address(request),
        )
    except AgreementNotFound:
        # Refused and audited as the API's; shown as the revoke page's own 404.
        raise not_found(agreement_id) from None
    return RedirectResponse(
        f"/console/agreements/{row.agreement_id}/saved?version={row.version}", status_code=303
    )
