"""A client that drips a request is answered 408 and let go (``service.read_deadline``).

Over a raw socket to a real server: a connection that sends nothing, a head or a body
that stops short, each gets the service's 408 problem+json and the connection closes;
a request read whole is not cut off however long its connection then stays. For each
HTTP/1.1 implementation uvicorn may pick, and for ``tellonce serve`` with its setting.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from service import read_deadline
from service.witness.cosignature import CosignatureSigner
from service.witness.server import create_witness_app
from service.witness.state import TrustedLog, WitnessState
from tests.conftest import server_env
from tests.fixtures.server import free_port, start_server
from tests.fixtures.tlog import MemoryLog

pytestmark = pytest.mark.e2e

# Short, so the refusals come quickly; the tests wait for them, never time them.
DEADLINE = 0.3
CHECKPOINT = b"GET /checkpoint?origin=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SHORT = {
    "nothing at all": b"",
    "part of a head": b"GET /checkpoint?origin=x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Wait: a",
    "part of a body": (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nold 1\n"
    ),
    "part of a second request": CHECKPOINT + b"GET /checkpoint?origin=x HTTP/1.1\r\n",
}


class QuickH11(read_deadline.DeadlineH11Protocol):
    read_timeout = DEADLINE


PROTOCOLS: list[type] = [QuickH11]
if hasattr(read_deadline, "DeadlineHttpToolsProtocol"):

    class QuickHttpTools(read_deadline.DeadlineHttpToolsProtocol):
        read_timeout = DEADLINE

    PROTOCOLS.append(QuickHttpTools)


def exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection (it must, within
    the socket's timeout, far past the deadline)."""
    with socket.create_connection(address, timeout=20) as sock:
        sock.sendall(request)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def last_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """The status line, header fields and body of the last response in ``raw``."""
    start = raw.rfind(b"HTTP/1.1 ")
    head, _, body = raw[start:].partition(b"\r\n\r\n")
    status, *lines = head.decode("ascii").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status, headers, body


def assert_problem_408(raw: bytes) -> None:
    status, headers, body = last_response(raw)
    assert status == "HTTP/1.1 408 Request Timeout", raw
    assert headers["content-type"] == "application/problem+json", raw
    assert headers["connection"] == "close", raw
    assert int(headers["content-length"]) == len(body), raw
    problem = json.loads(body)
    assert problem["type"] == "https://tellonce.example/problems/request-timeout"
    assert problem["status"] == 408
    assert set(problem) == {"type", "title", "status", "detail"}


@pytest.fixture
def witness_state(tmp_path: Path) -> Iterator[WitnessState]:
    log_vkey = MemoryLog.new().signer.verifier_key()
    signer = CosignatureSigner.generate("audit-office.example/witness")
    state = WitnessState(tmp_path / "state.db", signer, [TrustedLog.parse(log_vkey)])
    yield state
    state.close()


@contextmanager
def serve(app: ASGIApp, protocol: type) -> Iterator[tuple[str, int]]:
    """``app`` served in this process with ``protocol``."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=protocol, lifespan="off", log_level="error"
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
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.__name__)
def protocol(request: pytest.FixtureRequest) -> type:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def serving(protocol: type, witness_state: WitnessState) -> Iterator[tuple[str, int]]:
    """The witness app served in this process with a 0.3 s read deadline."""
    with serve(create_witness_app(witness_state), protocol) as address:
        yield address


# Far more than the socket buffers of both ends hold.
LARGE = 16 * 1024 * 1024


def large_answer(gone: threading.Event) -> ASGIApp:
    """An app answering every request with ``LARGE`` bytes, a megabyte at a time, that sets
    ``gone`` once it has sent them all: while the client reads none of them, only a
    connection the server let go lets it (the server drops what is sent after)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await receive()
        headers = [(b"content-length", str(LARGE).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = b"x" * (1024 * 1024)
        for _ in range(LARGE // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        gone.set()

    return app


class TestEachImplementation:
    @pytest.mark.parametrize("request_bytes", SHORT.values(), ids=SHORT.keys())
    def test_a_request_that_stops_short_is_a_408_problem_and_closed(
        self, serving: tuple[str, int], request_bytes: bytes
    ) -> None:
        raw = exchange(serving, request_bytes)
        assert_problem_408(raw)
        if request_bytes.startswith(CHECKPOINT):
            # The first request, read whole, was answered as usual before.
            assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n"), raw

    def test_a_request_read_whole_is_not_cut_off(self, serving: tuple[str, int]) -> None:
        with socket.create_connection(serving, timeout=20) as sock:
            for _ in range(2):
                sock.sendall(CHECKPOINT)
                answer = sock.recv(65536)
                assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n"), answer
                # Idle past the read deadline (within uvicorn's keep-alive of 5 s): the
                # connection is still there for the next request.
                time.sleep(DEADLINE * 3)

    def test_an_answer_nobody_reads_is_dropped_and_the_connection_closed(self, protocol: type) -> None:
        gone = threading.Event()
        with serve(large_answer(gone), protocol) as address, socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(address)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            # Nothing read: the server lets the connection go rather than keep the answer.
            assert gone.wait(timeout=20), "the server still holds the unread answer"


class TestServe:
    def test_serve_answers_a_silent_connection_408_after_its_setting(
        self, scratch_database: str, tmp_path: Path, root_key: str
    ) -> None:
        data = tmp_path / "data"
        data.mkdir()
        env = {**server_env(scratch_database, data, root_key), "TELLONCE_REQUEST_READ_TIMEOUT_SECONDS": "0.5"}
        server = start_server(env, tmp_path / "server.log")
        try:
            host, _, port = server.base_url.removeprefix("http://").partition(":")
            assert_problem_408(exchange((host, int(port)), b"GET /healthz HTTP/1.1\r\nHost: a\r\n"))
        finally:
            server.stop()
