"""Finding 9: batch-get told real ids from made-up ones through its withheld reasons,
while the single read answers 404 for both. A citizen the caller may not learn exists
now gets exactly the item a made-up id gets."""

from __future__ import annotations

from typing import Any

from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import audit_entries

MADE_UP = "00000000-0000-4000-8000-000000000000"


def _without_id(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "id"}


async def _batch(
    env: RecordsEnv, ids: list[str], purpose: str, caller: dict[str, str]
) -> list[dict[str, Any]]:
    response = await env.client.post(
        "/v1/citizens/batch-get",
        json={"ids": ids, "fields": ["given_name", "address"], "purpose": purpose},
        headers=caller,
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


class TestBatchGetDoesNotDiscloseExistence:
    async def test_a_caller_without_agreements_sees_real_and_made_up_ids_alike(
        self, security_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await security_env.register(given_name="Hidden", address="1 Secret Street")
        portal = as_("portal", "consumer")
        single = await security_env.client.get(
            f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=portal
        )
        assert single.status_code == 404

        real, made_up = await _batch(security_env, [citizen_id, MADE_UP], "benefit-eligibility", portal)

        assert real["id"] == citizen_id
        assert _without_id(real) == _without_id(made_up)

    async def test_the_hidden_attempt_is_still_audited(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(given_name="Hidden")
        await _batch(security_env, [citizen_id], "benefit-eligibility", as_("portal", "consumer"))
        entries = await audit_entries(security_env, citizen_id=citizen_id, action="batch-get")
        assert [(e["department"], e["status"], e["fields_released"]) for e in entries] == [
            ("portal", 404, [])
        ]

    async def test_a_caller_that_may_know_still_gets_its_reasons(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(given_name="Known")
        welfare = as_("welfare", "consumer")
        (real,) = await _batch(security_env, [citizen_id], "benefit-eligibility", welfare)
        assert real["fields"]["given_name"]["value"] == "Known"
