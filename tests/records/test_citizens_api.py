"""The citizen endpoints: allowed paths, and every way a request is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from service.audit.errors import AuditUnavailable
from tests.records.conftest import RecordsEnv, as_

PROBLEM = "application/problem+json"
REGISTRAR = as_("register", "registrar")
REGISTER_WRITER = as_("register", "writer")
WELFARE = as_("welfare", "consumer")
DVLA = as_("dvla", "consumer", "writer")
REVENUE = as_("revenue", "consumer")
AUDITOR = as_("audit-office", "auditor")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


ERASURE = {"reason": "registered-in-error", "legal_basis": "UK GDPR Art. 17(1)(d)"}


async def audit_entries(env: RecordsEnv, citizen_id: str) -> list[dict[str, Any]]:
    response = await env.client.get("/v1/audit/entries", params={"citizen_id": citizen_id}, headers=AUDITOR)
    assert response.status_code == 200, response.text
    return [item["entry"] for item in response.json()["items"]]


class TestRegister:
    async def test_registers_and_returns_id_etag_and_location(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post(
            "/v1/citizens",
            json={"national_id": "QQ123456A", "fields": {"given_name": "Ada", "date_of_birth": "1990-02-03"}},
            headers=REGISTRAR,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "active"
        assert body["version"] == 1
        assert body["fields"] == ["date_of_birth", "given_name", "national_id"]
        assert response.headers["etag"] == '"1"'
        assert response.headers["location"] == f"/v1/citizens/{body['id']}"

    async def test_duplicate_national_id_is_409(self, records_env: RecordsEnv) -> None:
        _, national_id = await records_env.register(given_name="Bo")
        response = await records_env.client.post(
            "/v1/citizens", json={"national_id": f"  {national_id.lower()} ", "fields": {}}, headers=REGISTRAR
        )
        body = problem(response, 409)
        assert national_id not in response.text
        assert "already registered" in body["detail"]

    async def test_registrar_cannot_set_another_departments_field(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post(
            "/v1/citizens", json={"national_id": "ZZ1", "fields": {"tax_code": "1257L"}}, headers=REGISTRAR
        )
        assert "tax_code" in problem(response, 403)["detail"]

    async def test_invalid_values_are_422_naming_each_field(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post(
            "/v1/citizens",
            json={"national_id": "ZZ2", "fields": {"date_of_birth": "2023-02-30", "nonsense": 1}},
            headers=REGISTRAR,
        )
        body = problem(response, 422)
        locations = {tuple(e["loc"]) for e in body["errors"]}
        # A field the catalog does not know is located by position, not named.
        assert locations == {("body", "fields", "date_of_birth"), ("body", "fields", 1)}
        assert "2023-02-30" not in response.text
        assert "nonsense" not in response.text

    async def test_consumer_cannot_register(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post("/v1/citizens", json={"national_id": "ZZ3"}, headers=WELFARE)
        assert "citizens:register" in problem(response, 403)["detail"]

    async def test_unauthenticated_is_401(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post("/v1/citizens", json={"national_id": "ZZ4"})
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_oversize_body_is_413(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post(
            "/v1/citizens",
            content=b'{"national_id": "' + b"x" * (2 * 1024 * 1024) + b'"}',
            headers={**REGISTRAR, "content-type": "application/json"},
        )
        problem(response, 413)


class TestRead:
    async def test_releases_allowed_fields_and_withholds_the_rest(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(
            given_name="Cy", address="1 High St", date_of_birth="1980-01-01"
        )
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "given_name,address,national_id", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["fields"]["given_name"]["value"] == "Cy"
        assert body["fields"]["given_name"]["owner"] == "register"
        assert body["fields"]["given_name"]["version"] == 1
        assert body["fields"]["address"]["value"] == "1 High St"
        assert [w["field"] for w in body["withheld"]] == ["national_id"]
        assert "welfare" in body["withheld"][0]["reason"]
        assert response.headers["etag"] == '"1"'

    async def test_read_is_audited_without_values(self, records_env: RecordsEnv) -> None:
        citizen_id, national_id = await records_env.register(given_name="Distinctivename")
        await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "given_name,tax_code", "purpose": "benefit-eligibility"},
            headers={**WELFARE, "X-Case-Ref": "CASE-42", "X-Test-On-Behalf-Of": "officer-7"},
        )
        entries = [e for e in await audit_entries(records_env, citizen_id) if e["action"] == "read"]
        assert len(entries) == 1
        entry = entries[0]
        assert entry["department"] == "welfare"
        assert entry["fields_requested"] == ["given_name", "tax_code"]
        assert entry["fields_released"] == ["given_name"]
        assert entry["decision"] == "partial"
        assert entry["purpose"] == "benefit-eligibility"
        assert entry["case_ref"] == "CASE-42"
        assert entry["on_behalf_of"] == "officer-7"
        assert entry["legal_basis"] == ["Social Security Administration Act 1992, s.122"]
        assert {r["field"] for r in entry["reasons"]} == {"given_name", "tax_code"}
        text = str(entries)
        assert "Distinctivename" not in text
        assert national_id not in text

    async def test_nothing_allowed_is_403_when_the_caller_may_look_up(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register()
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "tax_code", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert "tax_code" in problem(response, 403)["detail"]

    async def test_nothing_allowed_is_404_when_the_caller_may_not_know(self, records_env: RecordsEnv) -> None:
        """The portal has no agreement over these fields and cannot look citizens up."""
        citizen_id, _ = await records_env.register()
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "tax_code,benefit_status", "purpose": "tax-administration"},
            headers=as_("portal", "consumer"),
        )
        assert problem(response, 404) == problem(
            await records_env.client.get(
                "/v1/citizens/00000000-0000-4000-8000-00000000abcd",
                params={"fields": "tax_code,benefit_status", "purpose": "tax-administration"},
                headers=as_("portal", "consumer"),
            ),
            404,
        )

    async def test_a_party_to_a_missed_agreement_gets_403(self, records_env: RecordsEnv) -> None:
        """Revenue's agreement over benefit_status expired: it may know, so 403 with the reason."""
        citizen_id, _ = await records_env.register()
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "benefit_status", "purpose": "tax-administration"},
            headers=REVENUE,
        )
        assert "expired 2020-01-01" in problem(response, 403)["detail"]

    async def test_unknown_citizen_is_404(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.get(
            "/v1/citizens/00000000-0000-4000-8000-000000000000",
            params={"purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        problem(response, 404)

    @pytest.mark.parametrize(
        ("params", "loc"),
        [
            ({"fields": "given_name,shoe_size", "purpose": "benefit-eligibility"}, ["query", "fields", 1]),
            ({"fields": "given_name", "purpose": "astrology"}, ["query", "purpose"]),
            ({"fields": "given_name"}, ["query", "purpose"]),
        ],
    )
    async def test_unknown_field_or_purpose_is_422(
        self, records_env: RecordsEnv, params: dict[str, str], loc: list[str | int]
    ) -> None:
        citizen_id, _ = await records_env.register()
        response = await records_env.client.get(f"/v1/citizens/{citizen_id}", params=params, headers=WELFARE)
        body = problem(response, 422)
        assert loc in [e["loc"] for e in body["errors"]]
        # The unknown name is the caller's input, and is not repeated.
        assert "shoe_size" not in response.text
        assert "astrology" not in response.text

    async def test_forbid_wins_and_expired_agreements_deny(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register()
        await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"licence_number": "SMITH901", "licence_status": "valid"}, "reason": "issued"},
            headers=DVLA,
        )
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={
                "fields": "licence_number,licence_status,benefit_status",
                "purpose": "tax-administration",
            },
            headers=REVENUE,
        )
        body = response.json()
        assert set(body["fields"]) == {"licence_status"}
        reasons = {w["field"]: w["reason"] for w in body["withheld"]}
        assert "revenue-never-licence-number" in reasons["licence_number"]
        assert "expired" in reasons["benefit_status"]

    async def test_condition_on_citizen_status(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="2 Low Rd")
        read = {"fields": "address", "purpose": "tax-administration"}
        assert (
            await records_env.client.get(f"/v1/citizens/{citizen_id}", params=read, headers=REVENUE)
        ).status_code == 200
        death = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"date_of_death": "2026-11-01"}, "reason": "death registered"},
            headers=REGISTER_WRITER,
        )
        assert death.json()["status"] == "deceased"
        after = await records_env.client.get(f"/v1/citizens/{citizen_id}", params=read, headers=REVENUE)
        assert "condition" in problem(after, 403)["detail"]


