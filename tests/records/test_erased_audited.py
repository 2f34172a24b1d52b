"""An access answered 410 Gone (the citizen's record was erased) is an access: each is
audited as refused before the answer leaves, under the citizen's pseudonymous id, with
no field value (an erased citizen has none), and fails closed (503, not 410) when the
audit cannot be written. Through the HTTP API on the test's transaction, and read back
through the auditor's search and the citizen's access log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from service.audit.errors import AuditUnavailable
from tests.records.conftest import RecordsEnv, as_
from tests.records.test_case_refs import DELAYED, DELAYED_WRITE

PROBLEM = "application/problem+json"
PURPOSE = "benefit-eligibility"
REGISTRAR = as_("register", "registrar")
WELFARE = as_("welfare", "consumer")  # may look citizens up: told 410
AUDITOR = as_("audit-office", "auditor")
PORTAL = as_("portal", "citizen-portal")
ERASURE = {"reason": "court-order", "legal_basis": "Court order 2026/11"}
SECRET = "Unforgettable"

Ask = Callable[[RecordsEnv, str], Awaitable[httpx.Response]]


async def _read(env: RecordsEnv, citizen_id: str) -> httpx.Response:
    return await env.client.get(
        f"/v1/citizens/{citizen_id}", params={"purpose": PURPOSE, "fields": "given_name"}, headers=WELFARE
    )


async def _verify(env: RecordsEnv, citizen_id: str) -> httpx.Response:
    body = {"purpose": PURPOSE, "claims": {"date_of_birth": {"lte": "2000-01-01"}}}
    return await env.client.post(f"/v1/citizens/{citizen_id}/verify", json=body, headers=WELFARE)


async def _history(env: RecordsEnv, citizen_id: str) -> httpx.Response:
    return await env.client.get(
        f"/v1/citizens/{citizen_id}/fields/address/history", params={"purpose": PURPOSE}, headers=WELFARE
    )


async def _write_as_owner(env: RecordsEnv, citizen_id: str) -> httpx.Response:
    body = {"fields": {"address": "Elsewhere"}, "reason": "moved"}
    return await env.client.patch(
        f"/v1/citizens/{citizen_id}/fields", json=body, headers=as_("register", "writer")
    )


async def _write_as_delegate(env: RecordsEnv, citizen_id: str) -> httpx.Response:
    body = {"fields": {"address": "Elsewhere"}, "reason": "moved", "purpose": "address-update"}
    return await env.client.patch(
        f"/v1/citizens/{citizen_id}/fields", json=body, headers=as_("dvla", "writer")
    )


async def _erase_again(env: RecordsEnv, citizen_id: str) -> httpx.Response:
    return await env.client.delete(f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REGISTRAR)


# (route, the audited action, the fields it asked for, how it is asked)
ROUTES: list[Any] = [
    pytest.param("read", ["given_name"], _read, id="read"),
    pytest.param("verify", ["date_of_birth"], _verify, id="verify"),
    pytest.param("history", ["address"], _history, id="history"),
    pytest.param("write", ["address"], _write_as_owner, id="write-as-owner"),
    pytest.param("write", ["address"], _write_as_delegate, id="write-as-delegate"),
    pytest.param("erase", ["national_id"], _erase_again, id="erase-again"),
]


async def _erased(env: RecordsEnv) -> str:
    citizen_id, _ = await env.register(given_name=SECRET, address="1 Lane", date_of_birth="1980-01-01")
    erasure = await env.client.delete(f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REGISTRAR)
    assert erasure.status_code == 204, erasure.text
    return citizen_id


async def _entries(env: RecordsEnv, **params: str) -> list[dict[str, Any]]:
    """The entries an auditor's search finds, but the auditor's own searches (each an
    ``audit-query`` entry naming the citizen it searched for)."""
    response = await env.client.get("/v1/audit/entries", params=params, headers=AUDITOR)
    assert response.status_code == 200, response.text
    return [item["entry"] for item in response.json()["items"] if item["entry"]["action"] != "audit-query"]


async def _gone(env: RecordsEnv, citizen_id: str) -> list[dict[str, Any]]:
    """The entries of accesses answered 410, of ``citizen_id``."""
    return [e for e in await _entries(env, citizen_id=citizen_id) if e["status"] == 410]


class _FailingAudit:
    """An audit sink whose storage is down: every append fails."""

    async def append(self, entry: Any) -> int:
        raise AuditUnavailable("The audit trail cannot be written.")

    async def append_many(self, entries: Any) -> list[int]:
        raise AuditUnavailable("The audit trail cannot be written.")


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


class TestEveryGoneIsAudited:
    @pytest.mark.parametrize(("action", "fields", "ask"), ROUTES)
    async def test_one_refused_entry_with_status_410(
        self, records_env: RecordsEnv, action: str, fields: list[str], ask: Ask
    ) -> None:
        citizen_id = await _erased(records_env)
        before = await _entries(records_env, citizen_id=citizen_id)
        response = await ask(records_env, citizen_id)
        assert _problem(response, 410)["type"].endswith("citizen-erased")
        after = await _entries(records_env, citizen_id=citizen_id)
        # The attempt alone (``_entries`` leaves out the auditor's searches).
        (entry,) = after[len(before) :]
        assert entry["action"] == action
        assert (entry["status"], entry["decision"], entry["fields_released"]) == (410, "deny", [])
        assert entry["fields_requested"] == fields
        assert entry["citizen_id"] == citizen_id
        assert entry["citizen_status"] == "erased"
        assert SECRET not in str(entry)
        # The auditor finds it by what it was.
        assert entry in await _entries(records_env, decision="deny", action=action)
        # Twice asked, twice audited: a department that keeps asking shows.
        again = await ask(records_env, citizen_id)
        _problem(again, 410)
        assert [e["action"] for e in await _gone(records_env, citizen_id)] == [action, action]

    async def test_batch_get_audits_each_erased_citizen_as_410(self, records_env: RecordsEnv) -> None:
        citizen_id = await _erased(records_env)
        kept, _ = await records_env.register(given_name="Kept")
        response = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id, kept], "fields": ["given_name"], "purpose": PURPOSE},
            headers=WELFARE,
        )
        assert response.status_code == 200, response.text
        gone, served = response.json()["items"]
        assert gone["withheld"] == [{"field": "given_name", "reason": "the citizen's record was erased"}]
        assert served["fields"]["given_name"]["value"] == "Kept"
        (entry,) = await _gone(records_env, citizen_id)
        assert (entry["action"], entry["decision"], entry["fields_released"]) == ("batch-get", "deny", [])
        assert entry["citizen_status"] == "erased"
        batch = [e for e in await _entries(records_env, citizen_id=kept) if e["action"] == "batch-get"]
        assert [(e["status"], e["decision"]) for e in batch] == [(200, "permit")]

    async def test_a_writer_told_404_is_audited_once_as_404(self, records_env: RecordsEnv) -> None:
        """Revenue may write no register field and may not look citizens up: it is told 404,
        as for a made-up id, and that refusal is its one entry (no 410 beside it)."""
        citizen_id = await _erased(records_env)
        body = {"fields": {"address": "Elsewhere"}, "reason": "moved"}
        response = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields", json=body, headers=as_("revenue", "writer")
        )
        _problem(response, 404)
        writes = [e for e in await _entries(records_env, citizen_id=citizen_id) if e["action"] == "write"]
        assert [(e["status"], e["decision"]) for e in writes] == [(404, "deny")]

    async def test_the_citizen_sees_the_attempts_on_their_access_log(self, records_env: RecordsEnv) -> None:
        """The access log of an erased citizen still answers (the audit stays): it is how the
        citizen learns who kept asking after the erasure."""
        citizen_id = await _erased(records_env)
        _problem(await _read(records_env, citizen_id), 410)
        log = await records_env.client.get(f"/v1/citizens/{citizen_id}/access-log", headers=PORTAL)
        assert log.status_code == 200, log.text
        lines = [(i["department"], i["action"], i["decision"]) for i in log.json()["items"]]
        assert lines[-2:] == [("register", "erase", "permit"), ("welfare", "read", "deny")]


class TestGoneUnderDelayedDisclosure:
    @pytest.mark.parametrize("action", ["read", "write"])
    async def test_the_attempt_is_held_from_the_citizen_as_an_access_would_be(
        self, records_env: RecordsEnv, action: str
    ) -> None:
        """Revenue asks for an erased citizen's name, or writes its address, under its fraud
        agreements, whose accesses the citizen sees only once the case closes (or after
        their maximum delay), without the case reference they need: the 410 entry cites the
        agreement, as a 422 for want of the reference would, so the attempt is held from
        the citizen's access log too; the auditor sees it at once."""
        agreement = DELAYED if action == "read" else DELAYED_WRITE
        created = await records_env.client.post(
            "/v1/policies", json=agreement, headers=as_("register", "data-owner")
        )
        assert created.status_code == 201, created.text
        citizen_id = await _erased(records_env)
        if action == "read":
            response = await records_env.client.get(
                f"/v1/citizens/{citizen_id}",
                params={"purpose": "fraud-investigation", "fields": "given_name"},
                headers=as_("revenue", "consumer"),
            )
        else:
            body = {"fields": {"address": "1 Row"}, "reason": "fraud", "purpose": "fraud-investigation"}
            response = await records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields", json=body, headers=as_("revenue", "writer")
            )
        _problem(response, 410)
        (entry,) = await _gone(records_env, citizen_id)
        assert (entry["department"], entry["action"]) == ("revenue", action)
        assert [r["agreement"] for r in entry["reasons"]] == [agreement["id"]]
        log = await records_env.client.get(f"/v1/citizens/{citizen_id}/access-log", headers=PORTAL)
        assert log.status_code == 200, log.text
        assert "revenue" not in [item["department"] for item in log.json()["items"]]


