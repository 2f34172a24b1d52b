"""Bytes that are no HTTP request, sent over a raw socket to a real server.

The HTTP parser refuses them before the app sees them; the answer is still the service's
400 problem+json (RFC 9457), which never repeats what was sent, the connection closes, and
the server goes on serving. For ``tellonce serve``, ``tellonce witness serve``, and each
HTTP/1.1 implementation uvicorn may pick (``service.malformed_http``).
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from service.malformed_http import HEAD_LIMIT, HTTP_PROTOCOL, ProblemH11Protocol
from service.witness.cosignature import CosignatureSigner
from service.witness.server import create_witness_app
from service.witness.state import TrustedLog, WitnessState
from tests.fixtures.server import LiveServer, free_port
from tests.fixtures.tlog import MemoryLog
from tests.fixtures.witnesses import WitnessProcess

pytestmark = pytest.mark.e2e

# In every request below, where a person's details could be: none may come back.
MARKER = b"officer-Okonkwo-7731"
# The start of a good request, before a bad line.
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
MALFORMED = {
    "a control byte in a header value": HEALTHZ + b"X-On-Behalf-Of: " + MARKER + b"\x01b\r\n\r\n",
    "a NUL in a header value": HEALTHZ + b"X-Case-Ref: " + MARKER + b"\x00\r\n\r\n",
    "a request line that is no request line": MARKER + b"\r\n\r\n",
    "a request line with a space in the target": b"GET /v1/" + MARKER + b" x HTTP/1.1\r\nHost: a\r\n\r\n",
    "a header line with no colon": HEALTHZ + MARKER + b"\r\n\r\n",
    "a header name with a space": HEALTHZ + b"X Case: " + MARKER + b"\r\n\r\n",
}


def exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection (it must)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def assert_problem_400(raw: bytes) -> None:
    """``raw`` is one complete 400 problem+json (RFC 9457) that closes the connection and
    repeats nothing of the request."""
    assert_problem(raw, "400 Bad Request", "malformed-request")


def assert_problem(raw: bytes, status: str, slug: str) -> None:
    """``raw`` is one complete problem+json (RFC 9457) of ``status`` and ``slug`` that
    closes the connection and repeats nothing of the request."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, raw
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    assert status_line == f"HTTP/1.1 {status}", raw
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, raw
        headers[name.lower()] = value.strip()
    assert headers["content-type"] == "application/problem+json", raw
    assert headers["connection"] == "close", raw
    assert int(headers["content-length"]) == len(body), raw
    problem = json.loads(body)
    assert set(problem) == {"type", "title", "status", "detail"}, problem
    assert problem["type"] == f"https://tellonce.example/problems/{slug}"
    assert problem["status"] == int(status.split()[0])
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    assert MARKER not in raw
    assert MARKER.lower() not in raw.lower()


