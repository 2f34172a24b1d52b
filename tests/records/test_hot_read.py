"""The hot routes (``service.hotpath``) answer exactly as their FastAPI declarations do.

Each request is sent twice to the same app: once served by the hot route, once with the
hot routes switched off so that the declared FastAPI route serves it. Status, headers
(but the request id and date) and body must be equal; the hot route must have served
the first unless its parameters failed the declared constraints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from service.hotpath import HotHandler, HotRoutes
from tests.records.conftest import RecordsEnv, as_

WELFARE = as_("welfare", "consumer")
REVENUE = as_("revenue", "consumer")
AUDITOR = as_("audit-office", "auditor")
READ = {"fields": "given_name,address,national_id", "purpose": "benefit-eligibility"}


def _hot_routes(app: FastAPI) -> HotRoutes:
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, HotRoutes):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, HotRoutes), "the app has no hot routes"
    return layer


class Served:
    """Counts the requests the hot handlers served (returned a response for)."""

    def __init__(self, hot: HotRoutes) -> None:
        self.count = 0
        self.original = hot.routes
        hot.routes = tuple(replace(route, handler=self.counting(route.handler)) for route in hot.routes)

    def counting(self, handler: HotHandler) -> HotHandler:
        async def counted(request: Request) -> Response | None:
            response = await handler(request)
            self.count += response is not None
            return response

        return counted


def _comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in {"x-request-id", "date"}]
    body = response.json() if response.content else None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        body = {**body, "detail": body["detail"].split("Quote request id")[0]}
    return response.status_code, headers, body


async def _both(
    env: RecordsEnv, url: str, params: dict[str, str], headers: dict[str, str]
) -> tuple[Any, Any, int]:
    """(hot, declared, how many the hot handlers served) for one request sent twice."""
    await env.client.get("/healthz")  # builds the middleware stack
    hot = _hot_routes(env.app)
    served = Served(hot)
    try:
        first = await env.client.get(url, params=params, headers=headers)
        hot.routes = ()
        second = await env.client.get(url, params=params, headers=headers)
    finally:
        hot.routes = served.original
    return _comparable(first), _comparable(second), served.count


class TestHotReadMatchesDeclaredRoute:
    async def test_read_released_with_etag(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(given_name="Cy", address="1 High St")
        hot, declared, served = await _both(records_env, f"/v1/citizens/{citizen_id}", READ, WELFARE)
        assert served == 1
        assert hot == declared
        assert hot[0] == 200
        assert ("etag", '"1"') in hot[1]

    async def test_case_reference_is_audited_alike(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(given_name="Cy")
        headers = {**WELFARE, "X-Case-Ref": "CASE-42"}
        hot, declared, served = await _both(records_env, f"/v1/citizens/{citizen_id}", READ, headers)
        assert (served, hot) == (1, declared)
        response = await records_env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen_id}, headers=AUDITOR
        )
        reads = [item["entry"] for item in response.json()["items"] if item["entry"]["action"] == "read"]
        assert [entry["case_ref"] for entry in reads] == ["CASE-42", "CASE-42"]

    @pytest.mark.parametrize(
        ("params", "headers", "status"),
        [
            pytest.param(READ, {}, 401, id="no-client"),
            pytest.param(READ, AUDITOR, 403, id="missing-scope"),
            pytest.param(READ, REVENUE, 403, id="nothing-allowed"),
            pytest.param(READ, {**WELFARE, "X-Case-Ref": "bad\tref"}, 422, id="bad-case-ref"),
            pytest.param(
                {"fields": "no_such_field", "purpose": "benefit-eligibility"},
                WELFARE,
                422,
                id="unknown-field",
            ),
            pytest.param(
                {"fields": "given_name", "purpose": "no-such-purpose"}, WELFARE, 422, id="unknown-purpose"
            ),
        ],
    )
    async def test_refusals(
        self, records_env: RecordsEnv, params: dict[str, str], headers: dict[str, str], status: int
    ) -> None:
        citizen_id, _ = await records_env.register(given_name="Cy", address="1 High St")
        hot, declared, served = await _both(records_env, f"/v1/citizens/{citizen_id}", params, headers)
        assert served == 0  # refused by raising, in the hot handler
        assert hot == declared
        assert hot[0] == status

    async def test_unknown_citizen_is_404(self, records_env: RecordsEnv) -> None:
        hot, declared, _served = await _both(records_env, "/v1/citizens/no-such-citizen", READ, WELFARE)
        assert hot == declared
        assert hot[0] == 404

    @pytest.mark.parametrize(
        ("citizen_id", "params"),
        [
            pytest.param("x" * 65, READ, id="long-id"),
            pytest.param("some-id", {"fields": "given_name"}, id="no-purpose"),
            pytest.param("some-id", {"purpose": ""}, id="empty-purpose"),
            pytest.param("some-id", {"purpose": "p" * 64}, id="long-purpose"),
            pytest.param(
                "some-id", {"purpose": "benefit-eligibility", "fields": "f" * 4001}, id="long-fields"
            ),
        ],
    )
    async def test_invalid_parameters_go_to_the_declared_route(
        self, records_env: RecordsEnv, citizen_id: str, params: dict[str, str]
    ) -> None:
        for headers in (WELFARE, {}):
            hot, declared, served = await _both(records_env, f"/v1/citizens/{citizen_id}", params, headers)
            assert served == 0
            assert hot == declared
            # FastAPI's order: the caller first (401), then the parameters (422).
            assert hot[0] == (422 if headers else 401)


class TestHotRoutesOnACommittedStore:
    """As a server runs them: the app's audit writer and raw-driver reads."""

    async def test_read_matches_declared_route(self, committed_records_env: RecordsEnv) -> None:
        env = committed_records_env
        citizen_id, _ = await env.register(given_name="Cy", address="1 High St")
        hot, declared, served = await _both(env, f"/v1/citizens/{citizen_id}", READ, WELFARE)
        assert (served, hot[0]) == (1, 200)
        assert hot == declared

    async def test_catalog_matches_declared_route(self, committed_records_env: RecordsEnv) -> None:
        hot, declared, served = await _both(committed_records_env, "/v1/catalog", {}, WELFARE)
        assert (served, hot[0]) == (1, 200)
        assert hot == declared

    async def test_catalog_needs_a_client(self, committed_records_env: RecordsEnv) -> None:
        hot, declared, _served = await _both(committed_records_env, "/v1/catalog", {}, {})
        assert hot == declared
        assert hot[0] == 401
