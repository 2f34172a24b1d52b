"""The console over the real services on the test's rolled-back transaction: sign-in through
the auth domain, drafts through the policy rules, agreements and the audit through the
functions the API calls (so both give the same answers)."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.audit.search import get_audit_access
from service.audit.writer import append_in_transaction
from service.auth import service as auth_service
from service.auth.dependencies import Principal
from service.cases.models import Case
from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.console import citizen_pages, forms
from service.console.drafts import check_draft
from service.db import utcnow
from service.policy import repository as policy_repository
from service.policy import service as policy_service
from service.policy.models import AgreementVersion
from service.policy.schemas import AgreementSpec
from service.records.models import Citizen
from tests.fixtures.audit import TransactionAudit, make_entry
from tests.fixtures.auth import act_as

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
OWNER = Principal.with_roles("register-owner", "register", "data-owner")


async def _catalog(session: AsyncSession) -> Catalog:
    return (await catalog_service.current(session))[1]


async def sign_in(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    form = await client.get("/console/sign-in")
    found = CSRF.search(form.text)
    assert found is not None
    data = {"csrf_token": found.group(1), "client_id": client_id, "client_secret": secret}
    return await client.post("/console/sign-in", data=data)


@pytest.mark.usefixtures("catalog_loaded")
class TestSignInWithClients:
    async def test_a_data_owner_signs_in(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        created = await auth_service.create_client(session, department="register", roles=["data-owner"])
        assert created.client_secret is not None
        response = await sign_in(client, created.client_id, created.client_secret)
        assert response.status_code == 303
        assert (await client.get("/console")).status_code == 200

    async def test_unknown_client_and_wrong_secret_look_the_same(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="register", roles=["auditor"])
        wrong = await sign_in(client, created.client_id, "not-the-secret")
        unknown = await sign_in(client, "tc_nobody", "not-the-secret")
        assert wrong.status_code == unknown.status_code == 401
        message = "The client ID or client secret is not right"
        assert message in wrong.text
        assert message in unknown.text

    async def test_a_disabled_client_is_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="register", roles=["data-owner"])
        assert created.client_secret is not None
        await auth_service.disable_client(session, "operator:test", created.client_id)
        response = await sign_in(client, created.client_id, created.client_secret)
        assert response.status_code == 401
        assert "This client has been disabled" in response.text

    async def test_disabling_a_signed_in_client_signs_it_out(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="register", roles=["data-owner"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)
        await auth_service.disable_client(session, "operator:test", created.client_id)
        assert (await client.get("/console")).status_code == 303

    @pytest.mark.parametrize("roles", [["consumer"], ["writer", "registrar"], ["admin"]])
    async def test_other_roles_are_refused(
        self, client: httpx.AsyncClient, session: AsyncSession, roles: list[str]
    ) -> None:
        created = await auth_service.create_client(session, department="welfare", roles=roles)
        assert created.client_secret is not None
        response = await sign_in(client, created.client_id, created.client_secret)
        assert response.status_code == 403
        assert "cannot sign in to the console" in response.text


VALID: dict[str, Any] = {
    "id": "address-for-welfare",
    "consumer": "welfare",
    "fields": ["address"],
    "actions": ["read"],
    "purposes": ["benefit-eligibility"],
    "legal_basis": "Social Security Administration Act 1992, s.122",
}


@pytest.mark.usefixtures("catalog_loaded")
class TestDraftsFollowThePolicyRules:
    async def test_a_valid_draft_is_the_stored_form(self, session: AsyncSession) -> None:
        checked = await check_draft(session, await _catalog(session), OWNER, dict(VALID), creating=True)
        assert checked.errors == []
        assert checked.content == AgreementSpec.model_validate(VALID).content()

    @pytest.mark.parametrize(
        ("change", "field", "message"),
        [
            ({"id": "Not An Id"}, "id", "The agreement id must be lower-case letters"),
            ({"fields": []}, "fields", "An agreement needs at least one field"),
            (
                {"fields": ["licence_status"]},
                "fields",
                "Register does not own field 'licence_status' (owner: dvla)",
            ),
            ({"purposes": ["astrology"]}, "purposes", "Unknown purpose 'astrology'"),
            ({"legal_basis": None}, "legal_basis", "A permit needs a legal basis"),
            ({"consumer": "register"}, "consumer", "An owner needs no agreement with itself"),
            (
                {"valid_from": "2027-01-01", "valid_until": "2026-01-01"},
                "valid_until",
                "is before the start date",
            ),
            ({"valid_until": "2027-02-30"}, "valid_until", "The end date must be a real date"),
            ({"when": "citizen.status =="}, "when", "Invalid condition"),
        ],
    )
    async def test_each_problem_lands_on_its_field(
        self, session: AsyncSession, change: dict[str, Any], field: str, message: str
    ) -> None:
        draft = {key: value for key, value in (VALID | change).items() if value is not None}
        checked = await check_draft(session, await _catalog(session), OWNER, draft, creating=True)
        assert checked.content is None
        assert [name for name, _ in checked.errors] == [field]
        assert message in checked.errors[0][1]

    async def test_every_problem_is_reported_at_once(self, session: AsyncSession) -> None:
        # A bad ID (the schema's own check) and catalog problems come back together, in words.
        draft = {key: value for key, value in VALID.items() if key != "legal_basis"}
        draft |= {"id": "Not An Id", "purposes": ["astrology"], "valid_until": "2027-02-30"}
        checked = await check_draft(session, await _catalog(session), OWNER, draft, creating=True)
        assert checked.content is None
        assert sorted(name for name, _ in checked.errors) == ["id", "legal_basis", "purposes", "valid_until"]
        assert ("legal_basis", "A permit needs a legal basis") in checked.errors

    async def test_an_id_in_use_is_refused_when_creating_only(self, session: AsyncSession) -> None:
        spec = AgreementSpec.model_validate(VALID)
        await policy_service.put_agreement(session, None, spec, owner="register", author="tests", reason="")
        catalog = await _catalog(session)
        creating = await check_draft(session, catalog, OWNER, dict(VALID), creating=True)
        assert creating.errors == [
            ("id", "An agreement with this ID already exists; IDs are unique across the catalog")
        ]
        editing = await check_draft(session, catalog, OWNER, dict(VALID), creating=False)
        assert editing.errors == []


async def _signed_in_owner(client: httpx.AsyncClient, session: AsyncSession, department: str) -> str:
    """A data owner of ``department`` signed in to the console; its client id."""
    created = await auth_service.create_client(session, department=department, roles=["data-owner"])
    assert created.client_secret is not None
    assert (await sign_in(client, created.client_id, created.client_secret)).status_code == 303
    return created.client_id


async def _csrf(client: httpx.AsyncClient) -> str:
    found = CSRF.search((await client.get("/console")).text)
    assert found is not None
    return found.group(1)


async def _save(
    client: httpx.AsyncClient, path: str, content: dict[str, Any], **extra: str
) -> httpx.Response:
    data = {"csrf_token": await _csrf(client), "step": "save", "draft": forms.encode_draft(content), **extra}
    return await client.post(path, data=data)


@pytest.fixture
def audit_in_transaction(app: FastAPI, session: AsyncSession) -> None:
    """The audit API and the console read and record the log in the test's transaction."""
    app.dependency_overrides[get_audit_access] = TransactionAudit(session).access


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestAgreementsGiveTheApisAnswers:
    async def test_an_agreement_saved_in_the_console_is_the_apis_with_the_same_author(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id = await _signed_in_owner(client, session, "register")
        saved = await _save(client, "/console/agreements/new", dict(VALID), reason="welfare needs it")
        assert saved.status_code == 303, saved.text
        act_as(app, "register", "data-owner", client_id=client_id)
        read = await client.get(f"/v1/policies/{VALID['id']}")
        assert read.status_code == 200
        assert (read.json()["author"], read.json()["reason"], read.headers["etag"]) == (
            client_id,
            "welfare needs it",
            '"1"',
        )

    async def test_a_shape_problem_and_a_catalog_problem_come_back_together_in_both(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id = await _signed_in_owner(client, session, "register")
        form = {
            "csrf_token": await _csrf(client),
            "id": "Not An Id",  # the schema's pattern
            "consumer": "welfare",
            "fields": ["address"],
            "actions": ["read"],
            "purposes": ["astrology"],  # the catalog's purposes
            "effect": "permit",  # with no legal basis: the rule for permits
        }
        page = await client.post("/console/agreements/new", data=form)
        assert page.status_code == 422
        shown = html.unescape(page.text)
        act_as(app, "register", "data-owner", client_id=client_id)
        body = {key: form[key] for key in ("id", "consumer", "fields", "actions", "purposes", "effect")}
        answer = await client.post("/v1/policies", json=body)
        assert answer.status_code == 422
        messages = [e["msg"] for e in answer.json()["errors"]]
        assert messages == [
            "the agreement id must be lower-case letters, digits and hyphens, starting with a letter",
            "unknown purpose 'astrology'",
            "a permit needs a legal basis",
        ]
        # The console shows the same problems, as sentences beside their fields, in one page.
        for message in messages:
            assert message[:1].upper() + message[1:] in shown

    async def test_a_stale_version_is_refused_as_the_api_refuses_it(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await _signed_in_owner(client, session, "register")
        assert (await _save(client, "/console/agreements/new", dict(VALID))).status_code == 303
        path = f"/console/agreements/{VALID['id']}/edit"
        stale = await _save(client, path, dict(VALID), expected_version="7")
        # StaleAgreement, the API's 412, shown as a page.
        assert stale.status_code == 412
        assert "is at version 1; read it again" in stale.text

    async def test_a_revoked_agreement_is_neither_edited_nor_revoked_again(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await _signed_in_owner(client, session, "register")
        assert (await _save(client, "/console/agreements/new", dict(VALID))).status_code == 303
        path = f"/console/agreements/{VALID['id']}"
        assert (await client.get(f"{path}/edit")).status_code == 200
        assert (await client.get(f"{path}/revoke")).status_code == 200
        revoked = await client.post(
            f"{path}/revoke", data={"csrf_token": await _csrf(client), "expected_version": "1"}
        )
        assert revoked.status_code == 303, revoked.text
        edit = await client.get(f"{path}/edit")
        assert edit.status_code == 409
        assert "This agreement cannot be changed" in edit.text
        again = await client.get(f"{path}/revoke")
        assert again.status_code == 409
        assert "This agreement cannot be revoked" in again.text

    async def test_another_owners_agreement_is_missing_in_both(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        spec = AgreementSpec.model_validate(
            VALID | {"id": "points-for-welfare", "fields": ["points"], "consumer": "welfare"}
        )
        await policy_service.put_agreement(session, None, spec, owner="dvla", author="tests", reason="")
        client_id = await _signed_in_owner(client, session, "register")
        page = await client.get("/console/agreements/points-for-welfare")
        assert page.status_code == 404
        assert "There is no agreement points-for-welfare you can see" in page.text
        act_as(app, "register", "data-owner", client_id=client_id)
        assert (await client.get("/v1/policies/points-for-welfare")).status_code == 404


async def _deny_entries(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(AuditEntryRow.canonical)
        .where(AuditEntryRow.action == "policy-change", AuditEntryRow.decision == "deny")
        .order_by(AuditEntryRow.id)
    )
    return [json.loads(text) for text in rows.scalars()]


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestOverreachIsAuditedAsInTheApi:
    """The console saves through the policy API's functions, so a change beyond the owner's
    rights is refused and audited alike (``tests/policy/test_refusals_audited.py``)."""

    async def test_saving_another_departments_field_is_403_and_one_deny_entry(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id = await _signed_in_owner(client, session, "register")
        draft = VALID | {"fields": ["address", "licence_status"]}
        page = await _save(client, "/console/agreements/new", draft)
        assert page.status_code == 403
        assert "register may grant only its own fields; this covers fields of dvla." in page.text
        [entry] = await _deny_entries(session)
        assert (entry["client_id"], entry["status"], entry["owners"]) == (
            client_id,
            403,
            ["dvla", "register"],
        )
        assert [(r["agreement"], r["reason"]) for r in entry["reasons"]] == [
            (
                VALID["id"],
                f"agreement {VALID['id']} not created: "
                "register may grant only its own fields; this covers fields of dvla",
            )
        ]
        assert await policy_repository.current_version(session, VALID["id"]) is None

    @pytest.mark.parametrize(("step", "change"), [("edit", "replaced"), ("revoke", "revoked")])
    async def test_another_owners_agreement_and_an_unknown_one_are_404_and_read_alike(
        self, client: httpx.AsyncClient, session: AsyncSession, step: str, change: str
    ) -> None:
        spec = AgreementSpec.model_validate(VALID | {"id": "points-for-welfare", "fields": ["points"]})
        await policy_service.put_agreement(session, None, spec, owner="dvla", author="tests", reason="")
        await _signed_in_owner(client, session, "register")
        for agreement in ("points-for-welfare", "no-such-agreement"):
            path = f"/console/agreements/{agreement}/{step}"
            if step == "edit":
                page = await _save(client, path, VALID | {"id": agreement}, expected_version="1")
            else:
                page = await client.post(
                    path, data={"csrf_token": await _csrf(client), "expected_version": "1"}
                )
            assert page.status_code == 404, page.text
            # The page's own 404, as for the agreement's edit and revoke pages.
            assert f"There is no agreement {agreement} you can see." in page.text
            assert page.text == (await client.get(path)).text
        another, unknown = await _deny_entries(session)
        for entry, agreement in ((another, "points-for-welfare"), (unknown, "no-such-agreement")):
            assert [r["reason"] for r in entry["reasons"]] == [
                f"agreement {agreement} not {change}: register has no such agreement"
            ]
            assert (entry["status"], entry["owners"]) == (404, ["register"])
        current = await policy_repository.current_version(session, "points-for-welfare")
        assert current is not None
        assert (current.version, current.status) == (1, "active")

    @pytest.mark.parametrize("step", ["form", "change", "save", "save an unreadable draft"])
    async def test_every_step_of_the_edit_form_answers_as_the_edit_page_for_another_owners_agreement(
        self, client: httpx.AsyncClient, session: AsyncSession, step: str
    ) -> None:
        """The edit form's later steps (the posted form, which would simulate; back to the
        form; the save) answer another department's agreement with the edit page's own 404,
        the same as for no agreement at all: no simulation of it, no form to edit it, no
        change, and nothing that tells it from one that does not exist."""
        spec = AgreementSpec.model_validate(VALID | {"id": "points-for-welfare", "fields": ["points"]})
        await policy_service.put_agreement(session, None, spec, owner="dvla", author="tests", reason="")
        await _signed_in_owner(client, session, "register")
        pages = []
        for agreement in ("points-for-welfare", "no-such-agreement"):
            path = f"/console/agreements/{agreement}/edit"
            edit_page = await client.get(path)
            assert edit_page.status_code == 404
            # The register's own fields: a draft its owner could save as an agreement of its own.
            draft = VALID | {"id": agreement}
            data: dict[str, Any] = {"csrf_token": await _csrf(client), "expected_version": "1"}
            if step == "form":
                data |= {k: v for k, v in draft.items() if k != "id"} | {"effect": "permit"}
            elif step == "save an unreadable draft":
                data |= {"step": "save", "draft": "not a draft"}
            else:
                data |= {"step": step, "draft": forms.encode_draft(draft)}
            answer = await client.post(path, data=data)
            assert (answer.status_code, answer.text) == (404, edit_page.text)
            pages.append(answer.text.replace(agreement, "AGREEMENT"))
        assert pages[0] == pages[1]
        current = await policy_repository.current_version(session, "points-for-welfare")
        assert current is not None
        assert (current.version, current.status, current.owner) == (1, "active", "dvla")
        assert await policy_repository.current_version(session, "no-such-agreement") is None
        # No simulation ran: it would have read the audit log as an audit query.
        queries = await session.execute(select(AuditEntryRow.id).where(AuditEntryRow.action == "audit-query"))
        assert queries.scalars().all() == []

    async def test_a_stale_save_and_a_second_revoke_write_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await _signed_in_owner(client, session, "register")
        assert (await _save(client, "/console/agreements/new", dict(VALID))).status_code == 303
        path = f"/console/agreements/{VALID['id']}"
        assert (await _save(client, f"{path}/edit", dict(VALID), expected_version="7")).status_code == 412
        revoke = {"csrf_token": await _csrf(client), "expected_version": "1"}
        assert (await client.post(f"{path}/revoke", data=revoke)).status_code == 303
        again = {"csrf_token": await _csrf(client), "expected_version": "2"}
        assert (await client.post(f"{path}/revoke", data=again)).status_code == 409
        assert await _deny_entries(session) == []


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestTheEditorRefusesWhatItCannotRead:
    async def test_a_year_too_large_for_a_date_is_a_form_error(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await _signed_in_owner(client, session, "register")
        form = {
            "csrf_token": await _csrf(client),
            **{key: value for key, value in VALID.items() if isinstance(value, str)},
            "fields": VALID["fields"],
            "actions": VALID["actions"],
            "purposes": VALID["purposes"],
            "valid_from-day": "1",
            "valid_from-month": "1",
            "valid_from-year": "9999999999",
        }
        page = await client.post("/console/agreements/new", data=form)
        assert page.status_code == 422
        assert "Valid from must be a real date, with the year in 4 digits" in page.text

    @pytest.mark.parametrize("step", ["save", "change"])
    @pytest.mark.parametrize(
        "edited", [{"valid_from": "x"}, {"valid_until": ["2027-01-01"]}, {"fields": 5}, {"actions": None}]
    )
    async def test_a_carried_draft_edited_into_nonsense_is_a_400_page(
        self, client: httpx.AsyncClient, session: AsyncSession, step: str, edited: dict[str, Any]
    ) -> None:
        await _signed_in_owner(client, session, "register")
        data = {"csrf_token": await _csrf(client), "step": step, "draft": forms.encode_draft(VALID | edited)}
        page = await client.post("/console/agreements/new", data=data)
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
        assert "The draft could not be read" in page.text

    @pytest.mark.parametrize("step", ["save", "change"])
    async def test_a_carried_draft_nested_too_deep_to_decode_is_a_400_page(
        self, client: httpx.AsyncClient, session: AsyncSession, step: str
    ) -> None:
        await _signed_in_owner(client, session, "register")
        data = {"csrf_token": await _csrf(client), "step": step, "draft": "[" * 5000}
        page = await client.post("/console/agreements/new", data=data)
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
        assert "The draft could not be read" in page.text

    async def test_allowed_claims_nested_too_deep_to_decode_are_a_form_error(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        """The hidden ``verify`` field edited into "[[[[…": refused by the policy rules as
        any other claims that are not a mapping, on the form, never a server error."""
        await _signed_in_owner(client, session, "register")
        form = {
            "csrf_token": await _csrf(client),
            **{key: value for key, value in VALID.items() if isinstance(value, str)},
            "fields": VALID["fields"],
            "actions": VALID["actions"],
            "purposes": VALID["purposes"],
            "verify": "[" * 5000,
        }
        page = await client.post("/console/agreements/new", data=form)
        assert page.status_code == 422
        assert page.headers["content-type"].startswith("text/html")
        assert 'href="#verify"' in page.text


# Independent mistakes on one form, each with the field it lands on and its message. The
# effect (forbid) refuses the consent basis and the delayed disclosure; the rest are each
# wrong on their own, and the basis is judged though no action was ticked.
EVERY_MISTAKE = {
    "id": "address-for-welfare",
    "consumer": "welfare",
    "purposes": ["benefit-eligibility", "gossip"],
    "legal_basis": "Social Security Administration Act 1992, s.122",
    "effect": "forbid",
    "basis": "consent",
    "disclosure": "after-case-closed",
    "max_delay": "P1Y",
    "valid_from-day": "1",
    "valid_from-month": "13",
    "valid_from-year": "2027",
}
EVERY_PROBLEM = [
    ("fields", "An agreement needs at least one field"),
    ("actions", "An agreement needs at least one action"),
    ("purposes", "Unknown purpose 'gossip'"),
    ("purposes", "A consent is given to one purpose: name exactly one"),
    ("valid_from", "Valid from must be a real date"),
    ("disclosure", "Only a permit can delay disclosure"),
    (
        "max_delay",
        "'P1Y' is not an ISO 8601 duration in weeks, days, hours, minutes or seconds (e.g. P365D)",
    ),
    ("basis", "Only a permit can have basis consent"),
]
SUMMARY = re.compile(r'<ul class="error-summary__list">(.*?)</ul>', re.S)
SUMMARY_ITEM = re.compile(r'<li><a href="#([a-z_]+)">(.*?)</a></li>')


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestTheFormReportsEveryProblemAtOnce:
    @pytest.mark.parametrize("editing", [False, True])
    async def test_independent_mistakes_are_all_in_the_summary_and_beside_their_fields(
        self, client: httpx.AsyncClient, session: AsyncSession, editing: bool
    ) -> None:
        await _signed_in_owner(client, session, "register")
        path = "/console/agreements/new"
        form: dict[str, Any] = {"csrf_token": await _csrf(client), **EVERY_MISTAKE}
        if editing:
            assert (await _save(client, path, dict(VALID))).status_code == 303
            path = f"/console/agreements/{VALID['id']}/edit"
            form["expected_version"] = "1"
        page = await client.post(path, data=form)
        assert page.status_code == 422
        summary = SUMMARY.search(page.text)
        assert summary is not None
        shown = [(name, html.unescape(text)) for name, text in SUMMARY_ITEM.findall(summary.group(1))]
        assert shown == EVERY_PROBLEM
        text = page.text.replace("&#39;", "'")
        for name, message in EVERY_PROBLEM:
            # Each field has one message element (its id is unique), holding all its problems.
            assert text.count(f'id="{name}-error"') == 1
            beside = re.search(f'<p class="error-message" id="{name}-error">(.*?)</p>', text, re.S)
            assert beside is not None
            said = f'<span class="visually-hidden">Error:</span> {html.escape(message, quote=False)}'
            assert said in beside.group(1)


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestAuditGivesTheApisAnswers:
    async def test_a_data_owner_sees_the_same_entries_in_both_and_each_search_is_recorded(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        conn = await session.connection()
        for citizen, owner in (
            ("c-register-1", "register"),
            ("c-dvla-1", "dvla"),
            ("c-register-2", "register"),
        ):
            await append_in_transaction(conn, make_entry(citizen_id=citizen, owners=[owner]))
        client_id = await _signed_in_owner(client, session, "register")
        page = await client.get("/console/audit")
        assert page.status_code == 200
        shown = {c for c in ("c-register-1", "c-register-2", "c-dvla-1") if c in page.text}
        act_as(app, "register", "data-owner", client_id=client_id)
        listed = (await client.get("/v1/audit/entries")).json()["items"]
        by_api = {item["entry"]["citizen_id"] for item in listed if item["entry"]["action"] == "read"}
        assert shown == by_api == {"c-register-1", "c-register-2"}
        recorded = select(AuditEntryRow.client_id).where(AuditEntryRow.action == "audit-query")
        # The console's search and the API's, each recorded under the signed-in client.
        assert list((await session.execute(recorded)).scalars()) == [client_id, client_id]

    @pytest.mark.parametrize("path", ["/console/audit", "/console/audit/export.csv"])
    async def test_the_last_day_there_is_as_the_to_date_is_a_form_error(
        self, client: httpx.AsyncClient, session: AsyncSession, path: str
    ) -> None:
        # The export is the auditor's; the search page is open to auditors too.
        created = await auth_service.create_client(session, department="audit-office", roles=["auditor"])
        assert created.client_secret is not None
        assert (await sign_in(client, created.client_id, created.client_secret)).status_code == 303
        page = await client.get(path, params={"until": "9999-12-31"})
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
        assert "The to date must be before 9999-12-31" in page.text

    async def test_an_unknown_citizen_has_no_access_log_in_either(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)
        # An id of the form registration issues, that no citizen has (an id of another form
        # is refused by its form: 422 on the API, as on every citizen route).
        unknown = "00000000-0000-4000-8000-00000000ffff"
        page = await client.post(
            "/console/citizen", data={"csrf_token": await _csrf(client), "citizen_id": unknown}
        )
        assert page.status_code == 404
        assert "No citizen has this ID" in page.text
        act_as(app, "portal", "citizen-portal", client_id=created.client_id)
        assert (await client.get(f"/v1/citizens/{unknown}/access-log")).status_code == 404

    @pytest.mark.parametrize("typed", ["0000-beef-1", "3f2c1d9e\x00", "G" * 36])
    async def test_a_citizen_id_of_another_form_is_refused_as_the_api_refuses_it(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, typed: str
    ) -> None:
        created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)
        page = await client.post(
            "/console/citizen", data={"csrf_token": await _csrf(client), "citizen_id": typed}
        )
        assert page.status_code == 400
        assert "A citizen ID is 36 characters" in page.text

    async def test_a_citizen_id_in_capitals_shows_that_citizens_log(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        citizen = "00000000-0000-4000-8000-00000000bee3"
        now = utcnow()
        session.add(Citizen(id=citizen, registered_by="tests", created_at=now, updated_at=now))
        await session.flush()
        await append_in_transaction(await session.connection(), make_entry(citizen_id=citizen))
        created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)
        page = await client.post(
            "/console/citizen", data={"csrf_token": await _csrf(client), "citizen_id": f" {citizen.upper()}"}
        )
        assert page.status_code == 200, page.text[-3000:]
        assert "Welfare read your licence status" in html.unescape(page.text)


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestTheCitizenViewHoldsInvestigations:
    async def test_a_held_access_is_left_out_then_shown_with_its_closing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        now = utcnow()
        session.add(
            Citizen(
                id="00000000-0000-4000-8000-00000000bee1",
                registered_by="tests",
                created_at=now,
                updated_at=now,
            )
        )
        session.add(
            AgreementVersion(
                agreement_id="tax-code-for-fraud",
                owner="revenue",
                version=1,
                status="active",
                content={"id": "tax-code-for-fraud", "disclosure": "after-case-closed", "max_delay": "P365D"},
                content_hash="0" * 64,
                author="tests",
                is_current=True,
            )
        )
        await session.flush()
        conn = await session.connection()
        await append_in_transaction(conn, make_entry(citizen_id="00000000-0000-4000-8000-00000000bee1"))
        held = make_entry(
            citizen_id="00000000-0000-4000-8000-00000000bee1",
            department="revenue",
            time="2026-03-03T10:00:00+00:00",
            case_ref="FRAUD-1",
            purpose="tax-administration",
            fields_requested=["tax_code"],
            fields_released=["tax_code"],
            reasons=[
                {"field": "tax_code", "effect": "permit", "agreement": "tax-code-for-fraud", "version": 1}
            ],
        )
        await append_in_transaction(conn, held)
        created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)

        async def view() -> str:
            page = await client.post(
                "/console/citizen",
                data={
                    "csrf_token": await _csrf(client),
                    "citizen_id": "00000000-0000-4000-8000-00000000bee1",
                },
            )
            assert page.status_code == 200, page.text
            return html.unescape(page.text)

        before = await view()
        assert "Welfare read your licence status" in before
        assert "Revenue" not in before
        session.add(
            Case(
                department="revenue",
                case_ref="FRAUD-1",
                opened_at=datetime(2026, 3, 3, tzinfo=UTC),
                closed_at=datetime(2026, 9, 1, tzinfo=UTC),
                closed_by="tests",
            )
        )
        await session.flush()
        after = await view()
        assert (
            "On 3 March 2026, Revenue read your tax code for the purpose of tax administration. This was "
            "kept from you during an investigation and disclosed when the investigation closed on "
            "1 September 2026."
        ) in after


@pytest.mark.usefixtures("catalog_loaded", "audit_in_transaction")
class TestTheCitizenViewShowsEveryAccess:
    async def test_a_log_longer_than_a_page_goes_on_to_the_newest_access(
        self, client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past one page the newest accesses were dropped, under a heading that gave the
        page's length as the record's whole count."""
        monkeypatch.setattr(citizen_pages, "ACCESS_LOG_LIMIT", 2)
        now = utcnow()
        session.add(
            Citizen(
                id="00000000-0000-4000-8000-00000000bee2",
                registered_by="tests",
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        conn = await session.connection()
        for day in (1, 2, 3):
            entry = make_entry(
                citizen_id="00000000-0000-4000-8000-00000000bee2", time=f"2026-03-0{day}T10:00:00+00:00"
            )
            await append_in_transaction(conn, entry)
        created = await auth_service.create_client(session, department="portal", roles=["citizen-portal"])
        assert created.client_secret is not None
        await sign_in(client, created.client_id, created.client_secret)

        first = await client.post(
            "/console/citizen",
            data={"csrf_token": await _csrf(client), "citizen_id": "00000000-0000-4000-8000-00000000bee2"},
        )
        assert first.status_code == 200, first.text
        assert "Accesses 1 to 2 to this record" in first.text
        assert "On 2 March 2026" in first.text
        assert "On 3 March 2026" not in first.text
        found = re.search(r'<form[^>]*id="later-accesses".*?</form>', first.text, re.S)
        assert found is not None
        later_form = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', found.group(0)))
        assert later_form["citizen_id"] == "00000000-0000-4000-8000-00000000bee2"

        later = await client.post("/console/citizen", data=later_form)
        assert later.status_code == 200, later.text
        assert "Accesses 3 to 3 to this record" in later.text
        assert "On 3 March 2026" in later.text
        assert "On 1 March 2026" not in later.text
        assert 'id="later-accesses"' not in later.text
