"""Hostile JSON: nesting too deep to parse, in a body or inside a forged cursor, answers a
problem, never a 500. A forged usage-report cursor whose JSON nested too deep raised
RecursionError out of the parser: a 500 for any auditor who sent one."""

from __future__ import annotations

import pytest

from service.cursors import encode_text
from tests.records.conftest import RecordsEnv, as_
from tests.security.conftest import AUDITOR, problem

REGISTRAR = as_("register", "registrar")
DEEP = 100_000  # far past the parser's recursion limit
# As deep in a cursor, which travels in the URL: past the limit still, within a URL's length.
DEEP_CURSOR = 5_000


class TestForgedCursors:
    @pytest.mark.parametrize("depth", [2, DEEP_CURSOR])
    async def test_a_usage_cursor_nesting_its_json_is_refused(
        self, security_env: RecordsEnv, depth: int
    ) -> None:
        # The usage report's cursors hold "u1:" and a JSON list of four strings.
        forged = encode_text("u1:" + "[" * depth + "]" * depth)
        response = await security_env.client.get(
            "/v1/audit/reports/usage", params={"cursor": forged}, headers=AUDITOR
        )
        body = problem(response, 422)
        assert body["type"].endswith("/invalid-cursor")
        assert body["errors"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]


class TestHostileBodies:
    @pytest.mark.parametrize(
        "body",
        [
            b"[" * DEEP + b"]" * DEEP,
            b'{"national_id": "AB123456C", "fields": {"given_name": ' + b"[" * DEEP + b"]" * DEEP + b"}}",
            b'{"national_id": "AB123456C", "fields": {"given_name": "\xff"}}',
        ],
        ids=["nested", "nested-value", "not-utf-8"],
    )
    async def test_a_body_that_cannot_be_parsed_is_400(self, security_env: RecordsEnv, body: bytes) -> None:
        response = await security_env.client.post(
            "/v1/citizens", content=body, headers={**REGISTRAR, "content-type": "application/json"}
        )
        problem(response, 400)

    async def test_a_key_given_twice_is_422_and_registers_nobody(self, security_env: RecordsEnv) -> None:
        body = b'{"national_id": "AB111111A", "national_id": "AB222222B", "fields": {}}'
        response = await security_env.client.post(
            "/v1/citizens", content=body, headers={**REGISTRAR, "content-type": "application/json"}
        )
        assert problem(response, 422)["errors"] == [
            {"loc": ["body", "national_id"], "msg": "given more than once"}
        ]
        for national_id in ("AB111111A", "AB222222B"):
            found = await security_env.client.post(
                "/v1/citizens/lookup",
                json={"national_id": national_id, "purpose": "benefit-eligibility"},
                headers=as_("welfare", "consumer"),
            )
            problem(found, 404)

    @pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
    async def test_a_number_json_cannot_hold_is_422(self, security_env: RecordsEnv, number: str) -> None:
        citizen_id, _ = await security_env.register()
        response = await security_env.client.patch(
            f"/v1/citizens/{citizen_id}/fields",
            content=f'{{"fields": {{"points": {number}}}, "reason": "odd"}}'.encode(),
            headers={**as_("dvla", "writer"), "content-type": "application/json"},
        )
        problem(response, 422)
