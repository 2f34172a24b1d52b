"""The citizen view's choices: a citizen's consents and objections, in plain language.

For one citizen it lists every live agreement that releases their data, grouped by its
legal basis: those that need the citizen's consent (give, pause, resume or revoke it),
those the citizen may object to (object, or withdraw the objection), and those that
apply by law, with the law named. Every change goes through the same service functions
as ``/v1/citizens/{id}/consents`` and ``/objections`` (``service.consent.service``), so
it is signed, audited and applies to the consumer's next request alike, and a consent's
``consent.changed`` event wakes this process's feeds and dispatcher once committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from service.auth.facts import source_address
from service.catalog.schemas import Catalog
from service.consent import service as consent_service
from service.consent.schemas import ConsentIn, ConsentOut
from service.console import wording
from service.console.sessions import SignedIn
from service.console.web import (
    CITIZEN_ID_HINT,
    ConsoleRoute,
    Posted,
    catalog_of,
    csrf_checked,
    form_citizen_id,
    needs_role,
    render,
)
from service.db import SessionDep
from service.errors import NotFound, ServiceError
from service.events import service as events_service
from service.policy.engine import Agreement
from service.records.schemas import is_citizen_id

router = APIRouter(route_class=ConsoleRoute)

Portal = Depends(needs_role("citizen-portal"))
_VERBS = {
    "read": "read",
    "verify": "check facts about",
    "history": "read earlier versions of",
    "lookup": "look up your record by",
    "subscribe": "be told of changes to",
    "write": "change",
}
_STATUS_WORDS = {
    "active": "You have given your consent.",
    "paused": "You have paused your consent: nothing is shared until you resume it.",
    "expired": "Your consent has expired.",
    "revoked": "You have revoked your consent.",
}


@dataclass(frozen=True)
class ChoiceRow:
    """One agreement as the citizen sees it, and what they may do about it."""

    agreement: str
    sentence: str
    legal_basis: str
    # Consent-based: the citizen's newest consent to it, if any.
    consent: ConsentOut | None = None
    status_words: str = ""
    # What the agreement now asks that the citizen's active or paused consent, given to
    # earlier terms, does not cover; empty when it covers everything.
    uncovered: str = ""
    # Objectable: whether the citizen has objected.
    objected: bool = False


def _what(catalog: Catalog, agreement: Agreement) -> str:
    """'the Riverside District Council may read your benefit status for the purpose of …'"""
    verbs = [_VERBS.get(a, a) for a in agreement.actions]
    fields = wording.join_words([wording.field_phrase(f) for f in agreement.fields])
    who = wording.department_phrase(catalog, agreement.consumer)
    purposes = wording.join_words([wording.purpose_phrase(catalog, p) for p in agreement.purposes])
    sentence = f"{who[:1].upper()}{who[1:]} may {wording.join_words(verbs)} your {fields}"
    return sentence + (f" for the purpose of {purposes}" if purposes else "")


def uncovered_note(catalog: Catalog, agreement: Agreement, consent: ConsentOut | None) -> str:
    """A sentence on what ``consent`` (still in force or paused) does not cover of the
    agreement as it is now: a consent covers only the terms it was given to, so an action
    or field the owner added since, or another consumer or purpose, needs a new consent."""
    if consent is None or consent.status not in ("active", "paused"):
        return ""
    who = wording.department_phrase(catalog, agreement.consumer)
    again = " To agree to what it says now, revoke your consent and give it again."
    if consent.consumer != agreement.consumer or consent.purpose not in agreement.purposes:
        return (
            f"Your consent was given to earlier terms and does not cover what this agreement says now.{again}"
        )
    gaps = []
    actions = [_VERBS.get(a, a) for a in agreement.actions if a not in consent.actions]
    if actions:
        every_field = wording.join_words([wording.field_phrase(f) for f in agreement.fields])
        gaps.append(f"It does not let {who} {wording.join_words(actions)} your {every_field}.")
    new_fields = [wording.field_phrase(f) for f in agreement.fields if f not in consent.fields]
    if new_fields:
        gaps.append(f"It does not cover your {wording.join_words(new_fields)}.")
    if not gaps:
        return ""
    return f"Your consent was given to earlier terms. {' '.join(gaps)}{again}"


async def _rows(
    request: Request, session: SessionDep, viewer: SignedIn, catalog: Catalog, citizen_id: str
) -> tuple[list[ChoiceRow], list[ChoiceRow], list[ChoiceRow]]:
    runtime = consent_service.runtime_of(request.app.state)
    policy = await runtime.policy.current(await session.connection())
    # Every consent, oldest first: the newest consent to each agreement is the one that holds.
    actor = consent_service.Actor(viewer.principal, source_address(request))
    choices = await consent_service.all_choices(session, runtime, actor, citizen_id)
    objected = {o.agreement for o in choices.objections}
    newest: dict[str, ConsentOut] = {}
    for given in choices.consents:
        newest[given.agreement] = given
    by_consent, by_objection, by_law = [], [], []
    for agreement in sorted(policy.agreements, key=lambda a: (a.basis, a.consumer, a.id)):
        if agreement.effect != "permit":
            continue
        what = _what(catalog, agreement)
        basis = agreement.legal_basis or ""
        if agreement.basis == "consent":
            held = newest.get(agreement.id)
            by_consent.append(
                ChoiceRow(
                    agreement.id,
                    f"{what}, only with your consent.",
                    basis,
                    consent=held,
                    status_words=_STATUS_WORDS[held.status] if held else "You have not given your consent.",
                    uncovered=uncovered_note(catalog, agreement, held),
                )
            )
        elif agreement.basis == "objectable":
            by_objection.append(
                ChoiceRow(
                    agreement.id, f"{what}, unless you object.", basis, objected=agreement.id in objected
                )
            )
        else:
            by_law.append(
                ChoiceRow(
                    agreement.id,
                    f"{what}. This is required by law ({basis}), so consent and objection do not apply.",
                    basis,
                )
            )
    return by_consent, by_objection, by_law


@router.get("/citizen/choices", response_class=HTMLResponse)
async def citizen_choices(
    request: Request, session: SessionDep, citizen_id: str = "", viewer: SignedIn = Portal
) -> Response:
    """The citizen's consents and objections, and the agreements that apply by law."""
    return await _page(request, session, viewer, form_citizen_id(citizen_id))


