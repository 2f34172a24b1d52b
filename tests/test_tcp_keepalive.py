"""TCP keepalives on every PostgreSQL connection: a server gone without a word (a partition,
a middlebox that forgot the connection) is noticed within about a minute, read back from
the sockets of the engines', the raw pool's and the event listener's connections (on
PostgreSQL), and from a loopback socket given ``keep_alive`` (on both passes).

No black-hole test: a user-space proxy that stops forwarding still has its kernel answer
the probes; only dropping packets (a firewall rule, needing root) would make one."""

from __future__ import annotations

import socket
from typing import Any

import asyncpg
import pytest

from service.config import Settings
from service.db import (
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    KEEPALIVE_PROBES,
    TCP_USER_TIMEOUT_SECONDS,
    PostgresReads,
    asyncpg_dsn,
    engine_for,
    keep_alive,
)
from service.events import notifier as wakeups
from service.events.notifier import EventNotifier
from tests.fixtures.databases import is_postgres

# On Linux, where the tests run: the options ``keep_alive`` sets there.
EXPECTED = {
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): 1,
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): KEEPALIVE_IDLE_SECONDS,
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): KEEPALIVE_INTERVAL_SECONDS,
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): KEEPALIVE_PROBES,
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT): TCP_USER_TIMEOUT_SECONDS * 1000,
}


def _options(connection: Any) -> dict[tuple[int, int], int]:
    """The keepalive options of an asyncpg connection's socket, as the kernel has them."""
    sock = connection._transport.get_extra_info("socket")
    assert sock.family in (socket.AF_INET, socket.AF_INET6), "the tests' server is reached over TCP"
    return _socket_options(sock)


def _socket_options(sock: socket.socket) -> dict[tuple[int, int], int]:
    return {(level, name): sock.getsockopt(level, name) for level, name in EXPECTED}


class TestKeepAlive:
    """``keep_alive`` itself, on both passes: a TCP socket on loopback gets the options, a
    Unix-domain one (nothing to probe) is left as it is."""

    def test_a_tcp_socket_gets_every_option(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            with socket.create_connection(server.getsockname()) as sock:
                assert _socket_options(sock)[(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] == 0
                keep_alive(sock)
                assert _socket_options(sock) == EXPECTED

    def test_a_unix_socket_is_left_alone(self) -> None:
        first, second = socket.socketpair(socket.AF_UNIX)
        with first, second:
            keep_alive(first)
            assert first.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.fixture
def postgres(settings: Settings, scratch_database: str) -> Settings:
    if not is_postgres(scratch_database):
        pytest.skip("needs PostgreSQL: these read back the sockets of its connections; SQLite has none")
    return settings.model_copy(update={"database_url": scratch_database})


class TestOnPostgres:
    async def test_the_engines_connections(self, postgres: Settings) -> None:
        engine = engine_for(postgres)
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                assert _options(raw.driver_connection) == EXPECTED
        finally:
            await engine.dispose()

    async def test_the_raw_pools_connections(self, postgres: Settings) -> None:
        reads = await PostgresReads.open(asyncpg_dsn(postgres.database_url), min_size=2, max_size=2)
        try:
            async with reads.pool.acquire() as first, reads.pool.acquire() as second:
                assert _options(first) == EXPECTED
                assert _options(second) == EXPECTED
        finally:
            await reads.close()

    async def test_the_event_listeners_connection(self, postgres: Settings) -> None:
        listening: asyncpg.Connection | None = await wakeups._listen(
            asyncpg_dsn(postgres.database_url), EventNotifier()
        )
        assert listening is not None
        try:
            assert _options(listening) == EXPECTED
        finally:
            await listening.close()
