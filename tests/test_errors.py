"""Every error is RFC 9457 problem+json, whatever raised it."""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text as sql_text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from service.app import create_app
from service.config import Settings
from service.db import SessionDep
from service.errors import BodyLimitMiddleware, Conflict, FailureLog, Gone, PreconditionFailed, sayable_name
from tests.fixtures.auth import act_as
from tests.fixtures.databases import is_postgres
from tests.fixtures.server import LiveServer, free_port

PROBLEM = "application/problem+json"


class Shape(BaseModel):
    name: str = Field(min_length=1)
    count: int


probe = APIRouter()


@probe.post("/_probe/shape")
async def shape(body: Shape) -> dict[str, Any]:
    return body.model_dump()


@probe.get("/_probe/boom")
async def boom() -> None:
    raise RuntimeError("secret internal detail 0xdeadbeef")


@probe.get("/_probe/conflict")
async def conflict() -> None:
    raise Conflict("A citizen with that national id is already registered.")


@probe.get("/_probe/gone")
async def gone() -> None:
    raise Gone("This record was erased.")


@probe.get("/_probe/teapot")
async def teapot() -> None:
    # What a library may raise with a status the service has no problem type of its own for.
    raise StarletteHTTPException(status_code=418, detail="Short and stout.")


@probe.get("/_probe/stale")
async def stale() -> None:
    raise PreconditionFailed("The record changed since you read it.")


class Text(BaseModel):
    text: str


class Strict(BaseModel):
    """A body that refuses members it does not declare, as every API body does."""

    model_config = ConfigDict(extra="forbid")
    name: str
    nested: Strict | None = None


@probe.post("/_probe/strict")
async def strict(body: Strict) -> dict[str, Any]:
    return body.model_dump()


@probe.post("/_probe/keep")
async def keep(body: Text, session: SessionDep) -> dict[str, Any]:
    """Hands the text to the database as a query argument, as any write does."""
    kept = (await session.execute(sql_text("SELECT CAST(:v AS TEXT)"), {"v": body.text})).scalar_one()
    return {"length": len(kept)}


@pytest.fixture
async def probe_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    app.include_router(probe)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


# A lookup body, for the encodings a JSON body may not be sent in.
LOOKUP = '{"national_id": "AB123456C", "purpose": "benefit-eligibility"}'


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"]
    assert body["detail"]
    return body


