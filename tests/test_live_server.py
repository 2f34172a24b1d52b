"""The live-server fixture when another process holds the port it picked.

``make test`` runs two pytest passes side by side, each starting servers on ports from
``free_port``; one pass may take a port the other picked before that server binds it.
Here a stand-in server answering ``/healthz`` holds the port.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import server_env
from tests.fixtures import server as server_fixture
from tests.fixtures.server import PortTaken, free_port, listens_on, refused_port, start_server


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok","stand_in":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[int]:
    """Another process's server, answering 200 on every path, on a loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
class TestPortTaken:
    def test_a_given_port_held_by_another_server_is_not_taken_for_ours(
        self, stand_in: int, scratch_database: str, tmp_path: Path, root_key: str
    ) -> None:
        env = server_env(scratch_database, tmp_path, root_key)
        with pytest.raises(PortTaken, match="address already in use"):
            start_server(env, tmp_path / "server.log", port=stand_in, timeout=60)

    def test_a_chosen_port_taken_meanwhile_is_chosen_again(
        self,
        stand_in: int,
        scratch_database: str,
        tmp_path: Path,
        root_key: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        picks = iter([stand_in])
        monkeypatch.setattr(server_fixture, "free_port", lambda: next(picks, None) or free_port())
        server = start_server(
            server_env(scratch_database, tmp_path, root_key), tmp_path / "server.log", timeout=60
        )
        try:
            assert server.base_url != f"http://127.0.0.1:{stand_in}"
            answer = httpx.get(f"{server.base_url}/healthz", timeout=10)
            assert answer.status_code == 200
            assert "stand_in" not in answer.json()
        finally:
            server.stop()


class TestListensOn:
    def test_only_the_process_holding_the_listening_socket(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            assert not listens_on(os.getpid(), port)
            sock.listen()
            assert listens_on(os.getpid(), port)
            assert not listens_on(os.getppid(), port)

    def test_a_refused_port_refuses_and_cannot_be_taken(self) -> None:
        with refused_port() as port:
            with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
                pass
            with socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError, match="in use"):
                    other.bind(("127.0.0.1", port))