class TestGoneFailsClosed:
    @pytest.mark.parametrize(("action", "fields", "ask"), ROUTES)
    async def test_503_not_410_when_the_audit_cannot_be_written(
        self, records_env: RecordsEnv, action: str, fields: list[str], ask: Ask
    ) -> None:
        del action, fields
        citizen_id = await _erased(records_env)
        records_env.audit = _FailingAudit()
        body = _problem(await ask(records_env, citizen_id), 503)
        assert "erased" not in body["detail"]

    async def test_batch_get_is_503_when_the_audit_cannot_be_written(self, records_env: RecordsEnv) -> None:
        citizen_id = await _erased(records_env)
        records_env.audit = _FailingAudit()
        response = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id], "fields": ["given_name"], "purpose": PURPOSE},
            headers=WELFARE,
        )
        _problem(response, 503)
        assert "erased" not in response.text


class TestToldNotFound:
    async def test_a_reader_that_may_not_know_is_told_404_and_audited_as_404(
        self, records_env: RecordsEnv
    ) -> None:
        """Revenue may not look citizens up and is party to no agreement over given_name: an
        erased citizen is answered as a made-up id (404), and audited with that 404 as a
        live citizen's refused read is. A made-up id names no citizen and has no entry."""
        erased = await _erased(records_env)
        live, _ = await records_env.register(given_name="Alive")
        made_up = "00000000-0000-4000-8000-000000000000"
        revenue = as_("revenue", "consumer")
        answers = []
        for citizen_id in (erased, live, made_up):
            response = await records_env.client.get(
                f"/v1/citizens/{citizen_id}",
                params={"purpose": PURPOSE, "fields": "given_name"},
                headers=revenue,
            )
            answers.append(_problem(response, 404))
        assert answers[0] == answers[1] == answers[2]
        for citizen_id in (erased, live):
            reads = [e for e in await _entries(records_env, citizen_id=citizen_id) if e["action"] == "read"]
            assert [(e["status"], e["decision"], e["client_id"]) for e in reads] == [
                (404, "deny", reads[0]["client_id"])
            ]
            assert reads[0]["department"] == "revenue"
        assert await _entries(records_env, citizen_id=made_up) == []

        batch = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [erased, live, made_up], "fields": ["given_name"], "purpose": PURPOSE},
            headers=revenue,
        )
        assert batch.status_code == 200, batch.text
        items = batch.json()["items"]
        assert [item["withheld"] for item in items[:2]] == [items[2]["withheld"]] * 2
        for citizen_id in (erased, live):
            batched = [
                e for e in await _entries(records_env, citizen_id=citizen_id) if e["action"] == "batch-get"
            ]
            assert [(e["status"], e["decision"]) for e in batched] == [(404, "deny")]


