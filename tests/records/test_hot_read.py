"""The hot routes (``service.hotpath``) answer exactly as their FastAPI declarations do.

Each request is sent twice to the same app: once served by the hot route, once with the
hot routes switched off so that the declared FastAPI route serves it. Status, headers
(but the request id and date) and body must be equal; the hot route must have served
the first unless its parameters failed the declared constraints. The hot routes are
served in front of the middleware stack (``HotFront``) unless another layer wraps the
stack; both ways are compared.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import App
from service.auth.dependencies import get_principal
from service.errors import repeated_query_name
from service.hotpath import HotFront, HotHandler, HotRoutes
from service.records.endpoints import _query
from tests.fixtures import statuses
from tests.records.conftest import RecordsEnv, as_

WELFARE = as_("welfare", "consumer")
REVENUE = as_("revenue", "consumer")
AUDITOR = as_("audit-office", "auditor")
READ = {"fields": "given_name,address,national_id", "purpose": "benefit-eligibility"}
# Of a citizen id's form, and registered to no one.
UNKNOWN = "00000000-0000-4000-8000-000000000404"


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


class FrontServed:
    """Counts the requests the front served, and those it sent through the stack."""

    def __init__(self, app: FastAPI) -> None:
        assert isinstance(app, App)
        assert app.front is not None
        self.front: HotFront = app.front
        self.original = self.front.serve
        self.served = self.passed = 0
        self.front.serve = self.counting  # type: ignore[method-assign]

    async def counting(self, app: FastAPI, scope: Scope, receive: Receive, send: Send) -> bool:
        served = await self.original(app, scope, receive, send)
        self.served += served
        self.passed += not served
        return served

    def restore(self) -> None:
        del self.front.serve


class Wrapped:
    """A layer around the whole stack, as tracing's middleware is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _both(
    env: RecordsEnv,
    url: str,
    params: httpx.QueryParams | dict[str, str],
    headers: dict[str, str],
    *,
    front: bool = True,
) -> tuple[Any, Any, int]:
    """(hot, declared, how many the hot handlers served) for one request sent twice; with
    ``front`` off, a layer wraps the stack so the front stands aside."""
    await env.client.get("/healthz")  # builds the middleware stack
    hot = _hot_routes(env.app)
    built = env.app.middleware_stack
    if not front:
        env.app.middleware_stack = Wrapped(built)  # type: ignore[arg-type]
    served = Served(hot)
    fronted = FrontServed(env.app)
    try:
        first = await env.client.get(url, params=params, headers=headers)
        # The front serves what the hot handler answers (or raises), never past another layer.
        assert fronted.served >= (served.count if front else 0)
        assert fronted.served <= front
        hot.routes = ()
        second = await env.client.get(url, params=params, headers=headers)
    finally:
        hot.routes = served.original
        fronted.restore()
        env.app.middleware_stack = built
    return _comparable(first), _comparable(second), served.count


