from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from service.app import create_app
from service.cli import _run_workers
from service.config import Settings
from service.db import create_engine
from service.heap import GEN0_THRESHOLD
from service.observability import _RequestIds
from service.schema import SchemaGate, upgrade_async
from service.sqlite_turns import WriteTurns
from tests.conftest import server_env
from tests.fixtures.server import LiveServer, start_server


class TestHealth:
    async def test_healthz(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["x-request-id"]

    async def test_readyz_when_migrated(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready"}

    async def test_readyz_refuses_an_unmigrated_database(self, settings: Settings, tmp_path: object) -> None:
        unmigrated = settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{tmp_path}/empty.db"})
        app: FastAPI = create_app(unmigrated)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/readyz")
        await app.state.database.dispose()
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "tellonce db upgrade" in response.json()["detail"]

    @pytest.mark.parametrize(
        ("revision", "status"),
        [
            # A newer release migrated it: under the additive policy this release serves on
            # it, so a rolling upgrade keeps the old processes in the load balancer.
            ("0099_from_a_newer_release", 200),
            # An older revision this code knows: it needs `tellonce db upgrade`.
            ("0018_webhook_secret_rotation", 503),
        ],
    )
    async def test_readyz_on_a_schema_of_another_release(
        self, settings: Settings, tmp_path: object, revision: str, status: int
    ) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path}/other.db"
        await upgrade_async(url)
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        try:
            gate = SchemaGate(engine, first_delay=0.01, max_delay=0.02)
            stop = asyncio.Event()
            waiting = asyncio.create_task(gate.wait(stop))
            await asyncio.sleep(0.1)
            stop.set()
            # The background work starts on the newer schema, and waits on the older one.
            assert await waiting is (status == 200)
        finally:
            await engine.dispose()
        app: FastAPI = create_app(settings.model_copy(update={"database_url": url}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/readyz")
        await app.state.database.dispose()
        assert response.status_code == status, response.text

    async def test_metrics_count_requests_by_route(self, client: httpx.AsyncClient) -> None:
        await client.get("/healthz")
        await client.get("/healthz")
        response = await client.get("/metrics")
        assert response.status_code == 200
        text = response.text
        assert 'tellonce_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
        assert "tellonce_http_request_duration_seconds_bucket" in text

    async def test_a_page_of_an_included_router_is_counted_at_the_path_it_is_served_at(
        self, client: httpx.AsyncClient
    ) -> None:
        # Declared as /agreements in a router the console includes under /console.
        await client.get("/console/agreements")
        text = (await client.get("/metrics")).text
        assert re.search(r'tellonce_http_requests_total\{method="GET",route="/console/agreements",', text)
        assert 'route="/agreements"' not in text

    async def test_request_id_is_echoed_when_valid(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": "abc12345-trace"})
        assert response.headers["x-request-id"] == "abc12345-trace"
        bad = await client.get("/healthz", headers={"X-Request-ID": "<script>"})
        assert bad.headers["x-request-id"] != "<script>"

    def test_new_request_ids_are_random_hex_and_a_forked_child_draws_its_own(self) -> None:
        ids = _RequestIds()
        drawn = [ids() for _ in range(3 * _RequestIds.BLOCK)]
        assert all(re.fullmatch(r"[0-9a-f]{32}", made) for made in drawn)
        assert len(set(drawn)) == len(drawn)
        reading, writing = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            os.write(writing, ids().encode())
            os._exit(0)
        os.close(writing)
        in_child = os.read(reading, 64).decode()
        os.close(reading)
        os.waitpid(child, 0)
        assert re.fullmatch(r"[0-9a-f]{32}", in_child)
        assert in_child != ids()


@pytest.mark.e2e
def _readonly_write(path: Path) -> None:
    """A write SQLite refuses as the storage's doing (SQLITE_READONLY), as it refuses one to a
    full disk or a failing one."""
    sqlite3.connect(path).close()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        connection.execute("CREATE TABLE t (x)")


async def _no_turn_to_write() -> None:
    """The process's SQLite write queue out of time: its writers are busy, not its storage."""
    turns = WriteTurns(asyncio.get_running_loop())
    await turns.take(1)
    await turns.take(0)


class TestReadyWhileWritesFail:
    """``/readyz`` is 503 while the storage refuses writes; a request refused for a lost
    connection, a pool or write queue out of time leaves a node that reads its database
    ready (``errors.FailingWrites``): a balancer must not take a healthy replica out for
    one client's 503."""

    @pytest.mark.parametrize(
        ("failure", "ready"),
        [
            ("storage refused", 503),
            # PostgreSQL refusing writes: its disk full, out of memory, read-only.
            ("DiskFullError", 503),
            ("OutOfMemoryError", 503),
            ("ReadOnlySQLTransactionError", 503),
            ("connection reset", 200),
            ("connection invalidated", 200),
            ("pool out of time", 200),
            ("write queue out of time", 200),
        ],
    )
    async def test_after_a_refused_request(
        self, app: FastAPI, client: httpx.AsyncClient, tmp_path: Path, failure: str, ready: int
    ) -> None:
        async def fail() -> None:
            if failure == "storage refused":
                _readonly_write(tmp_path / "readonly.db")
            elif failure.endswith("Error"):
                # As SQLAlchemy raises it: the driver's error as the cause of its own.
                refusal = getattr(asyncpg.exceptions, failure)("the server refused the write")
                raise sa_exc.OperationalError("INSERT ...", None, refusal) from refusal
            elif failure == "connection reset":
                raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            elif failure == "connection invalidated":
                lost = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
                raise sa_exc.DBAPIError("INSERT ...", None, lost, connection_invalidated=True)
            elif failure == "pool out of time":
                raise sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached")
            else:
                await _no_turn_to_write()

        app.add_api_route("/test/failing-write", fail, methods=["POST"])
        refused = await client.post("/test/failing-write")
        assert refused.status_code == 503, refused.text
        response = await client.get("/readyz")
        assert response.status_code == ready, response.text

    @pytest.mark.postgres
    async def test_after_a_write_a_read_only_postgresql_refused(
        self, app: FastAPI, client: httpx.AsyncClient, on_postgres: bool
    ) -> None:
        """A real refusal (SQLSTATE 25006), as a hot standby answers after a failover."""
        if not on_postgres:
            pytest.skip("needs PostgreSQL: the refusal is PostgreSQL's read-only transaction")

        async def write_refused() -> None:
            async with app.state.database.engine.connect() as connection:
                await connection.execute(text("SET TRANSACTION READ ONLY"))
                await connection.execute(text("CREATE TEMPORARY TABLE refused (x integer)"))

        app.add_api_route("/test/read-only-write", write_refused, methods=["POST"])
        refused = await client.post("/test/read-only-write")
        assert refused.status_code == 503, refused.text
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith("The database cannot be written just now")


class TestLiveServer:
    def test_serves_healthz_and_readyz(self, live_server: LiveServer) -> None:
        assert httpx.get(f"{live_server.base_url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{live_server.base_url}/readyz").status_code == 200

    def test_every_line_of_the_log_is_json_uvicorns_own_too(
        self, scratch_database: str, tmp_path: Path, root_key: str
    ) -> None:
        """The README: "Logs are JSON lines on standard error". uvicorn's start-up and
        shut-down lines ("Started server process", "Shutting down") are among them, so that
        a log shipper reading JSON lines meets no other kind."""
        env = {**server_env(scratch_database, tmp_path, root_key), "TELLONCE_LOG_LEVEL": "INFO"}
        server = start_server(env, tmp_path / "server.log")
        try:
            assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        finally:
            server.stop()
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        messages = {(line["logger"], line["message"].split(" [")[0]) for line in lines}
        assert ("uvicorn.error", "Started server process") in messages, lines
        assert ("uvicorn.error", "Finished server process") in messages, lines
        assert all("request_id" in line for line in lines)


class TestServingHeap:
    async def test_a_serving_process_freezes_its_startup_heap_and_collects_less_often(
        self, settings: Settings, scratch_database: str
    ) -> None:
        """`tellonce serve` sets ``freeze_startup_heap``: once started, what startup made is
        out of the collector's reach and the youngest generation is collected at
        ``GEN0_THRESHOLD`` net allocations instead of Python's 700."""
        before = gc.get_threshold()
        application = create_app(
            settings.model_copy(
                update={"database_url": scratch_database, "run_workers": False, "freeze_startup_heap": True}
            )
        )
        try:
            async with application.router.lifespan_context(application):
                assert gc.get_freeze_count() > 0
                assert gc.get_threshold() == (GEN0_THRESHOLD, *before[1:])
        finally:
            gc.set_threshold(*before)
            gc.unfreeze()


class TestWorkerHeap:
    async def test_a_worker_freezes_its_startup_heap_and_collects_less_often(
        self, settings: Settings, scratch_database: str
    ) -> None:
        """`tellonce worker` sets ``freeze_startup_heap`` too: its access-notice rounds
        parse a thousand audit entries at a time, which set off collections of the whole
        heap at Python's thresholds. SIGTERM stops it, as it would a deployed worker."""
        before = gc.get_threshold()
        frozen = gc.get_freeze_count()
        task = asyncio.create_task(
            _run_workers(
                settings.model_copy(update={"database_url": scratch_database, "freeze_startup_heap": True})
            )
        )
        try:
            deadline = time.monotonic() + 20
            while gc.get_freeze_count() == frozen:
                assert not task.done(), task
                assert time.monotonic() < deadline, "the worker did not freeze its heap"
                await asyncio.sleep(0.01)
            assert gc.get_threshold() == (GEN0_THRESHOLD, *before[1:])
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, timeout=20)
            gc.set_threshold(*before)
            gc.unfreeze()


class TestPlainLogLines:
    """``TELLONCE_LOG_JSON=false``: each plain line still carries the request id that the
    answer's ``X-Request-ID`` gives, as each JSON line does."""

    def test_a_plain_line_names_its_request_id(self) -> None:
        import logging

        from service.observability import TextFormatter, _request_id

        record = logging.makeLogRecord({"name": "tellonce.access", "msg": "request", "levelname": "INFO"})
        token = _request_id.set("req-7f3a0001")
        try:
            line = TextFormatter().format(record)
        finally:
            _request_id.reset(token)
        assert line.endswith(" request request_id=req-7f3a0001"), line
        record.request_id = "given-7f3a"
        assert TextFormatter().format(record).count("request_id=") == 1
