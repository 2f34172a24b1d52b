"""The agreement editor: create an agreement, or change one as a new version.

Every step goes through the policy domain: the draft is checked by ``drafts.check_draft``
(the API's own check), simulated against the audited requests with
``agreements.simulate_draft``, and saved with ``agreements.create_agreement`` or
``replace_agreement``, as the API does. The saved page is in ``agreement_pages.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from service.audit.writer import EntrySink, RefusalWriterDep
from service.auth.facts import source_address
from service.catalog.schemas import Catalog
from service.console import forms
from service.console.agreement_pages import (
    AgreementId,
    Owner,
    changeable,
    not_found,
    page_names,
    version_number,
)
from service.console.drafts import check_draft
from service.console.forms import AgreementForm
from service.console.sessions import SignedIn
from service.console.views import AgreementRecord, Simulation
from service.console.web import ConsolePageError, ConsoleRoute, Posted, catalog_of, csrf_checked, render
from service.db import SessionDep
from service.etags import IfMatch
from service.policy import agreements
from service.policy.errors import AgreementNotFound, SimulationWindowTooLarge
from service.policy.schemas import AgreementSpec
from service.policy.simulate import SimulationResult

router = APIRouter(route_class=ConsoleRoute)


def _form_context(catalog: Catalog, viewer: SignedIn) -> dict[str, Any]:
    owner = viewer.principal.department
    return {
        **page_names(catalog),
        "section": "agreements",
        # An owner with a signing key signs each agreement: the form takes its signature.
        "signs": owner in catalog.signing_keys,
        "consumers": [(d.id, d.name) for d in catalog.departments if d.id != owner],
        "field_options": [(f.name, f.name.replace("_", " ")) for f in catalog.fields if f.owner == owner],
        "action_options": [(a, a) for a in forms.ACTIONS],
        "purpose_options": [(p.id, p.name) for p in catalog.purposes],
    }


def _form_page(
    request: Request,
    catalog: Catalog,
    viewer: SignedIn,
    form: AgreementForm,
    *,
    expected_version: int | None,
    status_code: int = 200,
    signing_text: str | None = None,
) -> Response:
    editing = expected_version is not None
    key_file = f"{viewer.principal.department}.key"
    action = f"/console/agreements/{form.values['id']}/edit" if editing else "/console/agreements/new"
    return render(
        request,
        "agreements/form.html",
        {
            **_form_context(catalog, viewer),
            "form": form,
            "editing": editing,
            "expected_version": expected_version,
            "action": action,
            "signing_text": signing_text,
            "claims": forms.encode_claims(form.values.get("verify")),
            "key_file": key_file,
            "sign_command": forms.sign_command(signing_text, key_file) if signing_text else None,
        },
        viewer=viewer,
        status_code=status_code,
    )


def _simulate_page(
    request: Request,
    catalog: Catalog,
    viewer: SignedIn,
    content: dict[str, Any],
    simulation: Any,
    *,
    reason: str,
    expected_version: int | None,
) -> Response:
    action = f"/console/agreements/{content['id']}/edit" if expected_version else "/console/agreements/new"
    return render(
        request,
        "agreements/simulate.html",
        {
            **page_names(catalog),
            "section": "agreements",
            "content": content,
            "simulation": simulation,
            "yaml_text": forms.canonical_yaml(content),
            "draft": forms.encode_draft(content),
            "reason": reason,
            "expected_version": expected_version,
            "save_action": action,
        },
        viewer=viewer,
    )


async def _simulation(
    request: Request,
    session: AsyncSession,
    viewer: SignedIn,
    content: dict[str, Any],
    refusals: EntrySink,
    source: str | None,
) -> Simulation:
    """``content`` simulated as the API simulates a draft (``agreements.simulate_draft``,
    its limit included). The form has no ``since``: when the whole log holds more requests
    than one simulation replays, the latest window that fits is replayed, and the page says
    from when."""
    limit = request.app.state.settings.simulate_max_entries

    async def replayed(since: datetime | None) -> SimulationResult:
        body = {"upsert": [content], **({"since": since.isoformat()} if since else {})}
        return await agreements.simulate_draft(
            session,
            viewer.principal,
            request.app.state.policy,
            request.app.state.recorded_requests,
            body,
            limit=limit,
            audit=refusals,
            source=source,
        )

    try:
        return Simulation.of(await replayed(None))
    except SimulationWindowTooLarge as too_large:
        if too_large.fits_since is None:
            raise
        return Simulation.of(await replayed(too_large.fits_since), since=too_large.fits_since, limit=limit)


@router.get("/agreements/new", response_class=HTMLResponse)
async def new_agreement(request: Request, session: SessionDep, viewer: SignedIn = Owner) -> Response:
    catalog = await catalog_of(session)
    form = AgreementForm(values=forms.values_from_content({"effect": "permit", "actions": ["read"]}))
    return _form_page(request, catalog, viewer, form, expected_version=None)


async def _submit(
    request: Request,
    session: AsyncSession,
    viewer: SignedIn,
    posted: FormData,
    refusals: EntrySink,
    *,
    expected_version: int | None,
    agreement_id: str | None,
) -> Response:
    """One handler for every step of the create and change flows.

    ``step`` absent: the form was posted; check it, then show the simulation.
    ``step=change``: back from the simulation to the form, values kept.
    ``step=save``: check the carried draft again (it came back from the browser), then save.
    A save beyond the owner's rights (another's agreement, another department's fields) is
    refused and audited as the API refuses it, before the draft's own problems are shown.
    """
    catalog = await catalog_of(session)
    step = posted.get("step")
    reason = str(posted.get("reason") or "").strip()[:1000]
    if step in ("save", "change"):
        draft = forms.decode_draft(str(posted.get("draft") or ""))
        try:
            # The draft came back from the browser: a hidden field edited into something no
            # agreement holds (a date that is not one, fields that are not a list) is refused.
            values = forms.values_from_content(draft, reason) if draft is not None else None
        except (ValueError, TypeError):
            values = None
        if draft is None or values is None:
            raise ConsolePageError(
                400, "The draft could not be read", "Start the change again from the form."
            )
    else:
        values = forms.form_values(posted)
        draft = forms.draft_from_values(values)
    if agreement_id is not None:
        # The id of an existing agreement is fixed by the address, whatever was posted.
        values["id"] = agreement_id
        draft["id"] = agreement_id
    source = source_address(request)
    if step == "save":
        await agreements.refuse_overreach(
            session, viewer.principal, draft, agreement_id=agreement_id, audit=refusals, source=source
        )
    checked = await check_draft(session, catalog, viewer.principal, draft, creating=expected_version is None)
    # Every problem at once: the dates typed in boxes, and everything the policy domain found.
    problems = forms.date_errors(values) + checked.errors
    if checked.content is None or problems or step == "change":
        form = AgreementForm(values=values)
        for name, message in problems:
            form.add_error(name, message)
        status = 422 if problems else 200
        # Dates typed wrongly are left out of the draft, so its text is not yet the one to sign.
        to_sign = None if forms.date_errors(values) else checked.signing_text
        return _form_page(
            request,
            catalog,
            viewer,
            form,
            expected_version=expected_version,
            status_code=status,
            signing_text=to_sign,
        )
    spec = AgreementSpec.model_validate(checked.content)
    if step == "save":
        body = checked.content | {"reason": reason}
        if expected_version is None:
            saved = await agreements.create_agreement(
                session, viewer.principal, body, audit=refusals, source=source
            )
        else:
            saved = await agreements.replace_agreement(
                session,
                viewer.principal,
                spec.id,
                body,
                expected=IfMatch.version(expected_version),
                audit=refusals,
                source=source,
            )
        return RedirectResponse(
            f"/console/agreements/{saved.agreement_id}/saved?version={saved.version}", status_code=303
        )
    simulation = await _simulation(request, session, viewer, checked.content, refusals, source)
    return _simulate_page(
        request,
        catalog,
        viewer,
        checked.content,
        simulation,
        reason=reason,
        expected_version=expected_version,
    )


@router.post("/agreements/new", response_class=HTMLResponse)
async def create_agreement(
    request: Request,
    session: SessionDep,
    refusals: RefusalWriterDep,
    viewer: SignedIn = Depends(csrf_checked),
    _owner: SignedIn = Owner,
    posted: FormData = Posted,
) -> Response:
    return await _submit(request, session, viewer, posted, refusals, expected_version=None, agreement_id=None)


async def _to_change(session: AsyncSession, viewer: SignedIn, agreement_id: str) -> AgreementRecord:
    """The agreement the edit form changes, as the edit page and each of its steps find it:
    the same 404 page for another department's agreement as for none, 409 unless it is
    active and the viewer's department's."""
    return await changeable(
        session,
        viewer,
        agreement_id,
        "This agreement cannot be changed",
        "Only an active agreement you own changes.",
    )


@router.get("/agreements/{agreement_id}/edit", response_class=HTMLResponse)
async def edit_agreement(
    agreement_id: AgreementId, request: Request, session: SessionDep, viewer: SignedIn = Owner
) -> Response:
    catalog = await catalog_of(session)
    current = await _to_change(session, viewer, agreement_id)
    form = AgreementForm(values=forms.values_from_content(current.content))
    return _form_page(request, catalog, viewer, form, expected_version=current.version)


@router.post("/agreements/{agreement_id}/edit", response_class=HTMLResponse)
async def change_agreement(
    agreement_id: AgreementId,
    request: Request,
    session: SessionDep,
    refusals: RefusalWriterDep,
    viewer: SignedIn = Depends(csrf_checked),
    _owner: SignedIn = Owner,
    posted: FormData = Posted,
) -> Response:
    """Every step of the edit form (check and simulate, back to the form, save) first finds
    the agreement as the edit page does, before reading anything posted: another
    department's agreement is the same 404 page as the edit page's, and a save of it is
    also refused and audited as the API's ``PUT`` is (``refuse_unchangeable``)."""
    if posted.get("step") == "save":
        try:
            await agreements.refuse_unchangeable(
                session, viewer.principal, agreement_id, audit=refusals, source=source_address(request)
            )
        except AgreementNotFound:
            raise not_found(agreement_id) from None
    await _to_change(session, viewer, agreement_id)
    expected = version_number(posted.get("expected_version"))
    return await _submit(
        request, session, viewer, posted, refusals, expected_version=expected, agreement_id=agreement_id
    )