class TestProblemDetails:
    async def test_validation_error_is_422_with_locations(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.post("/_probe/shape", json={"name": "", "count": "many"})
        body = assert_problem(response, 422)
        locations = {tuple(e["loc"]) for e in body["errors"]}
        assert ("body", "name") in locations
        assert ("body", "count") in locations
        assert all(isinstance(e["msg"], str) and e["msg"] for e in body["errors"])

    async def test_validation_error_never_echoes_input(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.post("/_probe/shape", json={"name": "AB123456C", "count": "AB123456C"})
        assert "AB123456C" not in response.text

    async def test_an_unknown_body_member_is_named_if_it_has_a_names_shape(
        self, probe_client: httpx.AsyncClient
    ) -> None:
        response = await probe_client.post("/_probe/strict", json={"name": "a", "nickname": "b"})
        body = assert_problem(response, 422)
        assert [e["loc"] for e in body["errors"]] == [["body", "nickname"]]

    @pytest.mark.parametrize(
        ("sent", "loc"),
        [
            ({"name": "a", "AB123456C": "b"}, ["body"]),
            ({"name": "a", "ab123456c": "b"}, ["body"]),
            (
                {"name": "a", "nested": {"name": "b", "nested": {"name": "c", "AB123456C": 2}}},
                ["body", "nested", "nested"],
            ),
            ({"name": "a", "nested": {"name": "b", "Given Name": 2}}, ["body", "nested"]),
        ],
    )
    async def test_an_unknown_body_member_that_may_be_personal_data_is_not_echoed(
        self,
        probe_client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture,
        sent: dict[str, Any],
        loc: list[str],
    ) -> None:
        """A national id sent as a key is said generically, in the problem and the logs."""
        with caplog.at_level(logging.DEBUG):
            response = await probe_client.post("/_probe/strict", json=sent)
        body = assert_problem(response, 422)
        assert [e["loc"] for e in body["errors"]] == [loc]
        assert "123456" not in response.text
        assert "Given Name" not in response.text
        assert "123456" not in caplog.text

    async def test_malformed_json_is_400(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.post(
            "/_probe/shape", content=b'{"name": ', headers={"content-type": "application/json"}
        )
        assert_problem(response, 400)

    @pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded", None])
    async def test_a_json_body_sent_as_another_media_type_is_415(
        self, probe_client: httpx.AsyncClient, media: str | None
    ) -> None:
        content = b'{"name": "Ada", "count": 1}'
        headers = {"content-type": media} if media else {}
        body = assert_problem(await probe_client.post("/_probe/shape", content=content, headers=headers), 415)
        assert "application/json" in body["detail"]
        for accepted in ("application/json; charset=utf-8", "application/merge-patch+json"):
            response = await probe_client.post(
                "/_probe/shape", content=content, headers={"content-type": accepted}
            )
            assert response.status_code == 200, accepted

    @pytest.mark.parametrize(
        "content",
        [
            LOOKUP.encode("utf-16"),  # with its byte order mark
            LOOKUP.encode("utf-16-le"),
            LOOKUP.encode("utf-16-be"),
            LOOKUP.encode("utf-32"),
            LOOKUP.encode("utf-32-le"),
            LOOKUP.replace("AB", "\u00c9B").encode("latin-1"),
            LOOKUP.encode("utf-8") + b"\x00",
        ],
    )
    async def test_a_json_body_not_in_utf8_is_400_without_echoing_it(
        self, probe_client: httpx.AsyncClient, content: bytes
    ) -> None:
        """RFC 8259, 8.1: JSON between systems is UTF-8; Python's parser would take UTF-16
        and UTF-32 (this body answered 401, read, before)."""
        for media in ("application/json", "application/json; charset=utf-8"):
            response = await probe_client.post(
                "/v1/citizens/lookup", content=content, headers={"content-type": media}
            )
            problem = assert_problem(response, 400)
            assert problem["detail"] == "The request body must be JSON encoded as UTF-8."
            assert "123456" not in response.text

    @pytest.mark.parametrize("charset", ["utf-16", "UTF-32", '"iso-8859-1"'])
    async def test_a_json_body_in_another_named_charset_is_415(
        self, probe_client: httpx.AsyncClient, charset: str
    ) -> None:
        response = await probe_client.post(
            "/v1/citizens/lookup",
            content=LOOKUP.encode("utf-8"),
            headers={"content-type": f"application/json; charset={charset}"},
        )
        problem = assert_problem(response, 415)
        assert "UTF-8" in problem["detail"]
        assert "123456" not in response.text

    @pytest.mark.parametrize(
        ("content", "media"),
        [
            (LOOKUP.encode("utf-8"), "application/json; Charset=UTF-8"),
            # RFC 8259: a parser may ignore a byte order mark; this one does.
            (b"\xef\xbb\xbf" + LOOKUP.encode("utf-8"), "application/json"),
            (LOOKUP.replace("AB", "\u00c9B").encode("utf-8"), "application/json"),
        ],
    )
    async def test_a_utf8_json_body_reaches_the_route(
        self, probe_client: httpx.AsyncClient, content: bytes, media: str
    ) -> None:
        response = await probe_client.post(
            "/v1/citizens/lookup", content=content, headers={"content-type": media}
        )
        assert_problem(response, 401)  # read, then refused for want of a token

    @pytest.mark.parametrize("path", ["/v1/audit/entries?limit=1&limit=2", "/v1/catalog?x=&x="])
    async def test_a_query_parameter_named_twice_is_422(
        self, probe_client: httpx.AsyncClient, path: str
    ) -> None:
        body = assert_problem(await probe_client.get(path), 422)
        name = path.split("?")[1].split("=")[0]
        assert body["errors"] == [{"loc": ["query", name], "msg": "given more than once"}]

    @pytest.mark.parametrize(
        ("path", "loc"),
        [
            # A name that may be personal data (a national id) is not echoed.
            ("/v1/audit/entries?AB123456C=1&AB123456C=2", ["query"]),
            ("/v1/audit/entries?ab123456c=1&ab123456c=2", ["query"]),
            ("/v1/catalog?Limit=&Limit=", ["query"]),
        ],
    )
    async def test_a_query_name_given_twice_is_echoed_only_if_it_has_a_names_shape(
        self, probe_client: httpx.AsyncClient, path: str, loc: list[str]
    ) -> None:
        response = await probe_client.get(path)
        body = assert_problem(response, 422)
        assert body["errors"] == [{"loc": loc, "msg": "given more than once"}]
        assert "123456" not in response.text
        assert "Limit" not in response.text

    @pytest.mark.parametrize(
        ("body", "loc"),
        [
            (b'{"national_id": "a", "purpose": "p", "national_id": "b"}', ["body", "national_id"]),
            (b'{"outer": {"x": 1, "x" : 2}}', ["body", "x"]),
            (b'{"\\u0000": 1, "\\u0000": 2}', ["body"]),  # a key that is no plain name is not echoed
            # Nor one that may be personal data: a national id used as a key.
            (b'{"AB123456C": "a", "AB123456C": "b"}', ["body"]),
            (b'{"ab123456c": "a", "ab123456c": "b"}', ["body"]),
        ],
    )
    async def test_a_json_key_named_twice_is_422(
        self, probe_client: httpx.AsyncClient, body: bytes, loc: list[str]
    ) -> None:
        response = await probe_client.post(
            "/v1/citizens/lookup", content=body, headers={"content-type": "application/json"}
        )
        problem = assert_problem(response, 422)
        assert problem["errors"] == [{"loc": loc, "msg": "given more than once"}]
        assert b'"a"' not in response.content
        assert b'"b"' not in response.content

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            (b'{"national_id": "a \\": b", "purpose": "p"}', 401),  # a value ending like a key
            (b"[1, 1]", 401),
            (b'{"national_id": ', 400),  # not JSON: the route's own refusal
        ],
    )
    async def test_a_body_without_repeats_reaches_the_route(
        self, probe_client: httpx.AsyncClient, body: bytes, status: int
    ) -> None:
        response = await probe_client.post(
            "/v1/citizens/lookup", content=body, headers={"content-type": "application/json"}
        )
        assert_problem(response, status)

    async def test_unknown_route_is_404(self, probe_client: httpx.AsyncClient) -> None:
        assert_problem(await probe_client.get("/v1/nothing-here"), 404)

    async def test_a_trailing_slash_is_404_never_a_redirect_built_from_the_host(
        self, probe_client: httpx.AsyncClient
    ) -> None:
        response = await probe_client.post("/v1/citizens/", json={}, headers={"Host": "evil.example"})
        assert_problem(response, 404)
        assert "location" not in response.headers

    async def test_wrong_method_is_405(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.delete("/healthz")
        assert_problem(response, 405)
        assert response.headers["allow"] == "GET, HEAD"

    @pytest.mark.parametrize(
        ("path", "allowed"),
        [
            # Two routes serve this path, one method each (RFC 9110: Allow lists every one).
            ("/v1/citizens/5f0c3b7e-8d2a-4c1e-9b6f-2a7d4e8c1f03", "DELETE, GET, HEAD"),
            ("/v1/citizens/5f0c3b7e-8d2a-4c1e-9b6f-2a7d4e8c1f03/consents", "GET, HEAD, POST"),
            # Of the shape of /v1/citizens/{citizen_id}, but no citizen id: only its own
            # route takes it (Schemathesis found GET and DELETE named here).
            ("/v1/citizens/lookup", "POST"),
            ("/v1/citizens/batch-get", "POST"),
            # A path no route takes still names the methods of its shape (a 405 has Allow).
            ("/v1/citizens/c_01JDQ2V7X3M9K4T8R6W5Y0ZB1N", "DELETE, GET, HEAD"),
            ("/v1/clients", "GET, HEAD, POST"),
            ("/v1/policies/an-agreement", "DELETE, GET, HEAD, PUT"),
            # Named by a route, though of the shape of /v1/policies/{agreement_id}: that
            # route's methods alone.
            ("/v1/policies/simulate", "POST"),
            # The console's pages answer 405 as an HTML page, with the same Allow
            # (tests/console/test_sessions.py).
        ],
    )
    async def test_405_allows_every_method_of_every_route_at_the_path(
        self, probe_client: httpx.AsyncClient, path: str, allowed: str
    ) -> None:
        response = await probe_client.request("OPTIONS", path)
        assert_problem(response, 405)
        assert response.headers["allow"] == allowed
        assert len(response.headers.get_list("allow")) == 1

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/citizens/lookup"),
            ("HEAD", "/v1/citizens/lookup"),
            ("DELETE", "/v1/citizens/lookup"),
            ("GET", "/v1/citizens/batch-get"),
            ("DELETE", "/v1/citizens/batch-get"),
            ("GET", "/v1/policies/simulate"),
            ("PUT", "/v1/policies/simulate"),
            ("DELETE", "/v1/policies/simulate"),
        ],
    )
    async def test_a_method_a_named_path_does_not_serve_is_405_not_a_parameters_route(
        self, app: FastAPI, probe_client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        """``lookup`` has the form of no citizen id (the GET route's 422) and ``simulate``
        that of an agreement id (its 404): neither is, so either way the answer is 405,
        signed in or not, and ``GET /v1/citizens/{citizen_id}`` on the hot path included."""
        for signed_in in (False, True):
            if signed_in:
                act_as(app, "dvla", "data-owner" if "policies" in path else "consumer")
            response = await probe_client.request(method, path, json={} if method == "PUT" else None)
            assert response.status_code == 405, response.text
            assert response.headers["allow"] == "POST"
            if method != "HEAD":
                assert_problem(response, 405)

    async def test_a_console_page_named_for_post_is_405_not_the_catch_all_404(
        self, probe_client: httpx.AsyncClient
    ) -> None:
        response = await probe_client.get("/console/sign-out")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.headers["content-type"].startswith("text/html")

    async def test_head_is_the_get_without_its_body(self, probe_client: httpx.AsyncClient) -> None:
        got = await probe_client.get("/healthz")
        head = await probe_client.head("/healthz")
        assert (head.status_code, head.content) == (200, b"")
        assert got.content
        assert head.headers["content-length"] == got.headers["content-length"]
        assert head.headers["content-type"] == got.headers["content-type"]

    async def test_head_of_an_unauthenticated_api_call_is_its_401(
        self, probe_client: httpx.AsyncClient
    ) -> None:
        got = await probe_client.get("/v1/catalog")
        head = await probe_client.head("/v1/catalog")
        assert got.status_code == head.status_code == 401
        assert head.content == b""
        assert head.headers["www-authenticate"] == got.headers["www-authenticate"]

    async def test_head_where_no_get_is_405(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.head("/oauth/token")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.content == b""

    async def test_405_allows_at_least_what_the_openapi_document_lists(
        self, app: FastAPI, probe_client: httpx.AsyncClient
    ) -> None:
        paths = app.openapi()["paths"]
        assert len(paths) > 30
        for template, operations in paths.items():
            path = re.sub(r"\{[^}]+\}", "1", template)
            response = await probe_client.request("OPTIONS", path)
            assert response.status_code == 405, template
            documented = {method.upper() for method in operations}
            assert set(response.headers["allow"].split(", ")) >= documented, template

    @pytest.mark.parametrize(("path", "status"), [("conflict", 409), ("gone", 410), ("stale", 412)])
    async def test_service_errors_keep_status_and_detail(
        self, probe_client: httpx.AsyncClient, path: str, status: int
    ) -> None:
        body = assert_problem(await probe_client.get(f"/_probe/{path}"), status)
        assert body["type"].endswith(("conflict", "gone", "precondition-failed"))

    async def test_unexpected_error_is_500_without_internals(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.get("/_probe/boom", headers={"X-Request-ID": "req-0123456789"})
        body = assert_problem(response, 500)
        assert "deadbeef" not in response.text
        assert "RuntimeError" not in response.text
        assert "req-0123456789" in body["detail"]

    async def test_declared_oversize_body_is_413(self, probe_client: httpx.AsyncClient) -> None:
        big = b"x" * (2 * 1024 * 1024)
        response = await probe_client.post(
            "/_probe/shape", content=big, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413)


class TestSayableName:
    @pytest.mark.parametrize("name", ["purpose", "national_id", "_", "a" * 64])
    def test_a_name_of_lower_case_letters_and_underscores_is_sayable(self, name: str) -> None:
        assert sayable_name(name) == name

    @pytest.mark.parametrize(
        "name", ["", "AB123456C", "ab123456c", "Purpose", "data-owner", "a b", "\u00e9", "a" * 65, "x\n", 7]
    )
    def test_anything_else_is_not(self, name: object) -> None:
        assert sayable_name(name) is None


class TestTextTheStoreCannotKeep:
    """A safety net behind the inputs' own checks: text the database refuses is the
    caller's 400, never a 500, and the value is not echoed."""

    # JSON escapes: a NUL, and a lone surrogate (no UTF-8 encoding has one).
    @pytest.mark.parametrize("escaped", [r"secret\u0000value", r"secret\ud800value"])
    async def test_is_400_without_echoing_it(
        self, probe_client: httpx.AsyncClient, database_url: str, escaped: str
    ) -> None:
        body = b'{"text": "' + escaped.encode() + b'"}'
        response = await probe_client.post(
            "/_probe/keep", content=body, headers={"Content-Type": "application/json"}
        )
        if "u0000" in escaped and not is_postgres(database_url):
            # SQLite keeps a NUL as it is.
            assert response.status_code == 200, response.text
            return
        problem = assert_problem(response, 400)
        assert problem["type"].endswith("/unkeepable-character")
        assert problem["detail"] == (
            "The request holds a character the store cannot keep (such as a NUL); nothing was changed."
        )
        assert "secret" not in response.text

    async def test_other_text_is_kept(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.post("/_probe/keep", json={"text": "Zoë 🙂"})
        assert response.json() == {"length": 5}


class TestBodyLimitStreaming:
    async def test_chunked_body_is_refused_without_reading_it_whole(self) -> None:
        """A 5 MB chunked body is cut off after about the limit, not read to the end."""
        limit = 1024 * 1024
        chunk = b"x" * 65536
        total_chunks = (5 * 1024 * 1024) // len(chunk)
        pulled = 0

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            while True:  # an app that reads the whole body
                message = await receive()
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"read it all"})

        async def receive() -> Message:
            nonlocal pulled
            pulled += 1
            return {"type": "http.request", "body": chunk, "more_body": pulled < total_chunks}

        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        middleware = BodyLimitMiddleware(inner, limit=limit)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "headers": [(b"transfer-encoding", b"chunked")],
        }
        await middleware(scope, receive, send)
        assert sent[0]["status"] == 413
        assert (b"content-type", PROBLEM.encode()) in sent[0]["headers"]
        # It stopped one chunk past the limit: 17 of 80 chunks.
        assert pulled == limit // len(chunk) + 1
        assert pulled < total_chunks


@pytest.fixture
def probe_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn server on loopback, in a thread, serving the app plus the probe routes."""
    application = create_app(settings)
    application.include_router(probe)
    config = uvicorn.Config(
        application, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "probe server did not start"
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.e2e
def test_head_over_http_sends_the_headers_and_no_body(probe_server: str) -> None:
    with httpx.Client(timeout=10) as http:
        got = http.get(f"{probe_server}/healthz")
        head = http.head(f"{probe_server}/healthz")
        # The same connection still reads a full answer after the HEAD.
        again = http.get(f"{probe_server}/healthz")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"]
    assert again.json() == got.json()


@pytest.mark.e2e
class TestBodyLimitOverHttp:
    def test_five_megabytes_streamed_to_a_real_server_get_413(self, probe_server: str) -> None:
        sent = 0

        def five_megabytes() -> Iterator[bytes]:
            nonlocal sent
            for _ in range(80):
                sent += 65536
                yield b"x" * 65536

        with httpx.Client(timeout=10) as http:
            try:
                response = http.post(
                    f"{probe_server}/_probe/shape",
                    content=five_megabytes(),
                    headers={"content-type": "application/json"},
                )
            except (httpx.WriteError, httpx.RemoteProtocolError):
                pytest.fail("the server closed the connection without answering 413")
        assert_problem(response, 413)

    def test_declared_five_megabytes_get_413(self, live_server: LiveServer) -> None:
        response = httpx.post(
            f"{live_server.base_url}/v1/catalog",
            content=b"x" * (5 * 1024 * 1024),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert_problem(response, 413)


class TestAnHttpErrorOfAnotherStatus:
    async def test_is_about_blank_titled_by_its_status(self, probe_client: httpx.AsyncClient) -> None:
        """RFC 9457, 4.2.1: a status without a problem type of its own is ``about:blank``,
        titled with the status's phrase; never another type's URI (whose title then varied
        with the detail, and whose status was another)."""
        response = await probe_client.get("/_probe/teapot")
        assert response.status_code == 418
        assert response.headers["content-type"] == PROBLEM
        assert response.json() == {
            "type": "about:blank",
            "title": "I'm a Teapot",
            "status": 418,
            "detail": "Short and stout.",
        }


class TestDocsAssetsRanges:
    """The docs' static assets honour ``Range``; a Range they cannot serve is refused as a
    problem like every other refusal, not Starlette's plain text."""

    @pytest.mark.parametrize(
        ("method", "range_header", "status"),
        [
            ("GET", "bytes=999999999-", 416),
            ("HEAD", "bytes=999999999-", 416),
            ("GET", "bytes=abc", 400),
            ("GET", "items=0-1", 400),
            ("GET", "bytes=5-1", 400),
        ],
    )
    async def test_a_range_it_cannot_serve_is_a_problem(
        self, probe_client: httpx.AsyncClient, method: str, range_header: str, status: int
    ) -> None:
        response = await probe_client.request(
            method, "/docs-assets/swagger-ui.css", headers={"Range": range_header}
        )
        assert response.status_code == status
        assert response.headers["content-type"] == PROBLEM
        if method == "HEAD":
            assert response.content == b""
            return
        body = assert_problem(response, status)
        assert range_header not in body["detail"]
        if status == 416:
            assert body["type"].endswith("/range-not-satisfiable")
            size = int(response.headers["content-range"].removeprefix("bytes */"))
            assert size > 0

    async def test_a_range_it_can_serve_is_served(self, probe_client: httpx.AsyncClient) -> None:
        response = await probe_client.get("/docs-assets/swagger-ui.css", headers={"Range": "bytes=0-9"})
        assert response.status_code == 206
        assert len(response.content) == 10


class TestFailureLogNamesTheDriversError:
    """A background round lost to the database is one warning line naming the driver's error."""

    def test_names_the_lost_connection_inside_a_task_groups_exception_group(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        lost = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        group = ExceptionGroup("unhandled errors in a TaskGroup", [lost])
        with caplog.at_level(logging.INFO, logger="tellonce.tests"):
            FailureLog(logging.getLogger("tellonce.tests"), "rounds").failed("round %d failed", group, 7)
        [record] = caplog.records
        assert (record.levelno, record.exc_info) == (logging.WARNING, None)
        assert record.getMessage() == (
            "round 7 failed: database unavailable "
            "(ConnectionResetError: [Errno 104] Connection reset by peer)"
        )

    def test_anything_else_keeps_its_traceback(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="tellonce.tests"):
            rounds = FailureLog(logging.getLogger("tellonce.tests"), "rounds")
            rounds.failed("round failed", RuntimeError("a bug"))
        [record] = caplog.records
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