async def _page(
    request: Request, session: SessionDep, viewer: SignedIn, citizen_id: str, problem: str | None = None
) -> Response:
    errors: dict[str, list[str]] = {}
    rows: tuple[list[ChoiceRow], list[ChoiceRow], list[ChoiceRow]] | None = None
    if citizen_id and not is_citizen_id(citizen_id):
        errors["citizen_id"] = [CITIZEN_ID_HINT]
    elif citizen_id:
        try:
            rows = await _rows(request, session, viewer, await catalog_of(session), citizen_id)
        except NotFound:
            errors["citizen_id"] = ["No citizen has this ID"]
    status = 404 if errors.get("citizen_id") == ["No citizen has this ID"] else (400 if errors else 200)
    return render(
        request,
        "citizen_choices.html",
        {
            "section": "citizen",
            "errors": errors,
            "error_items": [("citizen_id", m) for m in errors.get("citizen_id", [])],
            "citizen_id": citizen_id,
            "rows": rows,
            "problem": problem,
        },
        viewer=viewer,
        status_code=409 if problem else status,
    )


class _Unoffered(Exception):
    """A change or agreement the choices page does not offer; the message says which."""


async def _change(
    session: AsyncSession,
    runtime: consent_service.ConsentRuntime,
    actor: consent_service.Actor,
    citizen_id: str,
    change: str,
    agreement: str,
    consent_id: str,
) -> None:
    """The change the choices form asks for, by the consent service's rules."""
    if change == "give":
        try:
            asked = ConsentIn(agreement=agreement)
        except ValidationError:
            # Not an agreement id at all ("", "Bad Id!"): the page offers none such.
            raise _Unoffered("That agreement is not one this page offers.") from None
        await consent_service.grant(session, runtime, actor, citizen_id, asked)
    elif change in ("paused", "active", "revoked"):
        await consent_service.change(session, runtime, actor, citizen_id, consent_id, change)
    elif change == "object":
        await consent_service.object_to(session, runtime, actor, citizen_id, agreement)
    elif change == "withdraw":
        await consent_service.withdraw_objection(session, runtime, actor, citizen_id, agreement)
    else:
        raise _Unoffered("That change is not one this page offers.")


@router.post("/citizen/choices", response_class=HTMLResponse)
async def change_choice(
    request: Request,
    session: SessionDep,
    after_commit: BackgroundTasks,
    viewer: SignedIn = Depends(csrf_checked),
    _portal: SignedIn = Portal,
    form: FormData = Posted,
) -> Response:
    """Give, pause, resume or revoke a consent, or object or withdraw an objection."""
    citizen_id = form_citizen_id(form.get("citizen_id"))
    agreement = str(form.get("agreement") or "")[:63]
    consent_id = str(form.get("consent_id") or "")[:36]
    change = str(form.get("change") or "")
    runtime = consent_service.runtime_of(request.app.state)
    actor = consent_service.Actor(viewer.principal, source_address(request))
    if not is_citizen_id(citizen_id):
        # Refused by its form, as the API refuses it, before any service is asked.
        return await _page(request, session, viewer, citizen_id)
    try:
        # A refused change writes nothing (the consent service's rule), so the page that
        # says so may return normally and the request's transaction commit.
        await _change(session, runtime, actor, citizen_id, change, agreement, consent_id)
    except (ServiceError, _Unoffered) as refused:
        message = refused.detail if isinstance(refused, ServiceError) else str(refused)
        return await _page(request, session, viewer, citizen_id, message)
    if change in ("give", "paused", "active", "revoked"):
        # As the API's consent endpoints do: once committed (the session ends before
        # background tasks run), wake this process's feeds and dispatcher for the
        # consent.changed event. Objections raise no event.
        after_commit.add_task(events_service.notify, request.app.state)
    return RedirectResponse(f"/console/citizen/choices?citizen_id={quote(citizen_id)}", status_code=303)