def head_of(size: int, path: bytes = b"/healthz") -> bytes:
    """A finished request head of exactly ``size`` bytes, padded in one header whose value
    is the marker repeated."""
    start = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    end = b"\r\n\r\n"
    padding = size - len(start) - len(end)
    return start + (MARKER * (padding // len(MARKER) + 1))[:padding] + end


TOO_LARGE = ("431 Request Header Fields Too Large", "request-header-too-large")


def answer_before_the_end(sock: socket.socket) -> bytes:
    """The server's answer to an unfinished head, which must come without the head being
    finished, read to the connection's close."""
    readable, _, _ = select.select([sock], [], [], 20)
    assert readable, "no answer to a head past the limit: the server kept reading it"
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def assert_heads_are_limited(address: tuple[str, int], path: bytes) -> None:
    """A head of exactly ``HEAD_LIMIT`` bytes is read and answered; one that keeps growing
    past it, dripped a KiB at a time or sent at once, is refused as 431 problem+json before
    it ends."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head_of(HEAD_LIMIT, path))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 "), answer
    assert not answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
    dripped = head_of(HEAD_LIMIT + 1024, path)[:-4]
    with socket.create_connection(address, timeout=10) as sock:
        for start in range(0, len(dripped), 1024):
            sock.sendall(dripped[start : start + 1024])
            time.sleep(0.002)
        assert_problem(answer_before_the_end(sock), *TOO_LARGE)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head_of(2 * HEAD_LIMIT, path)[:-4])
        assert_problem(answer_before_the_end(sock), *TOO_LARGE)
    # A body longer than the limit, and requests pipelined after it, are no head: each is
    # answered (the server reads them in pieces of the limit).
    body = b"x" * (8 * HEAD_LIMIT)
    post = b"POST /add-checkpoint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    pipelined = head_of(HEAD_LIMIT // 2, path) + head_of(HEAD_LIMIT, path)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(post + body + pipelined)
        received = bytearray()
        while len(re.findall(rb"HTTP/1\.1 \d{3} ", received)) < 3:
            chunk = sock.recv(65536)
            assert chunk, bytes(received)
            received += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert b"431" not in statuses, bytes(received)
    assert b"malformed-request" not in received, bytes(received)


def loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    assert parts.port is not None
    return parts.hostname, parts.port


class TestServe:
    def test_a_malformed_request_is_a_400_problem_that_echoes_nothing(self, live_server: LiveServer) -> None:
        for request in MALFORMED.values():
            assert_problem_400(exchange(loopback(live_server.base_url), request))
        # Each refusal closed its own connection only: the server still serves.
        assert httpx.get(f"{live_server.base_url}/healthz", timeout=10).status_code == 200
        catalog = httpx.get(f"{live_server.base_url}/v1/catalog", timeout=10)
        assert catalog.status_code == 401
        assert catalog.headers["content-type"] == "application/problem+json"

    def test_a_head_past_the_limit_is_a_431_problem_that_echoes_nothing(
        self, live_server: LiveServer
    ) -> None:
        assert_heads_are_limited(loopback(live_server.base_url), b"/healthz")
        assert httpx.get(f"{live_server.base_url}/healthz", timeout=10).status_code == 200

    def test_every_operation_declares_the_431_it_may_answer(self, live_server: LiveServer) -> None:
        """The limit is the server's, before any route: any operation may answer it, the
        token endpoint's included, and /openapi.json says so with the very body sent (a
        generated query string can pass 16 KiB)."""
        document = httpx.get(f"{live_server.base_url}/openapi.json", timeout=10).json()
        undeclared = [
            f"{method.upper()} {path}"
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if "431" not in operation["responses"]
        ]
        assert undeclared == []
        for method, path in (("GET", "/v1/catalog"), ("POST", "/oauth/token"), ("GET", "/healthz")):
            declared = document["paths"][path][method.lower()]["responses"]["431"]["content"]
            assert list(declared) == ["application/problem+json"]
            long_query = b"?q=" + MARKER * (2 * HEAD_LIMIT // len(MARKER))
            head = method.encode() + b" " + path.encode() + long_query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            with socket.create_connection(loopback(live_server.base_url), timeout=10) as sock:
                sock.sendall(head)
                raw = answer_before_the_end(sock)
            assert_problem(raw, *TOO_LARGE)
            example = declared["application/problem+json"]["example"]
            assert json.loads(raw.partition(b"\r\n\r\n")[2]) == example


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[WitnessProcess]:
    log_vkey = MemoryLog.new().signer.verifier_key()
    process = WitnessProcess("audit-office.example/witness", tmp_path / "witness", log_vkey)
    process.start()
    yield process
    process.stop()


class TestWitnessServe:
    def test_a_malformed_request_is_a_400_problem_that_echoes_nothing(self, witness: WitnessProcess) -> None:
        for request in MALFORMED.values():
            assert_problem_400(exchange(loopback(witness.url), request))
        still = httpx.get(f"{witness.url}/checkpoint", params={"origin": "unknown.example"}, timeout=10)
        assert still.status_code == 404
        assert still.headers["content-type"] == "application/problem+json"


@pytest.fixture
def witness_state(tmp_path: Path) -> Iterator[WitnessState]:
    log_vkey = MemoryLog.new().signer.verifier_key()
    signer = CosignatureSigner.generate("audit-office.example/witness")
    state = WitnessState(tmp_path / "state.db", signer, [TrustedLog.parse(log_vkey)])
    yield state
    state.close()


@contextlib.contextmanager
def serving(state: WitnessState, protocol: type) -> Iterator[tuple[str, int]]:
    """The witness app served in this process over ``protocol``, at the address yielded;
    still answering after what the test sent."""
    port = free_port()
    config = uvicorn.Config(
        create_witness_app(state),
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        log_level="error",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield "127.0.0.1", port
        still = httpx.get(f"http://127.0.0.1:{port}/checkpoint", params={"origin": "x"}, timeout=10)
        assert still.status_code == 404
    finally:
        server.should_exit = True
        thread.join(timeout=30)


PROTOCOLS = pytest.mark.parametrize("protocol", [HTTP_PROTOCOL, ProblemH11Protocol], ids=lambda p: p.__name__)


class TestEachImplementation:
    """``HTTP_PROTOCOL`` is httptools's where it is installed (as here); the h11 one is
    what uvicorn picks without it. Each serves the witness app in this process."""

    @PROTOCOLS
    def test_a_malformed_request_is_a_400_problem_that_echoes_nothing(
        self, witness_state: WitnessState, protocol: type
    ) -> None:
        with serving(witness_state, protocol) as address:
            for what, request in MALFORMED.items():
                if protocol is ProblemH11Protocol and what == "a control byte in a header value":
                    continue  # h11 hands such a value to the app (NUL it refuses)
                assert_problem_400(exchange(address, request))

    @PROTOCOLS
    def test_a_head_past_the_limit_is_a_431_problem_that_echoes_nothing(
        self, witness_state: WitnessState, protocol: type
    ) -> None:
        with serving(witness_state, protocol) as address:
            assert_heads_are_limited(address, b"/checkpoint?origin=x")