class TestWrite:
    async def test_owner_writes_new_versions_and_keeps_history(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="Old House")
        write = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"address": "New House"}, "reason": "moved"},
            headers={**REGISTER_WRITER, "If-Match": '"1"'},
        )
        assert write.status_code == 200, write.text
        assert write.json() == {"id": citizen_id, "status": "active", "version": 2, "fields": {"address": 2}}
        assert write.headers["etag"] == '"2"'
        history = await records_env.client.get(
            f"/v1/citizens/{citizen_id}/fields/address/history",
            params={"purpose": "fraud-investigation"},
            headers={**WELFARE, "X-Case-Ref": "FRAUD-1"},
        )
        assert history.status_code == 200, history.text
        items = history.json()["items"]
        assert [(i["value"], i["version"]) for i in items] == [("New House", 2), ("Old House", 1)]
        assert items[0]["written_by"] == "register-client"

    async def test_a_case_reference_sent_twice_is_422(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="A")
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}/fields/address/history",
            params={"purpose": "fraud-investigation"},
            headers=[*WELFARE.items(), ("X-Case-Ref", "FRAUD-1"), ("X-Case-Ref", "FRAUD-2")],
        )
        assert problem(response, 422)["errors"] == [
            {"loc": ["header", "X-Case-Ref"], "msg": "given more than once"}
        ]

    async def test_history_needs_its_case_reference(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="A")
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}/fields/address/history",
            params={"purpose": "fraud-investigation"},
            headers=WELFARE,
        )
        assert "case reference" in problem(response, 403)["detail"]

    async def test_history_pages_with_a_cursor(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="v1")
        for n in range(2, 6):
            await records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": f"v{n}"}, "reason": "moved"},
                headers=REGISTER_WRITER,
            )
        url = f"/v1/citizens/{citizen_id}/fields/address/history"
        params: dict[str, Any] = {"purpose": "fraud-investigation", "limit": 2}
        headers = {**WELFARE, "X-Case-Ref": "F-2"}
        seen: list[str] = []
        while True:
            page = (await records_env.client.get(url, params=params, headers=headers)).json()
            seen.extend(item["value"] for item in page["items"])
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == ["v5", "v4", "v3", "v2", "v1"]

    async def test_delegated_write_needs_its_purpose(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="Here")
        body = {"fields": {"address": "There"}, "reason": "citizen told DVLA"}
        refused = await records_env.client.patch(f"/v1/citizens/{citizen_id}/fields", json=body, headers=DVLA)
        problem(refused, 403)
        allowed = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields", json={**body, "purpose": "address-update"}, headers=DVLA
        )
        assert allowed.status_code == 200, allowed.text
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "address", "purpose": "address-update"},
            headers=DVLA,
        )
        assert read.json()["fields"]["address"]["value"] == "There"

    async def test_stale_etag_is_412_and_writes_nothing(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="Same")
        response = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"address": "Lost"}, "reason": "late"},
            headers={**REGISTER_WRITER, "If-Match": '"7"'},
        )
        problem(response, 412)
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "address", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert read.json()["fields"]["address"]["value"] == "Same"
        assert read.headers["etag"] == '"1"'

    async def test_stale_etag_is_audited_as_a_refused_write(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="Same")
        response = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"address": "Lost"}, "reason": "late"},
            headers={**REGISTER_WRITER, "If-Match": '"7"'},
        )
        problem(response, 412)
        writes = [e for e in await audit_entries(records_env, citizen_id) if e["action"] == "write"]
        assert [(e["status"], e["decision"], e["fields_released"]) for e in writes] == [(412, "deny", [])]
        assert writes[0]["fields_requested"] == ["address"]

    async def test_concurrent_writers_with_the_same_etag_exactly_one_wins(
        self, committed_records_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await committed_records_env.register(address="Start")

        async def write(n: int) -> int:
            response = await committed_records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": f"Writer {n}"}, "reason": "race"},
                headers={**REGISTER_WRITER, "If-Match": '"1"'},
            )
            return response.status_code

        statuses = await asyncio.gather(*(write(n) for n in range(8)))
        assert sorted(statuses) == [200] + [412] * 7
        read = await committed_records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "address", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert read.json()["fields"]["address"]["version"] == 2
        assert read.headers["etag"] == '"2"'

    async def test_invalid_values_are_422(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register()
        response = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"points": "three", "licence_status": "suspended"}, "reason": "x"},
            headers=DVLA,
        )
        body = problem(response, 422)
        assert {tuple(e["loc"]) for e in body["errors"]} == {
            ("body", "fields", "points"),
            ("body", "fields", "licence_status"),
        }

    @pytest.mark.parametrize(
        ("if_match", "status"),
        [
            ('W/"1"', 412),  # weak: If-Match compares strongly (RFC 9110 section 13.1.1)
            ("", 412),
            ('"abc"', 412),
            ('"99999999999"', 412),  # beyond the version column's integers: no version
            ('"7", "1"', 200),  # a list holds if any of its tags is the current one
            ("*", 200),
        ],
    )
    async def test_if_match_as_rfc_9110_reads_it(
        self, records_env: RecordsEnv, if_match: str, status: int
    ) -> None:
        citizen_id, _ = await records_env.register(address="Before")
        response = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"address": "After"}, "reason": "moved"},
            headers={**REGISTER_WRITER, "If-Match": if_match},
        )
        assert response.status_code == status, response.text
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "address", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert read.json()["fields"]["address"]["value"] == ("After" if status == 200 else "Before")

    async def test_malformed_if_match_is_400(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register()
        response = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"address": "x"}, "reason": "x"},
            headers={**REGISTER_WRITER, "If-Match": "yesterday"},
        )
        problem(response, 400)