class TestToldGoneByTheirOwnAgreement:
    """A caller that may not look citizens up but whose agreement permits the fields it
    asks for is party to an agreement over them: it may know the citizen existed, so every
    read tells it 410, audited as 410, and batch-get lists the citizen as erased."""

    async def test_read_is_410(self, records_env: RecordsEnv) -> None:
        citizen_id = await _erased(records_env)
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"purpose": "tax-administration", "fields": "licence_status"},
            headers=as_("revenue", "consumer"),
        )
        assert _problem(response, 410)["type"].endswith("citizen-erased")
        (entry,) = await _gone(records_env, citizen_id)
        assert (entry["department"], entry["action"], entry["decision"]) == ("revenue", "read", "deny")

    async def test_batch_get_lists_the_citizen_as_erased(self, records_env: RecordsEnv) -> None:
        citizen_id = await _erased(records_env)
        made_up = "00000000-0000-4000-8000-000000000000"
        response = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={
                "ids": [citizen_id, made_up],
                "fields": ["licence_status"],
                "purpose": "tax-administration",
            },
            headers=as_("revenue", "consumer"),
        )
        assert response.status_code == 200, response.text
        gone, unknown = response.json()["items"]
        assert gone["withheld"] == [{"field": "licence_status", "reason": "the citizen's record was erased"}]
        assert unknown["withheld"] == [
            {"field": "licence_status", "reason": "no such citizen is available to you"}
        ]
        (entry,) = await _gone(records_env, citizen_id)
        assert (entry["department"], entry["action"]) == ("revenue", "batch-get")

    async def test_history_is_410(self, records_env: RecordsEnv) -> None:
        """Welfare may look citizens up for benefit eligibility only; for fraud investigation
        its history agreement over the address is what makes it a party."""
        citizen_id = await _erased(records_env)
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}/fields/address/history",
            params={"purpose": "fraud-investigation"},
            headers={**WELFARE, "X-Case-Ref": "F-1"},
        )
        _problem(response, 410)
        (entry,) = await _gone(records_env, citizen_id)
        assert (entry["department"], entry["action"]) == ("welfare", "history")
