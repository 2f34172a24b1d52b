"""The client against a hostile or broken server (or a proxy in between), a real HTTP
server on the loopback interface: every exchange is bounded in total time and in size, and
an answer it cannot use is the library's own error, never a hang, a raw parse error or an
echo of the body (which may hold personal data)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tellonce_client import (
    ClientSecret,
    InvalidResponse,
    NotFound,
    ResponseTimeout,
    ResponseTooLarge,
    TellonceClient,
    TellonceError,
    TokenError,
    TransportError,
)

# In every hostile body: it must never appear in an error.
SECRET = "QQ123456C-do-not-echo"

Handler = Callable[[BaseHTTPRequestHandler], None]


class HostileServer:
    """Answers each path with the behaviour registered for it in ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: dict[str, int] = {}
        served = self

        class Handle(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                path = self.path.split("?")[0]
                served.hits[path] = served.hits.get(path, 0) + 1
                try:
                    served.routes[path](self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    served = HostileServer()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        thread.join(timeout=5)


def answer(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("content-type", content_type)
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    return handle


def json_answer(status: int, body: Any) -> Handler:
    return answer(status, json.dumps(body).encode())


def drip(every: float = 0.05, *, lines: bool = False) -> Handler:
    """A 200 whose body comes a byte at a time, each well within httpx's read timeout,
    for at most ten seconds."""

    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", "100000")
        request.end_headers()
        stop = time.monotonic() + 10
        while time.monotonic() < stop:
            request.wfile.write(b"\n" if lines else b" ")
            request.wfile.flush()
            time.sleep(every)

    return handle


def endless(chunk: bytes = b"[" * 65536, status: int = 200) -> Handler:
    """A chunked answer as good as endless: ten seconds or 32 MiB (far past the limits the
    tests set), whichever comes first."""

    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("content-type", "application/json")
        request.send_header("transfer-encoding", "chunked")
        request.end_headers()
        stop = time.monotonic() + 10
        for _ in range((32 << 20) // len(chunk)):
            if time.monotonic() > stop:
                break
            request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        request.wfile.write(b"0\r\n\r\n")

    return handle


def late(seconds: float, then: Handler) -> Handler:
    def handle(request: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        then(request)

    return handle


def client(server: HostileServer, **options: Any) -> TellonceClient:
    return TellonceClient(server.url, None, **{"timeout": 0.5, **options})


def usage_page(cursor: str | None, items: int = 1) -> dict[str, Any]:
    row = {"consumer": "c", "owner": "o", "field": "f", "purpose": "p", "period": "2026-12", "count": 1}
    return {"items": [row] * items, "next_cursor": cursor}


class TestBoundedInTime:
    async def test_a_dripping_answer_is_a_timeout_not_a_hang(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/catalog"] = drip()
        async with client(hostile) as api:
            started = time.monotonic()
            with pytest.raises(ResponseTimeout) as raised:
                await api.catalog()
        assert time.monotonic() - started < 3
        assert isinstance(raised.value, TellonceError)
        assert "GET /v1/catalog" in str(raised.value)

    async def test_a_dripping_token_endpoint_is_a_timeout(self, hostile: HostileServer) -> None:
        hostile.routes["/oauth/token"] = drip()
        auth = ClientSecret("tc_x", "secret")
        auth.timeout = 0.5
        async with TellonceClient(hostile.url, auth) as api:
            started = time.monotonic()
            with pytest.raises(ResponseTimeout):
                await api.catalog()
        assert time.monotonic() - started < 3

    async def test_a_dripping_export_is_a_timeout_between_lines(self, hostile: HostileServer) -> None:
        """Empty lines are skipped, so a server sending only newlines would never yield one."""
        hostile.routes["/v1/audit/export"] = drip(lines=True)
        async with client(hostile) as api:
            started = time.monotonic()
            with pytest.raises(ResponseTimeout):
                async for _line in api.export_audit():
                    pass
        assert time.monotonic() - started < 3

    async def test_a_long_poll_is_given_its_wait(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/events"] = late(0.8, json_answer(200, {"items": [], "cursor": "c1"}))
        async with client(hostile) as api:
            page = await api.events(wait=1)
        assert page.cursor == "c1"


class TestBoundedInSize:
    async def test_an_endless_answer_is_too_large(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/catalog"] = endless()
        async with client(hostile, timeout=5, max_response_bytes=1 << 20) as api:
            started = time.monotonic()
            with pytest.raises(ResponseTooLarge):
                await api.catalog()
        assert time.monotonic() - started < 3

    async def test_a_declared_length_over_the_limit_is_not_read(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/catalog"] = answer(200, b"x" * 2048)
        async with client(hostile, max_response_bytes=1024) as api:
            with pytest.raises(ResponseTooLarge) as raised:
                await api.catalog()
        assert isinstance(raised.value, InvalidResponse)
        assert "x" * 10 not in str(raised.value)

    async def test_an_endless_error_body_is_too_large(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/catalog"] = endless(b"{" * 65536, status=404)
        async with client(hostile, timeout=5, max_response_bytes=1 << 20) as api:
            with pytest.raises(ResponseTooLarge):
                await api.catalog()

    async def test_an_export_line_without_end_is_too_large(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/audit/export"] = endless(b"a" * 65536)
        async with client(hostile, timeout=5, max_line_chars=1 << 20) as api:
            with pytest.raises(ResponseTooLarge):
                async for _line in api.export_audit():
                    pass

    async def test_an_export_is_read_line_by_line(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/audit/export"] = answer(200, b'{"a": 1}\r\n\n{"b": 2}\n{"c"', "text/plain")
        async with client(hostile) as api:
            assert [line async for line in api.export_audit()] == ['{"a": 1}', '{"b": 2}', '{"c"']


class TestUnusableAnswers:
    @pytest.mark.parametrize(
        "body",
        [
            f"<html>{SECRET}</html>".encode(),
            b"\xff\xfe" + SECRET.encode(),
            b"[" * 100_000 + b"]" * 100_000,
            json.dumps([SECRET]).encode(),
            json.dumps({"version": SECRET, "departments": [], "purposes": []}).encode(),
        ],
        ids=["not-json", "not-utf8", "nested-too-deep", "a-list", "wrong-shape"],
    )
    async def test_a_200_that_is_not_the_answer_is_invalid_response(
        self, hostile: HostileServer, body: bytes
    ) -> None:
        hostile.routes["/v1/catalog"] = answer(200, body)
        async with client(hostile) as api:
            with pytest.raises(InvalidResponse) as raised:
                await api.catalog()
        assert isinstance(raised.value, ValueError)  # as the parse errors it replaces were
        message = str(raised.value)
        assert SECRET not in message
        assert "GET /v1/catalog" in message

    async def test_a_wrong_shape_says_where(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/catalog"] = json_answer(200, {"version": SECRET, "departments": []})
        async with client(hostile) as api:
            with pytest.raises(InvalidResponse) as raised:
                await api.catalog()
        message = str(raised.value)
        assert "CatalogOut" in message
        assert "version" in message
        assert "purposes" in message
        assert SECRET not in message

    @pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"[" * 100_000])
    async def test_healthz_that_is_not_an_object_is_invalid_response(
        self, hostile: HostileServer, body: bytes
    ) -> None:
        hostile.routes["/healthz"] = answer(200, body)
        async with client(hostile) as api:
            with pytest.raises(InvalidResponse):
                await api.healthz()

    @pytest.mark.parametrize(
        "body",
        [b"[" * 100_000 + b"]" * 100_000, b'"just a string"', b"[1]", b"null", b"<html>"],
        ids=["nested-too-deep", "string", "list", "null", "html"],
    )
    async def test_a_problem_that_is_no_object_is_the_status_error(
        self, hostile: HostileServer, body: bytes
    ) -> None:
        hostile.routes["/v1/catalog"] = answer(404, body, "application/problem+json")
        async with client(hostile) as api:
            with pytest.raises(NotFound) as raised:
                await api.catalog()
        assert raised.value.problem.status == 404

    async def test_a_token_answer_nested_too_deep_is_a_token_error(self, hostile: HostileServer) -> None:
        hostile.routes["/oauth/token"] = answer(200, b"[" * 100_000 + b"]" * 100_000)
        async with TellonceClient(hostile.url, ClientSecret("tc_x", "s")) as api:
            with pytest.raises(TokenError):
                await api.catalog()

    async def test_a_token_refusal_nested_too_deep_is_a_token_error(self, hostile: HostileServer) -> None:
        hostile.routes["/oauth/token"] = answer(400, b"[" * 100_000 + b"]" * 100_000)
        async with TellonceClient(hostile.url, ClientSecret("tc_x", "s")) as api:
            with pytest.raises(TokenError) as raised:
                await api.catalog()
        assert raised.value.status == 400


class TestPaging:
    async def test_a_cursor_given_again_ends_the_iterator(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/audit/reports/usage"] = json_answer(200, usage_page("same"))
        async with client(hostile) as api:
            rows = api.iter_usage()
            assert await anext(rows)
            assert await anext(rows)
            with pytest.raises(InvalidResponse, match="given before"):
                await anext(rows)
        assert hostile.hits["/v1/audit/reports/usage"] == 2

    async def test_an_empty_page_with_a_cursor_ends_the_iterator(self, hostile: HostileServer) -> None:
        pages = iter(range(1_000_000))

        def handle(request: BaseHTTPRequestHandler) -> None:
            json_answer(200, usage_page(f"c{next(pages)}", items=0))(request)

        hostile.routes["/v1/audit/reports/usage"] = handle
        async with client(hostile) as api:
            with pytest.raises(InvalidResponse, match="empty page"):
                async for _row in api.iter_usage():
                    pass
        assert hostile.hits["/v1/audit/reports/usage"] == 1

    async def test_distinct_cursors_are_followed_to_the_end(self, hostile: HostileServer) -> None:
        answers = iter([usage_page("c1"), usage_page("c2"), usage_page(None)])

        def handle(request: BaseHTTPRequestHandler) -> None:
            json_answer(200, next(answers))(request)

        hostile.routes["/v1/audit/reports/usage"] = handle
        async with client(hostile) as api:
            assert len([row async for row in api.iter_usage()]) == 3


class TestRetriesAndTokensAreBounded:
    """Guards (these held before the bounds above): no absurd wait, no loop."""

    @pytest.mark.parametrize(
        "retry_after", ["9" * 400, "99999999", "Fri, 31 Dec 9999 23:59:59 GMT", "-5", "soon", "1e9"]
    )
    async def test_an_absurd_retry_after_is_never_waited(
        self, hostile: HostileServer, retry_after: str
    ) -> None:
        def handle(request: BaseHTTPRequestHandler) -> None:
            request.send_response(503)
            request.send_header("retry-after", retry_after)
            request.send_header("content-length", "0")
            request.end_headers()

        hostile.routes["/v1/catalog"] = handle
        async with client(hostile) as api:
            started = time.monotonic()
            with pytest.raises(TellonceError):
                await api.catalog()
        # Waited at most the capped backoff (0.25 + 0.5 + 1 seconds), never the Retry-After.
        assert time.monotonic() - started < 3

    async def test_a_service_refusing_every_token_is_asked_twice(self, hostile: HostileServer) -> None:
        hostile.routes["/oauth/token"] = json_answer(200, {"access_token": "t", "expires_in": 0})
        hostile.routes["/v1/catalog"] = json_answer(401, {"title": "Unauthorized"})
        async with TellonceClient(hostile.url, ClientSecret("tc_x", "s"), timeout=2) as api:
            with pytest.raises(TellonceError) as raised:
                await api.catalog()
        assert getattr(raised.value, "status", None) == 401
        assert hostile.hits["/oauth/token"] == 2
        assert hostile.hits["/v1/catalog"] == 2


def closed_port() -> int:
    """A loopback port nothing listens on (bound, never listened on, then closed)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port: int = unused.getsockname()[1]
    return port


def cut_short(declared: int, sent: bytes) -> Handler:
    """A 200 declaring ``declared`` bytes of body, sending ``sent``, then closing."""

    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(declared))
        request.end_headers()
        request.wfile.write(sent)
        request.close_connection = True

    return handle


class TestTransportFailures:
    """httpx's own errors never escape: each is the library's ``TransportError`` (a
    ``ResponseTimeout`` for httpx's timeouts), with httpx's error as its cause and a
    message naming the call but not its query."""

    async def test_a_closed_port_is_a_transport_error(self) -> None:
        async with TellonceClient(f"http://127.0.0.1:{closed_port()}", None) as api:
            with pytest.raises(TransportError) as raised:
                await api.request("GET", "/v1/catalog", params={"q": SECRET})
        assert isinstance(raised.value.__cause__, httpx.ConnectError)
        assert not isinstance(raised.value, ResponseTimeout)
        assert str(raised.value) == "the exchange of GET /v1/catalog failed (ConnectError)"

    async def test_a_closed_port_at_the_token_endpoint_is_a_transport_error(self) -> None:
        async with TellonceClient(f"http://127.0.0.1:{closed_port()}", ClientSecret("tc_x", "s")) as api:
            with pytest.raises(TransportError) as raised:
                await api.catalog()
        assert isinstance(raised.value.__cause__, httpx.ConnectError)
        assert "POST /oauth/token" in str(raised.value)

    async def test_an_answer_cut_short_is_a_transport_error(self, hostile: HostileServer) -> None:
        hostile.routes["/v1/catalog"] = cut_short(1000, b'{"fields": ')
        async with client(hostile) as api:
            with pytest.raises(TransportError) as raised:
                await api.catalog()
        assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
        assert SECRET not in str(raised.value)

    async def test_an_export_broken_between_lines_is_a_transport_error(self, hostile: HostileServer) -> None:
        def handle(request: BaseHTTPRequestHandler) -> None:
            request.send_response(200)
            request.send_header("content-type", "application/jsonl")
            request.send_header("transfer-encoding", "chunked")
            request.end_headers()
            line = b'{"seq": 1}\n'
            request.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            request.wfile.flush()
            request.close_connection = True  # no last chunk

        hostile.routes["/v1/audit/export"] = handle
        async with client(hostile, timeout=5) as api:
            exported = api.export_audit()
            assert await anext(exported) == '{"seq": 1}'
            with pytest.raises(TransportError) as raised:
                await anext(exported)
        assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
        assert "GET /v1/audit/export" in str(raised.value)

    async def test_httpx_own_read_timeout_is_a_response_timeout(self, hostile: HostileServer) -> None:
        # httpx's per-read timeout (the caller's own client) expires before the client's
        # timeout in all would.
        hostile.routes["/v1/catalog"] = late(2, json_answer(200, {}))
        async with (
            httpx.AsyncClient(base_url=hostile.url, timeout=0.2) as http,
            TellonceClient(hostile.url, None, http=http, timeout=30) as api,
        ):
            with pytest.raises(ResponseTimeout) as raised:
                await api.catalog()
        assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
        assert isinstance(raised.value, TransportError)
        assert str(raised.value) == "the answer to GET /v1/catalog timed out (ReadTimeout)"
