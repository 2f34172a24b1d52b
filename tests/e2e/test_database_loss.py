"""A real ``tellonce serve`` and ``tellonce worker`` losing their PostgreSQL connections.

The loss is made as a database restart, a failover or an administrator makes it: every
backend of the service's database is ended (``pg_terminate_backend``) from a connection of
the test's own. The shared PostgreSQL server itself is never restarted.

What is checked: a connection lost while it sat in a pool costs no request (nothing had
been sent on it, so it is replaced at checkout); a loss under load costs at most a clean
503 problem+json; no acknowledged write is lost; no data leaves without its audit entry
(fail closed); and the worker sequences, checkpoints and delivers on afterwards, with the
log verifying as ``tellonce audit verify`` checks it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.audit.checkpoint import NoteVerifier
from service.audit.service import verify_stored_log
from service.config import Settings
from service.db import Database
from service.events.notifier import PG_CHANNEL
from tests.conftest import server_env
from tests.fixtures.auth import create_clients
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, is_postgres
from tests.fixtures.server import LiveServer, start_server
from tests.records.conftest import RECORDS_POLICIES, apply_policies

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
PURPOSE = {"purpose": "benefit-eligibility"}
CLIENTS = {
    "registrar": ("register", "registrar"),
    "writer": ("register", "writer"),
    "welfare": ("welfare", "consumer"),
    "auditor": ("audit-office", "auditor"),
}
# How long the load loop of a test runs, and how often it ends every backend meanwhile.
LOAD_SECONDS = 6.0
LOSSES = 3


@dataclass
class World:
    """The server, the worker, a client per role, and a connection pool of the test's own."""

    server: LiveServer
    worker: subprocess.Popen[bytes]
    worker_log: Path
    http: httpx.AsyncClient
    secrets: dict[str, tuple[str, str]]
    bearer: dict[str, dict[str, str]]
    database: Database
    url: str

    async def sql(self, query: str, **params: Any) -> list[Any]:
        async with self.database.engine.connect() as conn:
            return list((await conn.execute(text(query), params)).all())

    async def end_every_backend(self) -> None:
        """End every session of the service's database but this one, and wait until they are
        gone (each has then sent its goodbye and closed its socket)."""
        dsn = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            name = make_url(self.url).database
            pids = [
                row["pid"]
                for row in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name
                )
            ]
            assert pids, "the service should hold connections to end"
            await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
            deadline = time.monotonic() + 10
            while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = any($1)", pids):
                assert time.monotonic() < deadline, "the ended backends did not go away"
                await asyncio.sleep(0.02)
        finally:
            await admin.close()
        # The test's own pool lost its connections too; it is not what is under test.
        await self.database.engine.dispose()

    async def token(self, who: str) -> httpx.Response:
        return await self.http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=self.secrets[who]
        )

    async def register(self) -> httpx.Response:
        return await self.http.post(
            "/v1/citizens",
            json={
                "national_id": f"NI{uuid.uuid4().hex[:10].upper()}",
                "fields": {"given_name": "Ada", "address": "1 Loss Lane", "date_of_birth": "1990-01-01"},
            },
            headers=self.bearer["registrar"],
        )

    async def wait_for_worker(self) -> None:
        """Until the worker has sequenced every stored entry and signed a checkpoint of them."""
        unsequenced = "SELECT count(*) FROM audit_entries WHERE id NOT IN (SELECT entry_id FROM audit_leaves)"
        unsigned = (
            "SELECT count(*) FROM audit_leaves"
            " WHERE leaf_index >= (SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints)"
        )
        deadline = time.monotonic() + 20
        while (await self.sql(unsequenced))[0][0] or (await self.sql(unsigned))[0][0]:
            assert time.monotonic() < deadline, f"the worker did not catch up:\n{self.worker_log.read_text()}"
            await asyncio.sleep(0.1)

    async def check_audit(self) -> None:
        """As ``tellonce audit verify`` checks the database: every leaf, column and checkpoint."""
        await self.wait_for_worker()
        key = await self.http.get("/v1/audit/verifier-key", headers=self.bearer["auditor"])
        assert key.status_code == 200, key.text
        size, _checkpoints = await verify_stored_log(
            self.database.engine.connect, NoteVerifier.parse(key.text)
        )
        assert size > 0

    async def audited_request_ids(self) -> set[str]:
        rows = await self.sql("SELECT canonical FROM audit_entries")
        return {json.loads(canonical).get("request_id") for (canonical,) in rows}

    def logs(self) -> str:
        return self.server.log() + self.worker_log.read_text(errors="replace")


@pytest.fixture(scope="module")
async def world(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """``tellonce serve`` (without in-process workers) and ``tellonce worker``, on a fresh
    PostgreSQL database with the records tests' agreements."""
    if not is_postgres(database_url):
        pytest.skip("needs PostgreSQL: its connections are ended from another session (pg_terminate_backend)")
    url = await create_scratch_database(database_url)
    folder = tmp_path_factory.mktemp("dbloss")
    (folder / "data").mkdir()
    env = {**server_env(url, folder / "data", root_key), "TELLONCE_LOG_LEVEL": "INFO"}
    database = Database(Settings(env="test", database_url=url, data_dir=folder / "data", root_key=root_key))  # type: ignore[arg-type]
    worker_log = folder / "worker.log"
    try:
        apply_policies(url, RECORDS_POLICIES)
        secrets = await create_clients(database, CLIENTS)
        server = start_server(env, folder / "server.log", extra_args=("--no-worker",))
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                world = World(server, worker, worker_log, http, secrets, {}, database, url)
                for name in CLIENTS:
                    token = await world.token(name)
                    assert token.status_code == 200, token.text
                    world.bearer[name] = {"Authorization": f"Bearer {token.json()['access_token']}"}
                yield world
        finally:
            server.stop()
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=5)
    finally:
        await database.dispose()
        await drop_scratch_database(url)


