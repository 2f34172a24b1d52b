"""A delayed-disclosure agreement is used only under a case: without ``X-Case-Ref`` a read,
a batch-get and a delegated write are refused alike, with an audited 422 naming the header."""

from __future__ import annotations

from typing import Any

import pytest

from tests.records.conftest import RecordsEnv, as_
from tests.records.test_citizens_api import audit_entries, problem

REVENUE = as_("revenue", "consumer")
# Given names for revenue's fraud investigations, disclosed to the citizen only after the
# case closes.
DELAYED: dict[str, Any] = {
    "id": "fraud-names-for-revenue",
    "consumer": "revenue",
    "fields": ["given_name"],
    "actions": ["read"],
    "purposes": ["fraud-investigation"],
    "legal_basis": "Taxes Management Act 1970, s.20",
    "disclosure": "after-case-closed",
    "max_delay": "P30D",
}
MISSING = [{"loc": ["header", "X-Case-Ref"], "msg": "a case reference is required"}]


@pytest.fixture
async def citizen_id(records_env: RecordsEnv) -> str:
    created = await records_env.client.post(
        "/v1/policies", json=DELAYED, headers=as_("register", "data-owner")
    )
    assert created.status_code == 201, created.text
    registered, _ = await records_env.register(given_name="Cased")
    return registered


class TestBatchGetCaseReference:
    async def test_without_one_batch_get_is_refused_as_a_read_is(
        self, records_env: RecordsEnv, citizen_id: str
    ) -> None:
        query = {"purpose": "fraud-investigation", "fields": "given_name"}
        read = await records_env.client.get(f"/v1/citizens/{citizen_id}", params=query, headers=REVENUE)
        batch = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id], "fields": ["given_name"], "purpose": "fraud-investigation"},
            headers=REVENUE,
        )
        read_problem, batch_problem = problem(read, 422), problem(batch, 422)
        assert batch_problem["type"].endswith("/case-ref-required")
        assert batch_problem["errors"] == MISSING
        assert {k: v for k, v in batch_problem.items() if k != "instance"} == {
            k: v for k, v in read_problem.items() if k != "instance"
        }
        assert "Cased" not in batch.text
        refusals = [
            (e["action"], e["status"], e["fields_released"])
            for e in await audit_entries(records_env, citizen_id)
            if e["action"] in ("read", "batch-get")
        ]
        assert refusals == [("read", 422, []), ("batch-get", 422, [])]

    async def test_with_one_batch_get_releases(self, records_env: RecordsEnv, citizen_id: str) -> None:
        batch = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [citizen_id], "fields": ["given_name"], "purpose": "fraud-investigation"},
            headers={**REVENUE, "X-Case-Ref": "FRAUD-7"},
        )
        assert batch.status_code == 200, batch.text
        (item,) = batch.json()["items"]
        assert item["fields"]["given_name"]["value"] == "Cased"


# Revenue corrects addresses in its fraud investigations: a delegated write, disclosed to
# the citizen only after the case closes.
DELAYED_WRITE: dict[str, Any] = {
    "id": "fraud-address-corrections-by-revenue",
    "consumer": "revenue",
    "fields": ["address"],
    "actions": ["write"],
    "purposes": ["fraud-investigation"],
    "legal_basis": "Taxes Management Act 1970, s.20",
    "disclosure": "after-case-closed",
    "max_delay": "P30D",
}
REVENUE_WRITER = as_("revenue", "writer")


class TestDelegatedWriteCaseReference:
    async def test_a_delegated_write_without_one_is_refused_as_a_read_is(
        self, records_env: RecordsEnv, citizen_id: str
    ) -> None:
        created = await records_env.client.post(
            "/v1/policies", json=DELAYED_WRITE, headers=as_("register", "data-owner")
        )
        assert created.status_code == 201, created.text
        body = {"fields": {"address": "1 Corrected Row"}, "reason": "fraud", "purpose": "fraud-investigation"}
        path = f"/v1/citizens/{citizen_id}/fields"
        missing = await records_env.client.patch(path, json=body, headers=REVENUE_WRITER)
        missing_problem = problem(missing, 422)
        assert missing_problem["type"].endswith("/case-ref-required")
        assert missing_problem["errors"] == MISSING
        written = await records_env.client.patch(
            path, json=body, headers={**REVENUE_WRITER, "X-Case-Ref": "W-1"}
        )
        assert written.status_code == 200, written.text
        writes = [
            (e["status"], e["case_ref"], {r["agreement"] for r in e["reasons"]})
            for e in await audit_entries(records_env, citizen_id)
            if e["action"] == "write" and e["department"] == "revenue"
        ]
        assert writes == [(422, None, {DELAYED_WRITE["id"]}), (200, "W-1", {DELAYED_WRITE["id"]})]