class TestHotReadMatchesDeclaredRoute:
    @pytest.mark.parametrize("front", [True, False], ids=["front", "in-stack"])
    async def test_read_released_with_etag(self, records_env: RecordsEnv, front: bool) -> None:
        citizen_id, _ = await records_env.register(given_name="Cy", address="1 High St")
        hot, declared, served = await _both(
            records_env, f"/v1/citizens/{citizen_id}", READ, WELFARE, front=front
        )
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

    async def test_head_is_the_read_without_its_body_and_is_audited(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(given_name="Cy", address="1 High St")
        url = f"/v1/citizens/{citizen_id}"
        got = await records_env.client.get(url, params=READ, headers=WELFARE)
        head = await records_env.client.head(url, params=READ, headers=WELFARE)
        assert (got.status_code, head.status_code, head.content) == (200, 200, b"")
        assert head.headers["etag"] == got.headers["etag"]
        assert head.headers["content-length"] == got.headers["content-length"]
        refused = await records_env.client.head(url, params=READ, headers=REVENUE)
        assert (refused.status_code, refused.content) == (403, b"")
        response = await records_env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen_id}, headers=AUDITOR
        )
        reads = [item["entry"] for item in response.json()["items"] if item["entry"]["action"] == "read"]
        assert [(entry["department"], entry["decision"]) for entry in reads] == [
            ("welfare", "partial"),
            ("welfare", "partial"),
            ("revenue", "deny"),
        ]

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
        for front in (True, False):
            hot, declared, served = await _both(
                records_env, f"/v1/citizens/{citizen_id}", params, headers, front=front
            )
            assert served == 0  # refused by raising, in the hot handler
            assert hot == declared
            assert hot[0] == status

    async def test_a_repeated_parameter_is_refused_as_the_declared_route_refuses_it(
        self, records_env: RecordsEnv
    ) -> None:
        """Two purposes: neither is taken (the audit would name one the caller may not have
        meant); the hot route declines and the request is refused with a 422 naming it."""
        citizen_id, _ = await records_env.register(given_name="Cy", address="1 High St")
        params = httpx.QueryParams(
            [("purpose", "no-such-purpose"), ("fields", "address"), ("purpose", "benefit-eligibility")]
        )
        hot, declared, served = await _both(records_env, f"/v1/citizens/{citizen_id}", params, WELFARE)
        assert (served, hot[0]) == (0, 422)
        assert hot == declared
        assert hot[2]["errors"] == [{"loc": ["query", "purpose"], "msg": "given more than once"}]

    async def test_unknown_citizen_is_404(self, records_env: RecordsEnv) -> None:
        hot, declared, _served = await _both(records_env, f"/v1/citizens/{UNKNOWN}", READ, WELFARE)
        assert hot == declared
        assert hot[0] == 404

    async def test_erased_citizen_is_410_and_audited_alike(self, records_env: RecordsEnv) -> None:
        """The hot route's 410 goes through the records read as the declared route's does:
        each is one refused entry with status 410 before the answer leaves."""
        citizen_id, _ = await records_env.register(given_name="Cy")
        await records_env.erase(citizen_id)
        hot, declared, served = await _both(records_env, f"/v1/citizens/{citizen_id}", READ, WELFARE)
        assert served == 0  # refused by raising, in the hot handler
        assert hot == declared
        assert hot[0] == 410
        response = await records_env.client.get(
            "/v1/audit/entries", params={"citizen_id": citizen_id, "action": "read"}, headers=AUDITOR
        )
        reads = [item["entry"] for item in response.json()["items"]]
        assert [(e["department"], e["status"], e["decision"], e["fields_released"]) for e in reads] == [
            ("welfare", 410, "deny", []),
            ("welfare", 410, "deny", []),
        ]

    async def test_erased_citizen_is_410_to_a_caller_its_agreement_permits(
        self, records_env: RecordsEnv
    ) -> None:
        """Revenue may not look citizens up, but its agreement permits licence_status: it is a
        party to that agreement, so both routes tell it 410, not the 404 of a made-up id."""
        citizen_id, _ = await records_env.register(given_name="Cy")
        await records_env.erase(citizen_id)
        params = {"fields": "licence_status", "purpose": "tax-administration"}
        for front in (True, False):
            hot, declared, served = await _both(
                records_env, f"/v1/citizens/{citizen_id}", params, REVENUE, front=front
            )
            assert served == 0  # refused by raising, in the hot handler
            assert hot == declared
            assert hot[0] == 410

    @pytest.mark.parametrize(
        ("citizen_id", "params"),
        [
            pytest.param("x" * 65, READ, id="long-id"),
            # Not a citizen id's form: a NUL answered 500 on PostgreSQL, which refuses it.
            pytest.param("%00" + UNKNOWN[1:], READ, id="nul-in-id"),
            pytest.param("no-such-citizen", READ, id="not-a-uuid"),
            pytest.param("ABCDEF00-0000-4000-8000-000000000404", READ, id="upper-case-id"),
            pytest.param(UNKNOWN, {"fields": "given_name"}, id="no-purpose"),
            pytest.param(UNKNOWN, {"purpose": ""}, id="empty-purpose"),
            pytest.param(UNKNOWN, {"purpose": "p" * 64}, id="long-purpose"),
            pytest.param(UNKNOWN, {"purpose": "benefit-eligibility", "fields": "f" * 4001}, id="long-fields"),
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

    async def test_unexpected_error_is_answered_alike(self, records_env: RecordsEnv) -> None:
        """An error no handler of the app answers but ``Exception``'s: the same 500, and
        raised on for the server to log, from the front as from the stack."""
        citizen_id, _ = await records_env.register(given_name="Cy")

        async def broken() -> None:
            raise RuntimeError("broken on purpose")

        app = records_env.app
        # This app is broken on purpose: its 500s are left out of tests/test_openapi.py's
        # comparison of answered and declared statuses.
        statuses.forget(app.state.metrics)
        app.dependency_overrides[get_principal] = broken
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        answers = []
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for front in (True, False):
                await client.get("/healthz")
                built = app.middleware_stack
                if not front:
                    app.middleware_stack = Wrapped(built)  # type: ignore[arg-type]
                try:
                    response = await client.get(f"/v1/citizens/{citizen_id}", params=READ)
                finally:
                    app.middleware_stack = built
                assert response.headers["x-request-id"] in response.json()["detail"]
                answers.append(_comparable(response))
        assert answers[0] == answers[1]
        assert answers[0][0] == 500
        with pytest.raises(RuntimeError, match="on purpose"):
            await records_env.client.get(f"/v1/citizens/{citizen_id}", params=READ)

    async def test_front_keeps_the_request_id_count_and_body_limit(self, records_env: RecordsEnv) -> None:
        citizen_id, _ = await records_env.register(given_name="Cy")
        url = f"/v1/citizens/{citizen_id}"
        await records_env.client.get("/healthz")
        fronted = FrontServed(records_env.app)
        try:
            echoed = await records_env.client.get(
                url, params=READ, headers={**WELFARE, "X-Request-ID": "caller-chosen-id-1"}
            )
            # A GET with a body goes through the stack, whose body limit answers it.
            too_large = await records_env.client.request(
                "GET",
                url,
                params=READ,
                headers=WELFARE,
                content=b"x" * (records_env.settings.max_body_bytes + 1),
            )
        finally:
            fronted.restore()
        assert (fronted.served, fronted.passed) == (1, 1)
        assert echoed.status_code == 200
        assert echoed.headers.get_list("x-request-id") == ["caller-chosen-id-1"]
        assert too_large.status_code == 413
        metrics = records_env.app.state.metrics
        counted = metrics.requests.labels("/v1/citizens/{citizen_id}", "GET", "200")._value.get()
        assert counted >= 1

    async def test_telemetry_configured_later_sends_requests_through_the_stack(
        self, records_env: RecordsEnv
    ) -> None:
        """The front decides whether FastAPI's telemetry is on when the stack is built and
        at most ``recheck_seconds`` later: from then on a provider configured while serving
        sees every request, which goes through the stack (and still to the hot route)."""
        citizen_id, _ = await records_env.register(given_name="Cy")
        url = f"/v1/citizens/{citizen_id}"
        app = records_env.app
        fronted = FrontServed(app)
        clock, now = fronted.front.clock, [0.0]
        fronted.front.clock = lambda: now[0]
        await records_env.client.get("/healthz")
        telemetry = app._native_telemetry.config
        try:
            assert (await records_env.client.get(url, params=READ, headers=WELFARE)).status_code == 200
            assert (fronted.served, fronted.passed) == (1, 1)  # /healthz, then the read
            telemetry["tracer_provider"] = TracerProvider()
            now[0] += fronted.front.recheck_seconds
            for _ in range(2):
                read = await records_env.client.get(url, params=READ, headers=WELFARE)
                assert read.status_code == 200
            assert (fronted.served, fronted.passed) == (1, 3)
            # Off again: the front serves from the next decision on.
            telemetry["tracer_provider"] = None
            now[0] += fronted.front.recheck_seconds
            assert (await records_env.client.get(url, params=READ, headers=WELFARE)).status_code == 200
            assert (fronted.served, fronted.passed) == (2, 3)
        finally:
            telemetry["tracer_provider"] = None
            fronted.restore()
            fronted.front.clock = clock


class TestQueryString:
    @given(st.lists(st.sampled_from(["purpose", "fields", "", "=", "&", "a", "b=", "%41", "+", "é", ";"])))
    def test_read_as_starlette_reads_it(self, parts: list[str]) -> None:
        query = "".join(parts).encode("utf-8")
        parsed = QueryParams(query.decode("latin-1"))
        if len(set(parsed.keys())) < len(parsed.multi_items()):
            # A name given twice: the hot route declines, and the API refuses it (422).
            assert _query(query) is None
            assert repeated_query_name(query) is not None
        else:
            assert _query(query) == dict(parsed.items())
            assert repeated_query_name(query) is None


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