class TestLookupAndVerify:
    async def test_lookup_by_national_id(self, records_env: RecordsEnv) -> None:
        citizen_id, national_id = await records_env.register()
        response = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": national_id, "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert response.status_code == 200
        assert response.json() == {"id": citizen_id}

    async def test_lookup_unknown_and_not_allowed_look_the_same(self, records_env: RecordsEnv) -> None:
        _, national_id = await records_env.register()
        unknown = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": "NOPE999", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        not_allowed = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": national_id, "purpose": "tax-administration"},
            headers=REVENUE,
        )
        assert problem(unknown, 404) == problem(not_allowed, 404)

    async def test_a_refused_lookup_is_on_the_citizens_access_log(self, records_env: RecordsEnv) -> None:
        """The caller is told 404 as for an unknown national id, but the citizen whose
        national id it was sees the refused attempt, as a refused read is shown."""
        citizen_id, national_id = await records_env.register()
        refused = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": national_id, "purpose": "tax-administration"},
            headers=REVENUE,
        )
        problem(refused, 404)
        assert citizen_id not in refused.text
        [entry] = [e for e in await audit_entries(records_env, citizen_id) if e["action"] == "lookup"]
        assert (entry["department"], entry["decision"], entry["status"]) == ("revenue", "deny", 404)
        assert entry["fields_released"] == []
        log = await records_env.client.get(
            f"/v1/citizens/{citizen_id}/access-log", headers=as_("portal", "citizen-portal")
        )
        assert log.status_code == 200, log.text
        lookups = [i for i in log.json()["items"] if i["action"] == "lookup"]
        assert lookups == [
            {
                "time": entry["time"],
                "department": "revenue",
                "action": "lookup",
                "fields": ["national_id"],
                "purpose": "tax-administration",
                "decision": "deny",
            }
        ]

    async def test_lookup_decides_with_the_citizens_status(self, records_env: RecordsEnv) -> None:
        """A lookup agreement's condition on citizen.status sees the citizen found, as a
        read's does: a permit while alive applies, and a forbid once deceased stops it."""
        owner = as_("register", "data-owner")
        for agreement in (
            {
                "id": "lookup-for-revenue-while-alive",
                "consumer": "revenue",
                "fields": ["national_id"],
                "actions": ["lookup"],
                "purposes": ["tax-administration"],
                "legal_basis": "Finance Act 2008, s.114",
                "when": 'citizen.status == "active"',
            },
            {
                "id": "no-lookup-of-the-dead-for-welfare",
                "consumer": "welfare",
                "effect": "forbid",
                "fields": ["national_id"],
                "actions": ["lookup"],
                "legal_basis": "Register policy on deaths",
                "when": 'citizen.status == "deceased"',
            },
        ):
            created = await records_env.client.post(
                "/v1/policies", json={**agreement, "reason": "lookup by status"}, headers=owner
            )
            assert created.status_code == 201, created.text
        citizen_id, national_id = await records_env.register()

        async def lookup(headers: dict[str, str], purpose: str) -> httpx.Response:
            return await records_env.client.post(
                "/v1/citizens/lookup", json={"national_id": national_id, "purpose": purpose}, headers=headers
            )

        alive = await lookup(REVENUE, "tax-administration")
        assert alive.status_code == 200, alive.text
        assert alive.json() == {"id": citizen_id}
        assert (await lookup(WELFARE, "benefit-eligibility")).status_code == 200
        died = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"date_of_death": "2026-11-30"}, "reason": "death registered"},
            headers=REGISTER_WRITER,
        )
        assert died.status_code == 200, died.text
        problem(await lookup(REVENUE, "tax-administration"), 404)
        problem(await lookup(WELFARE, "benefit-eligibility"), 404)

    async def test_verify_answers_booleans_only(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(date_of_birth="2000-06-15")
        response = await records_env.client.post(
            f"/v1/citizens/{citizen_id}/verify",
            json={
                "purpose": "benefit-eligibility",
                "claims": {"date_of_birth": {"lte": "2008-11-29", "gte": "1900-01-01"}},
            },
            headers=WELFARE,
        )
        assert response.status_code == 200
        assert response.json() == {"results": {"date_of_birth": True}, "withheld": []}
        assert "2000-06-15" not in response.text
        younger = await records_env.client.post(
            f"/v1/citizens/{citizen_id}/verify",
            json={"purpose": "benefit-eligibility", "claims": {"date_of_birth": {"in": ["2000-06-16"]}}},
            headers=WELFARE,
        )
        assert younger.json()["results"] == {"date_of_birth": False}

    async def test_verify_refusals(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(date_of_birth="2000-06-15")
        url = f"/v1/citizens/{citizen_id}/verify"
        bad_operator = await records_env.client.post(
            url,
            json={"purpose": "benefit-eligibility", "claims": {"date_of_birth": {"like": "2000"}}},
            headers=WELFARE,
        )
        problem(bad_operator, 422)
        bad_date = await records_env.client.post(
            url,
            json={"purpose": "benefit-eligibility", "claims": {"date_of_birth": {"lte": "2000-13-01"}}},
            headers=WELFARE,
        )
        problem(bad_date, 422)
        not_allowed = await records_env.client.post(
            url,
            json={"purpose": "benefit-eligibility", "claims": {"given_name": {"eq": "A"}}},
            headers=WELFARE,
        )
        problem(not_allowed, 403)


class TestBatchAndErase:
    async def test_batch_get_decides_per_citizen(self, records_env: RecordsEnv) -> None:
        living, _ = await records_env.register(address="Living Lane")
        dead, _ = await records_env.register(address="Gone Grove")
        await records_env.client.patch(
            f"/v1/citizens/{dead}/fields",
            json={"fields": {"date_of_death": "2026-01-01"}, "reason": "death"},
            headers=REGISTER_WRITER,
        )
        unknown = "00000000-0000-4000-8000-000000000001"
        response = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [living, dead, unknown], "fields": ["address"], "purpose": "tax-administration"},
            headers=REVENUE,
        )
        assert response.status_code == 200
        items = {item["id"]: item for item in response.json()["items"]}
        assert items[living]["fields"]["address"]["value"] == "Living Lane"
        assert items[dead]["fields"] == {}
        assert items[unknown]["fields"] == {}
        assert response.json()["next_cursor"] is None
        assert len(await audit_entries(records_env, living)) >= 1

    async def test_batch_over_1000_is_422(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": ["x"] * 1001, "purpose": "tax-administration"},
            headers=REVENUE,
        )
        problem(response, 422)

    async def test_erase_shreds_and_later_reads_are_410(self, records_env: RecordsEnv) -> None:
        citizen_id, national_id = await records_env.register(given_name="Shredded")
        erase = await records_env.client.delete(
            f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REGISTRAR
        )
        assert erase.status_code == 204
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=WELFARE
        )
        problem(read, 410)
        # batch-get gives the same answer, per citizen: nothing released, "erased" for each field.
        batch = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id], "fields": ["given_name"], "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert batch.status_code == 200, batch.text
        assert batch.json()["items"] == [
            {
                "id": citizen_id,
                "fields": {},
                "withheld": [{"field": "given_name", "reason": "the citizen's record was erased"}],
            }
        ]
        lookup = await records_env.client.post(
            "/v1/citizens/lookup",
            json={"national_id": national_id, "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        problem(lookup, 404)
        again = await records_env.client.delete(
            f"/v1/citizens/{citizen_id}", params=ERASURE, headers=REGISTRAR
        )
        problem(again, 410)
        erasures = [e for e in await audit_entries(records_env, citizen_id) if e["action"] == "erase"]
        # The citizen's status the decision saw is recorded, as for every decided access;
        # the second erasure is audited as refused with its 410.
        assert [(e["status"], e["decision"], e["citizen_status"]) for e in erasures] == [
            (204, "permit", "active"),
            (410, "deny", "erased"),
        ]

    async def test_erasures_sent_at_once_erase_once(self, committed_records_env: RecordsEnv) -> None:
        """One shreds and is audited; the others find the citizen erased: 410, as an erasure
        sent after it would."""
        env = committed_records_env
        citizen_id, _ = await env.register(given_name="Twice")
        url = f"/v1/citizens/{citizen_id}"
        answers = await asyncio.gather(
            *(env.client.delete(url, params=ERASURE, headers=REGISTRAR) for _ in range(4))
        )
        assert sorted(a.status_code for a in answers) == [204, 410, 410, 410]
        for answer in answers:
            if answer.status_code == 410:
                problem(answer, 410)
        entries = await audit_entries(env, citizen_id)
        # One shredding; the others are audited as the refusals they were.
        assert [e["action"] for e in entries].count("key-operation") == 1
        erasures = sorted((e["status"], e["decision"]) for e in entries if e["action"] == "erase")
        assert erasures == [(204, "permit"), (410, "deny"), (410, "deny"), (410, "deny")]
        read = await env.client.get(url, params={"purpose": "benefit-eligibility"}, headers=WELFARE)
        problem(read, 410)

    async def test_writes_racing_an_erasure_are_written_before_it_or_410(
        self, committed_records_env: RecordsEnv
    ) -> None:
        """A write without If-Match that loses the race is told the record was erased, as
        one sent after the erasure is; never that its version is stale."""
        env = committed_records_env
        for _round in range(3):
            citizen_id, _ = await env.register(given_name="Racing")
            url = f"/v1/citizens/{citizen_id}"
            write = {"fields": {"given_name": "Later"}, "reason": "correction"}
            erase, *writes = await asyncio.gather(
                env.client.delete(url, params=ERASURE, headers=REGISTRAR),
                *(env.client.patch(f"{url}/fields", json=write, headers=REGISTER_WRITER) for _ in range(3)),
            )
            assert erase.status_code == 204
            assert {w.status_code for w in writes} <= {200, 410}, [w.text for w in writes]

    @pytest.mark.parametrize(
        ("if_match", "status"),
        [
            ('"1"', 412),
            ('W/"2"', 412),
            ('"abc"', 412),
            ("yesterday", 400),
            ('"2"', 204),
            ('"1", "2"', 204),
            ("*", 204),
        ],
    )
    async def test_erasure_honours_if_match(
        self, records_env: RecordsEnv, if_match: str, status: int
    ) -> None:
        """RFC 9110 section 13.1.1: If-Match is evaluated before the method is performed. A
        registrar that read version 1 does not erase the record written since."""
        citizen_id, _ = await records_env.register(given_name="Before")
        write = {"fields": {"given_name": "After"}, "reason": "correction"}
        written = await records_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields", json=write, headers=REGISTER_WRITER
        )
        assert written.headers["etag"] == '"2"'
        url = f"/v1/citizens/{citizen_id}"
        erase = await records_env.client.delete(
            url, params=ERASURE, headers={**REGISTRAR, "If-Match": if_match}
        )
        assert erase.status_code == status, erase.text
        read = await records_env.client.get(url, params={"purpose": "benefit-eligibility"}, headers=WELFARE)
        if status == 204:
            problem(read, 410)
            return
        problem(erase, status)
        assert read.json()["fields"]["given_name"]["value"] == "After"
        if status == 412:
            refused = [e for e in await audit_entries(records_env, citizen_id) if e["action"] == "erase"]
            assert [(e["status"], e["decision"]) for e in refused] == [(412, "deny")]

    async def test_the_register_is_told_404_for_a_made_up_id_and_nothing_is_audited(
        self, records_env: RecordsEnv
    ) -> None:
        """The register may know who is registered: 404 (as a write's), and no entry, since
        a made-up id names no citizen."""
        made_up = "00000000-0000-4000-8000-000000000404"
        erase = await records_env.client.delete(f"/v1/citizens/{made_up}", params=ERASURE, headers=REGISTRAR)
        problem(erase, 404)
        assert await audit_entries(records_env, made_up) == []

    async def test_consumer_cannot_erase(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register()
        url = f"/v1/citizens/{citizen_id}"
        refused = await records_env.client.delete(url, params=ERASURE, headers=WELFARE)
        problem(refused, 403)


class _FailingAudit:
    """An audit sink whose storage is down: every append fails."""

    async def append(self, entry: Any) -> int:
        raise AuditUnavailable("The audit trail cannot be written.")

    async def append_many(self, entries: Any) -> list[int]:
        raise AuditUnavailable("The audit trail cannot be written.")


class TestFailClosed:
    async def test_read_returns_503_and_no_data_when_the_audit_fails(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(given_name="Secretname")
        records_env.audit = _FailingAudit()
        response = await records_env.client.get(
            f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=WELFARE
        )
        batch = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id], "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        problem(response, 503)
        problem(batch, 503)
        assert "Secretname" not in response.text + batch.text

    async def test_a_refused_erasure_is_503_when_the_audit_fails(self, records_env: RecordsEnv) -> None:
        """An existing citizen's erasure refused to another department is audited before the
        403 leaves; without the audit it is 503, and nothing is erased."""
        citizen_id, _ = await records_env.register(given_name="Kept")
        records_env.audit = _FailingAudit()
        refused = await records_env.client.delete(
            f"/v1/citizens/{citizen_id}", params=ERASURE, headers=as_("welfare", "registrar")
        )
        problem(refused, 503)
        records_env.audit = None
        read = await records_env.client.get(
            f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=WELFARE
        )
        assert read.json()["fields"]["given_name"]["value"] == "Kept"


class TestAStrangerCannotTellCitizensApart:
    """A caller with no agreement over a citizen gets one answer for an unknown, an
    existing and an erased citizen, from every route, so that no route is an oracle of
    who is registered or who was erased (DESIGN: "404 if unknown or not allowed")."""

    async def _three_citizens(self, env: RecordsEnv) -> list[str]:
        existing, _ = await env.register(given_name="Present", address="Here", date_of_birth="1980-01-01")
        erased, _ = await env.register(given_name="Gone", address="There")
        erasure = await env.client.delete(f"/v1/citizens/{erased}", params=ERASURE, headers=REGISTRAR)
        assert erasure.status_code == 204
        return ["00000000-0000-4000-8000-000000000404", existing, erased]

    @staticmethod
    def _same_answer(responses: list[httpx.Response]) -> dict[str, Any]:
        bodies = [problem(r, responses[0].status_code) for r in responses]
        assert all(body == bodies[0] for body in bodies), [r.text for r in responses]
        return bodies[0]

    async def test_reads_verify_and_history_are_404_alike(self, records_env: RecordsEnv) -> None:
        stranger = as_("portal", "consumer")
        answers: dict[str, list[httpx.Response]] = {"read": [], "verify": [], "history": []}
        for citizen_id in await self._three_citizens(records_env):
            url = f"/v1/citizens/{citizen_id}"
            answers["read"].append(
                await records_env.client.get(url, params={"purpose": "benefit-eligibility"}, headers=stranger)
            )
            answers["verify"].append(
                await records_env.client.post(
                    f"{url}/verify",
                    json={
                        "purpose": "benefit-eligibility",
                        "claims": {"date_of_birth": {"lte": "2000-01-01"}},
                    },
                    headers=stranger,
                )
            )
            answers["history"].append(
                await records_env.client.get(
                    f"{url}/fields/address/history",
                    params={"purpose": "fraud-investigation"},
                    headers=stranger,
                )
            )
        for responses in answers.values():
            assert self._same_answer(responses)["status"] == 404

    @pytest.mark.parametrize(
        "purpose",
        [pytest.param(None, id="as-an-owner"), pytest.param("tax-administration", id="as-a-delegate")],
    )
    async def test_a_write_without_rights_is_404_alike(
        self, records_env: RecordsEnv, purpose: str | None
    ) -> None:
        """Revenue's writer may write no register field, as owner or delegate: it is told
        nothing of whether the citizen exists or was erased, and nothing is written."""
        body: dict[str, Any] = {"fields": {"address": "Elsewhere"}, "reason": "moved"}
        if purpose:
            body["purpose"] = purpose
        citizens = await self._three_citizens(records_env)
        responses = [
            await records_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields", json=body, headers=as_("revenue", "writer")
            )
            for citizen_id in citizens
        ]
        assert self._same_answer(responses)["status"] == 404
        read = await records_env.client.get(
            f"/v1/citizens/{citizens[1]}",
            params={"fields": "address", "purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        assert read.json()["fields"]["address"]["value"] == "Here"
        # Each attempt is still audited as refused, the existing citizen's too; a made-up id
        # names no citizen and has no entry (as a read's).
        refused = [e for e in await audit_entries(records_env, citizens[1]) if e["action"] == "write"]
        assert [(e["status"], e["decision"], e["fields_released"]) for e in refused] == [(404, "deny", [])]
        assert await audit_entries(records_env, citizens[0]) == []

    async def test_an_erasure_without_rights_is_403_alike(self, records_env: RecordsEnv) -> None:
        """Welfare's registrar does not own national_id and holds no erase agreement: one 403
        for an unknown, an existing and an erased citizen. The refusals of the existing and
        the erased citizen are audited; the made-up id names no citizen and has no entry."""
        citizens = await self._three_citizens(records_env)
        responses = [
            await records_env.client.delete(
                f"/v1/citizens/{citizen_id}", params=ERASURE, headers=as_("welfare", "registrar")
            )
            for citizen_id in citizens
        ]
        assert self._same_answer(responses)["status"] == 403
        made_up, existing, erased = citizens
        assert await audit_entries(records_env, made_up) == []
        for citizen_id, status in ((existing, "active"), (erased, "erased")):
            refused = [
                (e["department"], e["status"], e["decision"], e["citizen_status"])
                for e in await audit_entries(records_env, citizen_id)
                if e["action"] == "erase" and e["decision"] == "deny"
            ]
            assert refused == [("welfare", 403, "deny", status)]

    async def test_a_party_to_a_write_agreement_still_learns_why(self, records_env: RecordsEnv) -> None:
        """DVLA may write the address for address-update: without naming that purpose it is
        told 403 and why for an existing citizen, and 404 and 410 as an owner would be."""
        body = {"fields": {"address": "There"}, "reason": "citizen told DVLA"}
        statuses = [
            (await records_env.client.patch(f"/v1/citizens/{c}/fields", json=body, headers=DVLA)).status_code
            for c in await self._three_citizens(records_env)
        ]
        assert statuses == [404, 403, 410]
