"""TELLONCE_DB_POOL_RECYCLE_SECONDS: on PostgreSQL, a pooled connection older than that is
replaced at its next checkout, in every pool the service keeps (SQLAlchemy's engines and
the raw asyncpg pools), so one a firewall forgot while it sat idle is never used."""

from __future__ import annotations

import ast
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.audit import cli as audit_cli
from service.audit.checkpoint import NoteVerifier
from service.audit.service import _sequencer_engine, make_sequencer
from service.audit.verify import Expectations
from service.config import Settings
from service.db import Database, PostgresReads, asyncpg_dsn, engine_for
from service.events import notifier as wakeups
from service.events.dispatcher import run_dispatcher
from service.events.notifier import PG_CHANNEL, EventNotifier, postgres_wakeups
from tests.fixtures.audit import make_signer
from tests.fixtures.databases import is_postgres

SERVICE = Path(__file__).resolve().parent.parent / "service"


def _engine_pid(engine: AsyncEngine) -> Callable[[], Awaitable[int]]:
    async def pid() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    return pid


def _reads_pid(reads: PostgresReads) -> Callable[[], Awaitable[int]]:
    async def pid() -> int:
        [(found,)] = await reads.rows("SELECT pg_backend_pid()")
        return int(found)

    return pid


async def _listeners(admin: asyncpg.Connection) -> set[int]:
    """The server processes listening for event wake-ups on ``admin``'s database."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
        f'LISTEN "{PG_CHANNEL}"',
    )
    return {int(row["pid"]) for row in rows}


def _listener_pid(dsn: str) -> Callable[[], Awaitable[int]]:
    async def pid() -> int:
        admin = await asyncpg.connect(dsn)
        try:
            while not (found := await _listeners(admin)):
                await asyncio.sleep(0.05)
            return min(found)
        finally:
            await admin.close()

    return pid


async def _waiting(notifier: EventNotifier) -> asyncio.Task[bool]:
    """A waiter on ``notifier`` (for up to 30 seconds), once it waits."""
    waiter = asyncio.create_task(notifier.wait(30))
    while not notifier._waiters:
        await asyncio.sleep(0)
    return waiter


async def _replaced(pid: Callable[[], Awaitable[int]], deadline: float = 30.0) -> bool:
    """Whether the pool behind ``pid`` (statements one at a time, so on the connections it
    already has) comes to answer from a server process it did not have at first."""
    first = {await pid() for _ in range(3)}
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        if await pid() not in first:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
def recycling(settings: Settings, scratch_database: str) -> Settings:
    if not is_postgres(scratch_database):
        pytest.skip("needs PostgreSQL: its pools' connections are recycled; SQLite keeps no pool to recycle")
    return settings.model_copy(
        update={"database_url": scratch_database, "db_pool_recycle_seconds": 1, "run_workers": False}
    )


class TestSetting:
    def test_defaults_to_three_minutes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("TELLONCE_DB_POOL_RECYCLE_SECONDS", raising=False)
        assert Settings().db_pool_recycle_seconds == 180

    @pytest.mark.parametrize("value", ["-1", "soon", "86401", "1.5"])
    def test_refuses_what_is_not_a_number_of_seconds_up_to_a_day(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TELLONCE_DB_POOL_RECYCLE_SECONDS", value)
        with pytest.raises(ValueError, match="db_pool_recycle_seconds"):
            Settings()

    def test_every_engine_of_the_service_is_made_from_the_settings(self) -> None:
        """Every engine the service makes is made by ``engine_for``, which applies the pool
        settings: no module calls ``create_engine`` (with or without ``settings.database_url``:
        a command handed the URL alone, as ``tellonce audit`` was, loses them too)."""
        found = []
        for path in sorted(SERVICE.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            # engine_for's own call is the one allowed.
            allowed = {
                id(call)
                for function in ast.walk(tree)
                if isinstance(function, ast.FunctionDef) and function.name == "engine_for"
                for call in ast.walk(function)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and id(node) not in allowed
                    and ast.unparse(node.func).split(".")[-1] == "create_engine"
                ):
                    found.append(f"{path.relative_to(SERVICE.parent)}:{node.lineno}")
        assert found == []


class TestOnPostgres:
    async def test_an_engine_replaces_a_connection_older_than_the_setting(self, recycling: Settings) -> None:
        engine = engine_for(recycling)
        try:
            assert await _replaced(_engine_pid(engine))
        finally:
            await engine.dispose()

    async def test_the_raw_pool_replaces_its_kept_connections_too(self, recycling: Settings) -> None:
        """asyncpg closes idle connections above ``min_size`` only: the ones it keeps are
        expired by the pool's own timer."""
        reads = await PostgresReads.open(
            asyncpg_dsn(recycling.database_url), min_size=2, max_size=2, recycle_seconds=1
        )
        try:
            assert await _replaced(_reads_pid(reads))
        finally:
            await reads.close()

    async def test_the_apps_pools_get_it(self, recycling: Settings) -> None:
        """The request engine, the audit writer's engine, the raw-driver reads and the
        connection that listens for event wake-ups."""
        app = create_app(recycling)
        async with app.router.lifespan_context(app):
            database: Database = app.state.database
            assert await _replaced(_engine_pid(database.engine))
            assert await _replaced(_engine_pid(app.state.audit_writer.engine))
            assert await _replaced(_reads_pid(app.state.driver_reads))
            assert await _replaced(_listener_pid(asyncpg_dsn(recycling.database_url)))

    async def test_the_workers_event_listener_gets_it(self, recycling: Settings) -> None:
        """``tellonce worker``'s dispatcher listens for wake-ups on a connection of its own."""
        stop = asyncio.Event()
        worker = asyncio.create_task(run_dispatcher(recycling, stop))
        try:
            assert await _replaced(_listener_pid(asyncpg_dsn(recycling.database_url)))
        finally:
            stop.set()
            await worker

    async def test_the_sequencers_engine_and_idle_probe_get_it(self, recycling: Settings) -> None:
        engine = _sequencer_engine(recycling)
        try:
            assert await _replaced(_engine_pid(engine))
            assert make_sequencer(recycling, engine).config.pool_recycle_seconds == 1
        finally:
            await engine.dispose()

    async def test_the_audit_commands_engines_get_it(
        self, recycling: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """``tellonce audit export`` and ``audit verify`` read through the server's engine."""
        made: list[AsyncEngine] = []

        def recorded(settings: Settings, **kwargs: Any) -> AsyncEngine:
            made.append(engine_for(settings, **kwargs))
            return made[-1]

        monkeypatch.setattr(audit_cli, "engine_for", recorded)
        signer = make_signer()
        assert await audit_cli.export_bundle(recycling, signer, tmp_path / "bundle.jsonl") == 0
        verifier = NoteVerifier.parse(signer.verifier_key())
        assert await audit_cli.verify_database(recycling, verifier, Expectations(allow_empty=True)) == 0
        assert len(made) == 2
        for engine in made:
            try:
                assert await _replaced(_engine_pid(engine))
            finally:
                await engine.dispose()

    async def test_the_event_listener_is_replaced_without_missing_a_wake_up(
        self, recycling: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A commit just before the new connection listens (heard by the old one only) and one
        while both listen each wake the waiters; then the new connection hears commits alone."""
        admin = await asyncpg.connect(asyncpg_dsn(recycling.database_url))
        notifier = EventNotifier()
        swapped = asyncio.Event()
        listen, close = wakeups._listen, wakeups._close

        async def listen_after_a_commit(dsn: str, notifier: EventNotifier) -> asyncpg.Connection | None:
            if swapped.is_set():
                return None  # one replacement: the next periods keep the new connection
            await admin.execute(f"NOTIFY {PG_CHANNEL}")
            return await listen(dsn, notifier)

        async def close_after_a_commit(connection: asyncpg.Connection) -> None:
            await admin.execute(f"NOTIFY {PG_CHANNEL}")
            await close(connection)
            swapped.set()

        try:
            async with postgres_wakeups(recycling.database_url, notifier, recycle_seconds=1):
                [first] = await _listeners(admin)
                woken = await _waiting(notifier)
                monkeypatch.setattr(wakeups, "_listen", listen_after_a_commit)
                monkeypatch.setattr(wakeups, "_close", close_after_a_commit)
                await asyncio.wait_for(swapped.wait(), 30)
                assert await woken
                async with asyncio.timeout(30):
                    while first in (now := await _listeners(admin)):
                        await asyncio.sleep(0.05)
                assert len(now) == 1
                woken = await _waiting(notifier)
                generation = notifier.generation
                await admin.execute(f"NOTIFY {PG_CHANNEL}")
                assert await woken
                assert notifier.generation == generation + 1
        finally:
            await admin.close()
