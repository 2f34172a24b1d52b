"""Three rules of the access path held where they were missed: the verify limit counts a
field the citizen objected to reading; every refusal under a case (by a forbid, or of a
field no delayed-disclosure agreement covers) is held from the citizen like an access under
it; and batch-get decrypts for each citizen only the fields that citizen's decisions allow."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.records.service import RecordsService
from tests.records.conftest import RecordsEnv, as_

REVENUE = as_("revenue", "consumer")
PORTAL = as_("portal", "citizen-portal")
OWNER = as_("register", "data-owner")

VERIFY_OPEN: dict[str, Any] = {
    "id": "revenue-verifies-dob",
    "consumer": "revenue",
    "fields": ["date_of_birth"],
    "actions": ["verify"],
    "purposes": ["tax-administration"],
    "legal_basis": "Test Act s.1",
}
READ_OBJECTABLE: dict[str, Any] = {
    "id": "revenue-reads-dob-unless-objected",
    "consumer": "revenue",
    "fields": ["date_of_birth"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Test Act s.2",
    "basis": "objectable",
}
DELAYED: dict[str, Any] = {
    "id": "fraud-names-for-revenue",
    "consumer": "revenue",
    "fields": ["given_name"],
    "actions": ["read"],
    "purposes": ["fraud-investigation"],
    "legal_basis": "Test Act s.20",
    "disclosure": "after-case-closed",
    "max_delay": "P30D",
}
FORBID: dict[str, Any] = {
    "id": "no-names-of-the-dead-for-revenue",
    "consumer": "revenue",
    "fields": ["given_name"],
    "actions": ["read"],
    "effect": "forbid",
    "when": 'citizen.status == "deceased"',
}
# Open claims a day per (consumer, citizen, field): the setting's default.
LIMIT = 3


async def _agree(env: RecordsEnv, *agreements: dict[str, Any]) -> None:
    for agreement in agreements:
        made = await env.client.post("/v1/policies", json={**agreement, "reason": "test"}, headers=OWNER)
        assert made.status_code == 201, made.text


async def _claims(env: RecordsEnv, citizen_id: str, count: int) -> list[int]:
    statuses = []
    for day in range(1, count + 1):
        answered = await env.client.post(
            f"/v1/citizens/{citizen_id}/verify",
            json={
                "purpose": "tax-administration",
                "claims": {"date_of_birth": {"lte": f"1980-01-{day:02d}"}},
            },
            headers=REVENUE,
        )
        statuses.append(answered.status_code)
    return statuses


class TestVerifyLimitAfterAnObjection:
    async def test_a_field_the_citizen_objected_to_reading_counts_against_the_limit(
        self, records_env: RecordsEnv
    ) -> None:
        env = records_env
        await _agree(env, VERIFY_OPEN, READ_OBJECTABLE)
        citizen_id, _ = await env.register(date_of_birth="1980-06-15")
        # Before the objection revenue may read the date of birth: verify has nothing to
        # protect, and its claims are not counted.
        assert await _claims(env, citizen_id, LIMIT + 1) == [200] * (LIMIT + 1)
        other, _ = await env.register(date_of_birth="1980-06-15")
        objected = await env.client.post(
            f"/v1/citizens/{other}/objections/{READ_OBJECTABLE['id']}", headers=PORTAL
        )
        assert objected.status_code == 201, objected.text
        read = await env.client.get(
            f"/v1/citizens/{other}",
            params={"fields": "date_of_birth", "purpose": "tax-administration"},
            headers=REVENUE,
        )
        assert read.status_code == 403, read.text
        # After it the field is not readable, so a search by claims is limited.
        assert await _claims(env, other, LIMIT + 1) == [200] * LIMIT + [429]


class TestRefusalsUnderACase:
    async def _access_log(self, env: RecordsEnv, citizen_id: str) -> list[dict[str, Any]]:
        page = await env.client.get(f"/v1/citizens/{citizen_id}/access-log", headers=PORTAL)
        assert page.status_code == 200, page.text
        return [item for item in page.json()["items"] if item.get("department") == "revenue"]

    async def test_a_refusal_by_a_forbid_under_a_case_is_held_from_the_citizen(
        self, records_env: RecordsEnv, session: AsyncSession
    ) -> None:
        env = records_env
        await _agree(env, DELAYED, FORBID)
        citizen_id, _ = await env.register(given_name="Gone", date_of_death="2025-01-01")
        refused = await env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "given_name", "purpose": "fraud-investigation"},
            headers={**REVENUE, "X-Case-Ref": "FRAUD-9"},
        )
        assert refused.status_code in (403, 404), refused.text
        assert await self._access_log(env, citizen_id) == []
        # The audit still says which agreement forbade it.
        rows = await session.execute(
            select(AuditEntryRow.canonical).where(
                AuditEntryRow.citizen_id == citizen_id, AuditEntryRow.action == "read"
            )
        )
        [entry] = [json.loads(canonical) for (canonical,) in rows]
        assert entry["decision"] == "deny"
        [reason] = entry["reasons"]
        assert reason["agreement"] == DELAYED["id"]
        assert FORBID["id"] in reason["reason"]

    @pytest.mark.parametrize("action", ["read", "verify"])
    async def test_a_refusal_of_a_field_no_delayed_agreement_covers_is_held_too(
        self, records_env: RecordsEnv, session: AsyncSession, action: str
    ) -> None:
        # Revenue's delayed agreement covers given_name; it asks under the case for the date
        # of birth, which nothing lets it read: the attempt would show the investigation.
        env = records_env
        await _agree(env, DELAYED)
        citizen_id, _ = await env.register(given_name="Ada", date_of_birth="1980-06-15")
        headers = {**REVENUE, "X-Case-Ref": "FRAUD-77"}
        if action == "read":
            refused = await env.client.get(
                f"/v1/citizens/{citizen_id}",
                params={"fields": "date_of_birth", "purpose": "fraud-investigation"},
                headers=headers,
            )
        else:
            refused = await env.client.post(
                f"/v1/citizens/{citizen_id}/verify",
                json={"purpose": "fraud-investigation", "claims": {"date_of_birth": {"lte": "1990-01-01"}}},
                headers=headers,
            )
        assert refused.status_code in (403, 404), refused.text
        assert await self._access_log(env, citizen_id) == []
        rows = await session.execute(
            select(AuditEntryRow.canonical).where(
                AuditEntryRow.citizen_id == citizen_id, AuditEntryRow.action == action
            )
        )
        [entry] = [json.loads(canonical) for (canonical,) in rows]
        assert [(r["agreement"], r["effect"]) for r in entry["reasons"]] == [(DELAYED["id"], "deny")]
        assert entry["reasons"][0]["reason"].startswith("no agreement lets revenue")

    @pytest.mark.parametrize(
        ("field", "purpose", "cited"),
        [
            # No agreement of dvla's covers it for revenue.
            ("points", "fraud-investigation", None),
            # dvla's agreement covers it for another purpose.
            ("licence_status", "fraud-investigation", None),
            # dvla's forbid refuses it: the forbid is dvla's own, and is cited.
            ("licence_number", "tax-administration", "revenue-never-licence-number"),
        ],
    )
    async def test_a_refusal_of_another_owners_field_is_held_without_citing_its_agreement(
        self, records_env: RecordsEnv, session: AsyncSession, field: str, purpose: str, cited: str | None
    ) -> None:
        # Revenue's only delayed agreement is the register's; under the case it asks for a
        # field of dvla's. The refusal must not show the investigation early, nor show dvla
        # (in its own audit view) an agreement of the register's.
        env = records_env
        await _agree(env, DELAYED)
        citizen_id, _ = await env.register(given_name="Ada")
        refused = await env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": field, "purpose": purpose},
            headers={**REVENUE, "X-Case-Ref": "FRAUD-78"},
        )
        assert refused.status_code in (403, 404), refused.text
        assert await self._access_log(env, citizen_id) == []
        rows = await session.execute(
            select(AuditEntryRow.canonical).where(
                AuditEntryRow.citizen_id == citizen_id, AuditEntryRow.action == "read"
            )
        )
        [entry] = [json.loads(canonical) for (canonical,) in rows]
        [reason] = entry["reasons"]
        assert (reason["field"], reason["effect"], reason["agreement"]) == (field, "deny", cited)
        # Held as long as the register's agreement would hold it (its max_delay), by the
        # reason itself.
        assert reason["held_for"] == "P30D"
        assert entry["legal_basis"] == []
        assert DELAYED["id"] not in json.dumps(entry)
        assert DELAYED["legal_basis"] not in json.dumps(entry)
        seen = await env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen_id}, headers=as_("dvla", "data-owner")
        )
        assert seen.status_code == 200, seen.text
        [item] = [i for i in seen.json()["items"] if i["entry"]["action"] == "read"]
        assert item["entry"]["reasons"] == [reason]
        assert DELAYED["id"] not in seen.text
        # Shown once that delay has passed, as an access under the agreement would be.
        accessed = datetime.fromisoformat(entry["time"])
        env.app.state.clock = lambda: accessed + timedelta(days=30, microseconds=-1)
        assert await self._access_log(env, citizen_id) == []
        env.app.state.clock = lambda: accessed + timedelta(days=30)
        [shown] = await self._access_log(env, citizen_id)
        assert (shown["decision"], shown["disclosed_by"]) == ("deny", "max-delay")

    async def test_the_fields_owner_cites_its_own_delayed_agreement_first(
        self, records_env: RecordsEnv, session: AsyncSession
    ) -> None:
        # dvla gave revenue a delayed agreement too (for another purpose): dvla's field
        # cites dvla's, the register's the register's, each held by it.
        env = records_env
        await _agree(env, DELAYED)
        dvla_delayed = {
            **DELAYED,
            "id": "dvla-licence-checks-for-revenue",
            "fields": ["licence_status"],
            "purposes": ["tax-administration"],
            "max_delay": "P60D",
        }
        made = await env.client.post(
            "/v1/policies", json={**dvla_delayed, "reason": "test"}, headers=as_("dvla", "data-owner")
        )
        assert made.status_code == 201, made.text
        citizen_id, _ = await env.register(given_name="Ada", date_of_birth="1980-06-15")
        refused = await env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "points,date_of_birth", "purpose": "fraud-investigation"},
            headers={**REVENUE, "X-Case-Ref": "FRAUD-79"},
        )
        assert refused.status_code in (403, 404), refused.text
        assert await self._access_log(env, citizen_id) == []
        rows = await session.execute(
            select(AuditEntryRow.canonical).where(
                AuditEntryRow.citizen_id == citizen_id, AuditEntryRow.action == "read"
            )
        )
        [entry] = [json.loads(canonical) for (canonical,) in rows]
        assert {r["field"]: r["agreement"] for r in entry["reasons"]} == {
            "points": dvla_delayed["id"],
            "date_of_birth": DELAYED["id"],
        }
        assert [r["held_for"] for r in entry["reasons"]] == [None, None]

    async def test_a_department_with_no_delayed_agreement_is_refused_in_the_open(
        self, records_env: RecordsEnv
    ) -> None:
        # Nothing of revenue's is under delayed disclosure: there is no case to keep hidden.
        env = records_env
        citizen_id, _ = await env.register(date_of_birth="1980-06-15")
        refused = await env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "date_of_birth", "purpose": "fraud-investigation"},
            headers={**REVENUE, "X-Case-Ref": "FRAUD-77"},
        )
        assert refused.status_code in (403, 404), refused.text
        [shown] = await self._access_log(env, citizen_id)
        assert shown["decision"] == "deny"

    async def test_without_a_case_the_forbid_is_cited_and_the_refusal_shown(
        self, records_env: RecordsEnv
    ) -> None:
        env = records_env
        await _agree(env, DELAYED, FORBID)
        citizen_id, _ = await env.register(given_name="Gone", date_of_death="2025-01-01")
        refused = await env.client.get(
            f"/v1/citizens/{citizen_id}",
            params={"fields": "given_name", "purpose": "tax-administration"},
            headers=REVENUE,
        )
        assert refused.status_code in (403, 404), refused.text
        [shown] = await self._access_log(env, citizen_id)
        assert shown["decision"] == "deny"


class TestBatchGetDecryptsOnlyWhatEachMayHave:
    async def test_a_field_allowed_for_one_citizen_is_not_decrypted_for_another(
        self, records_env: RecordsEnv, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = records_env
        living, _ = await env.register(address="1 Living Street")
        # Revenue's address agreement holds while the citizen is active.
        deceased, _ = await env.register(address="2 Quiet Close", date_of_death="2025-01-01")
        decrypted: list[tuple[str, str]] = []
        original = RecordsService.decrypt

        async def watched(self: RecordsService, catalog: Any, rows: Any, conn: Any = None) -> Any:
            decrypted.extend((row.citizen_id, row.field) for row in rows)
            return await original(self, catalog, rows, conn)

        monkeypatch.setattr(RecordsService, "decrypt", watched)
        answered = await env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [living, deceased], "fields": ["address"], "purpose": "tax-administration"},
            headers=REVENUE,
        )
        assert answered.status_code == 200, answered.text
        items = {item["id"]: item for item in answered.json()["items"]}
        assert items[living]["fields"]["address"]["value"] == "1 Living Street"
        assert items[deceased]["fields"] == {}
        assert decrypted == [(living, "address")]