def requests_of_each_kind(
    world: World, citizen_id: str, national_id: str
) -> dict[str, Callable[[], Awaitable[httpx.Response]]]:
    welfare, auditor = world.bearer["welfare"], world.bearer["auditor"]
    return {
        "token": lambda: world.token("welfare"),
        "secured read": lambda: world.http.get(f"/v1/citizens/{citizen_id}", params=PURPOSE, headers=welfare),
        "write": lambda: world.http.patch(
            f"/v1/citizens/{citizen_id}/fields",
            json={"fields": {"address": f"{uuid.uuid4().hex[:6]} Loss Lane"}, "reason": "moved"},
            headers=world.bearer["writer"],
        ),
        "register": world.register,
        "lookup": lambda: world.http.post(
            "/v1/citizens/lookup", json={"national_id": national_id, **PURPOSE}, headers=welfare
        ),
        "audit search": lambda: world.http.get("/v1/audit/entries", headers=auditor),
        "feed": lambda: world.http.get("/v1/events", headers=welfare),
        "checkpoint": lambda: world.http.get("/v1/audit/checkpoint", headers=auditor),
    }


class TestConnectionsLostWhileIdle:
    async def test_cross_process_event_wakeups_listen_again(self, world: World) -> None:
        async def listening() -> int:
            found = await world.sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = :listen",
                listen=f'LISTEN "{PG_CHANNEL}"',
            )
            return int(found[0][0])

        async def both_listen(when: str) -> None:
            """The server's feed and the worker's dispatcher each listen, within a deadline."""
            deadline = time.monotonic() + 15
            while await listening() < 2:
                assert time.monotonic() < deadline, f"the event listeners did not connect {when}"
                await asyncio.sleep(0.1)

        await both_listen("at start")
        await world.end_every_backend()
        await both_listen("again")

    async def test_every_kind_of_request_is_served_and_the_worker_carries_on(self, world: World) -> None:
        national_id = f"NI{uuid.uuid4().hex[:10].upper()}"
        registered = await world.http.post(
            "/v1/citizens",
            json={"national_id": national_id, "fields": {"given_name": "Ada", "address": "1 Loss Lane"}},
            headers=world.bearer["registrar"],
        )
        assert registered.status_code == 201, registered.text
        citizen_id = registered.json()["id"]
        await world.check_audit()
        signed_before = (await world.sql("SELECT max(tree_size) FROM audit_checkpoints"))[0][0]

        await world.end_every_backend()

        # Nothing had been sent on the lost connections: each is replaced at checkout, and
        # not one request fails for it.
        for kind, send in requests_of_each_kind(world, citizen_id, national_id).items():
            answer = await send()
            assert answer.status_code < 400, f"{kind}: {answer.status_code} {answer.text}"
        # The worker sequences and signs what came after, and the log verifies.
        await world.check_audit()
        assert (await world.sql("SELECT max(tree_size) FROM audit_checkpoints"))[0][0] > signed_before
        assert "Traceback" not in world.logs()


class TestConnectionsLostUnderLoad:
    async def test_only_clean_503s_no_lost_write_and_nothing_released_unaudited(self, world: World) -> None:
        registered = await world.register()
        assert registered.status_code == 201, registered.text
        citizen_id = registered.json()["id"]
        welfare = world.bearer["welfare"]
        answers: list[tuple[str, httpx.Response]] = []
        stop = asyncio.Event()

        async def load(n: int) -> None:
            kinds: list[tuple[str, Callable[[], Awaitable[httpx.Response]]]] = [
                ("register", world.register),
                (
                    "read",
                    lambda: world.http.get(f"/v1/citizens/{citizen_id}", params=PURPOSE, headers=welfare),
                ),
                ("token", lambda: world.token("welfare")),
            ]
            turn = n
            while not stop.is_set():
                kind, send = kinds[turn % len(kinds)]
                answers.append((kind, await send()))
                turn += 1

        loaders = [asyncio.create_task(load(n)) for n in range(12)]
        try:
            for _loss in range(LOSSES):
                await asyncio.sleep(LOAD_SECONDS / (LOSSES + 1))
                await world.end_every_backend()
            await asyncio.sleep(LOAD_SECONDS / (LOSSES + 1))
        finally:
            stop.set()
            await asyncio.gather(*loaders)

        assert len(answers) > 100
        for kind, answer in answers:
            if answer.status_code >= 400:
                assert answer.status_code == 503, f"{kind}: {answer.status_code} {answer.text}"
                assert answer.headers["content-type"].startswith(PROBLEM), answer.text
                assert "Traceback" not in answer.text
        # Every acknowledged registration is stored.
        acknowledged = {a.json()["id"] for kind, a in answers if kind == "register" and a.status_code == 201}
        stored = {str(row[0]) for row in await world.sql("SELECT id FROM citizens")}
        assert acknowledged <= stored
        # Fail closed: every read that released data has its audit entry.
        released = {
            a.headers["x-request-id"] for kind, a in answers if kind == "read" and a.status_code == 200
        }
        assert released
        assert released <= await world.audited_request_ids()
        await world.check_audit()
        # The service recovered by itself.
        after = await world.http.get(f"/v1/citizens/{citizen_id}", params=PURPOSE, headers=welfare)
        assert after.status_code == 200, after.text
        assert "Traceback" not in world.logs()
