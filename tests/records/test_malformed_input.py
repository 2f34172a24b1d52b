"""Malformed input to the citizen endpoints is a 422 problem, never a 500.

Lone surrogates (JSON's ``"\\ud800"`` parses to one, but no UTF-8 text holds it) in a field
value, which reached the encryption's UTF-8 encoding; and citizen ids that are not of the
form the service issues (a NUL character reached PostgreSQL as a query argument it
refuses). A surrogate in a top-level string (the national id, a batch's ids) pydantic
refuses itself: those tests guard that it stays so.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.records.conftest import RecordsEnv, as_
from tests.records.test_citizens_api import ERASURE, problem

REGISTRAR = as_("register", "registrar")
REGISTER_WRITER = as_("register", "writer")
WELFARE = as_("welfare", "consumer")
REVENUE = as_("revenue", "consumer")
# A lone surrogate: json.dumps writes it as the escape ``\\ud800``.
SURROGATE = "\ud800"


async def send_json(
    env: RecordsEnv, method: str, url: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """``body`` as ASCII JSON, escapes and all: httpx would refuse to encode a lone
    surrogate as UTF-8 itself."""
    return await env.client.request(
        method, url, content=json.dumps(body), headers={**headers, "Content-Type": "application/json"}
    )


class TestLoneSurrogates:
    async def test_in_a_registered_value_is_422(self, records_env: RecordsEnv) -> None:
        body = {"national_id": "QQ900001A", "fields": {"given_name": f"Ad{SURROGATE}"}}
        response = await send_json(records_env, "POST", "/v1/citizens", body, REGISTRAR)
        errors = problem(response, 422)["errors"]
        assert [tuple(e["loc"]) for e in errors] == [("body", "fields", "given_name")]

    async def test_in_a_registered_national_id_is_422(self, records_env: RecordsEnv) -> None:
        body = {"national_id": f"QQ9{SURROGATE}", "fields": {}}
        response = await send_json(records_env, "POST", "/v1/citizens", body, REGISTRAR)
        errors = problem(response, 422)["errors"]
        assert [tuple(e["loc"]) for e in errors] == [("body", "national_id")]

    async def test_in_a_written_value_is_422(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(address="Old House")
        body = {"fields": {"address": SURROGATE}, "reason": "moved"}
        url = f"/v1/citizens/{citizen_id}/fields"
        response = await send_json(records_env, "PATCH", url, body, REGISTER_WRITER)
        errors = problem(response, 422)["errors"]
        assert [tuple(e["loc"]) for e in errors] == [("body", "fields", "address")]

    async def test_in_a_looked_up_national_id_is_422(self, records_env: RecordsEnv) -> None:
        body = {"national_id": f"QQ{SURROGATE}", "purpose": "benefit-eligibility"}
        response = await send_json(records_env, "POST", "/v1/citizens/lookup", body, WELFARE)
        errors = problem(response, 422)["errors"]
        assert [tuple(e["loc"]) for e in errors] == [("body", "national_id")]

    async def test_in_a_batch_get_id_is_422(self, records_env: RecordsEnv) -> None:
        body = {"ids": [SURROGATE], "purpose": "tax-administration"}
        response = await send_json(records_env, "POST", "/v1/citizens/batch-get", body, REVENUE)
        problem(response, 422)


# Not of the form registration returns; each would otherwise be looked for in the database.
MALFORMED_IDS = [
    pytest.param("%00", id="nul"),
    pytest.param("00000000-0000-4000-8000-0000000%0000", id="nul-inside"),
    pytest.param("no-such-citizen", id="not-a-uuid"),
    pytest.param("ABCDEF00-0000-4000-8000-000000000001", id="upper-case"),
]


CLAIMS = {"date_of_birth": {"lte": "2000-01-01"}}


def _requests(citizen_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    url = f"/v1/citizens/{citizen_id}"
    return [
        ("GET", url, {"params": {"purpose": "benefit-eligibility"}, "headers": WELFARE}),
        (
            "GET",
            f"{url}/fields/address/history",
            {"params": {"purpose": "fraud-investigation"}, "headers": {**WELFARE, "X-Case-Ref": "F-1"}},
        ),
        (
            "POST",
            f"{url}/verify",
            {"json": {"purpose": "benefit-eligibility", "claims": CLAIMS}, "headers": WELFARE},
        ),
        (
            "PATCH",
            f"{url}/fields",
            {"json": {"fields": {"address": "x"}, "reason": "moved"}, "headers": REGISTER_WRITER},
        ),
        ("DELETE", url, {"params": ERASURE, "headers": REGISTRAR}),
        # A department that may not erase: its refusal is audited with the id.
        ("DELETE", url, {"params": ERASURE, "headers": as_("welfare", "registrar")}),
        ("GET", f"{url}/access-log", {"headers": as_("portal", "citizen-portal")}),
    ]


class TestMalformedCitizenIds:
    @pytest.mark.parametrize("citizen_id", MALFORMED_IDS)
    async def test_every_citizen_route_answers_422(self, records_env: RecordsEnv, citizen_id: str) -> None:
        for method, url, options in _requests(citizen_id):
            response = await records_env.client.request(method, url, **options)
            errors = problem(response, 422)["errors"]
            assert [e["loc"] for e in errors] == [["path", "citizen_id"]], (method, url)

    @pytest.mark.parametrize("citizen_id", MALFORMED_IDS)
    async def test_batch_get_answers_422_naming_the_item(
        self, records_env: RecordsEnv, citizen_id: str
    ) -> None:
        known, _ = await records_env.register(address="Known Lane")
        response = await records_env.client.post(
            "/v1/citizens/batch-get",
            json={"ids": [known, unquote(citizen_id)], "purpose": "tax-administration"},
            headers=REVENUE,
        )
        errors = problem(response, 422)["errors"]
        assert [e["loc"] for e in errors] == [["body", "ids", 1]]

    async def test_a_well_formed_unknown_id_is_still_404(self, records_env: RecordsEnv) -> None:
        response = await records_env.client.get(
            "/v1/citizens/00000000-0000-4000-8000-000000000404",
            params={"purpose": "benefit-eligibility"},
            headers=WELFARE,
        )
        problem(response, 404)
