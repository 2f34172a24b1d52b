"""The citizen view: a citizen id in, the record's access log out, in plain language.

Every line comes with its inclusion proof against the newest witnessed checkpoint
(``audit.search.citizen_access_log`` with proofs, as ``?proofs=true`` on the API), and the
page checks those proofs and the checkpoint's signatures here with
``audit.citizen_proofs.check_proofs``, the code an outside verifier uses, then says in
plain words what was proven and who cosigned it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from service.audit import citizen_proofs
from service.audit import search as audit_search
from service.audit.checkpoint import Checkpoint, CheckpointError, NoteSigner, NoteVerifier
from service.audit.search import AuditAccessDep, Page
from service.audit.witnessing import WitnessConfig
from service.auth.facts import source_address
from service.console import wording
from service.console.sessions import SignedIn
from service.console.views import AccessProof, AccessRow
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
from service.digits import ascii_digits
from service.errors import NotFound
from service.records.schemas import is_citizen_id
from service.witness.cosignature import split_note

router = APIRouter(route_class=ConsoleRoute)

Portal = Depends(needs_role("citizen-portal"))
# At most this many accesses are shown on a page, oldest first; a button shows the next ones.
ACCESS_LOG_LIMIT = 1000


def _proven(request: Request, config: WitnessConfig, page: Page) -> AccessProof:
    """Check the page's proofs as the citizen's own verifier would."""
    signer: NoteSigner = request.app.state.audit_signer
    proofs = [item["proof"] for item in page.items]
    try:
        checked = citizen_proofs.check_proofs(
            NoteVerifier.parse(signer.verifier_key()), config, page.checkpoint, proofs
        )
    except CheckpointError as exc:
        return AccessProof(0, len(proofs), None, (), problem=str(exc))
    size = None if page.checkpoint is None else Checkpoint.parse_body(split_note(page.checkpoint)[0]).size
    return AccessProof(checked.verified, checked.pending, size, checked.witnesses)


@router.get("/citizen", response_class=HTMLResponse)
async def citizen_form(request: Request, viewer: SignedIn = Portal) -> Response:
    return render(
        request,
        "citizen.html",
        {
            "section": "citizen",
            "errors": {},
            "error_items": [],
            "citizen_id": "",
            "entries": None,
            "proof": None,
            "shown": 0,
            "next_after": None,
        },
        viewer=viewer,
    )


def _count(value: object, digits: int) -> int:
    """A count or cursor the page posted back to itself; 0 for anything else."""
    text = value if isinstance(value, str) else ""
    return int(text) if ascii_digits(text) and len(text) <= digits else 0


@router.post("/citizen", response_class=HTMLResponse)
async def citizen_log(
    request: Request,
    session: SessionDep,
    access: AuditAccessDep,
    viewer: SignedIn = Depends(csrf_checked),
    _portal: SignedIn = Portal,
    form: FormData = Posted,
) -> Response:
    citizen_id = form_citizen_id(form.get("citizen_id"))
    # The next page of a log longer than one: where the last page stopped, and how many it
    # and those before it showed.
    after, shown = _count(form.get("after"), 18), _count(form.get("shown"), 9)
    errors: dict[str, list[str]] = {}
    entries = None
    proof = None
    next_after = None
    if not citizen_id:
        errors["citizen_id"] = ["Enter the citizen's ID"]
    elif not is_citizen_id(citizen_id):
        # Refused by its form, as the API refuses it, before it reaches the log.
        errors["citizen_id"] = [CITIZEN_ID_HINT]
    else:
        try:
            page = await audit_search.citizen_access_log(
                access,
                viewer.principal,
                citizen_id,
                after=after,
                limit=ACCESS_LOG_LIMIT,
                source=source_address(request),
                now=request.app.state.clock(),
                proofs=request.app.state.witness_config,
            )
        except NotFound:
            errors["citizen_id"] = ["No citizen has this ID"]
        else:
            rows = [AccessRow.of(item) for item in page.items]
            next_after = page.next_cursor
            catalog = await catalog_of(session)
            entries = [
                wording.access_sentence(
                    catalog,
                    when=row.time,
                    department=row.department,
                    action=row.action,
                    fields=row.fields,
                    purpose=row.purpose,
                    decision=row.decision,
                    disclosed_at=row.disclosed_at,
                    disclosed_by=row.disclosed_by,
                )
                for row in rows
            ]
            proof = (
                wording.proof_sentence(_proven(request, request.app.state.witness_config, page))
                if rows
                else None
            )
    status = 404 if errors.get("citizen_id") == ["No citizen has this ID"] else (400 if errors else 200)
    return render(
        request,
        "citizen.html",
        {
            "section": "citizen",
            "errors": errors,
            "error_items": [("citizen_id", m) for m in errors.get("citizen_id", [])],
            "citizen_id": citizen_id,
            "entries": entries,
            "proof": proof,
            "shown": shown if entries else 0,
            "next_after": next_after,
        },
        viewer=viewer,
        status_code=status,
    )
