"""A real ``tellonce serve`` on SQLite whose storage fails under it: a full disk, and
another process holding the database's write lock past the busy timeout.

The full disk is the server process's file-size limit (``RLIMIT_FSIZE``), lowered with
``prlimit`` to just above the sizes its files have once the database is seeded, and lifted
again: a write past it fails with EFBIG, which SQLite reports as it reports ENOSPC's kin
("disk I/O error"). Python ignores SIGXFSZ, so the process lives on, as it would with a
full disk. The server's log is a file under the same limit, and stays under it only if
the refusals do not each log a line.

What is checked: every refusal is a clean 503 problem+json (no data leaves without its
audit entry); a run of refusals logs a line, not a line each; the service recovers by
itself when the space or the lock comes back; no acknowledged write is lost; the database
passes ``PRAGMA integrity_check`` and the audit log verifies as ``tellonce audit verify``
checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.audit.checkpoint import NoteVerifier
from service.audit.service import verify_stored_log
from service.config import Settings
from service.db import SQLITE_BUSY_TIMEOUT_SECONDS, Database
from tests.conftest import server_env
from tests.e2e.test_database_loss import CLIENTS, PROBLEM, PURPOSE
from tests.fixtures.auth import create_clients
from tests.fixtures.databases import (
    SQLITE_PREFIX,
    create_scratch_database,
    drop_scratch_database,
    is_postgres,
)
from tests.fixtures.server import LiveServer, start_server
from tests.records.conftest import RECORDS_POLICIES, apply_policies

pytestmark = pytest.mark.e2e

# What a refusal for an unusable database logs (``service.errors.FailureLog``).
UNAVAILABLE = "database unavailable"


@dataclass
class World:
    server: LiveServer
    http: httpx.AsyncClient
    bearer: dict[str, dict[str, str]]
    database: Database
    path: Path
    citizen_id: str = ""
    # Every answer, by kind of request.
    answers: list[tuple[str, httpx.Response]] = field(default_factory=list)

    def kinds(self) -> dict[str, Callable[[], Awaitable[httpx.Response]]]:
        return {
            "register": lambda: self.http.post(
                "/v1/citizens",
                json={
                    "national_id": f"NI{uuid.uuid4().hex[:10].upper()}",
                    "fields": {"given_name": "Ada", "address": "1 Full Disk Lane"},
                },
                headers=self.bearer["registrar"],
            ),
            "read": lambda: self.http.get(
                f"/v1/citizens/{self.citizen_id}", params=PURPOSE, headers=self.bearer["welfare"]
            ),
            "write": lambda: self.http.patch(
                f"/v1/citizens/{self.citizen_id}/fields",
                json={"fields": {"address": f"{uuid.uuid4().hex[:6]} Lane"}, "reason": "moved"},
                headers=self.bearer["writer"],
            ),
            "audit search": lambda: self.http.get("/v1/audit/entries", headers=self.bearer["auditor"]),
        }

    async def send(self, kind: str) -> httpx.Response:
        answer = await self.kinds()[kind]()
        self.answers.append((kind, answer))
        return answer

    def assert_clean_refusals(self) -> None:
        for kind, answer in self.answers:
            if answer.status_code >= 400:
                assert answer.status_code == 503, f"{kind}: {answer.status_code} {answer.text}"
                assert answer.headers["content-type"].startswith(PROBLEM), answer.text
                assert "Traceback" not in answer.text

    async def wait_until_served(self) -> None:
        """Until every kind of request is served again (the service recovers by itself)."""
        deadline = time.monotonic() + 20
        for kind in self.kinds():
            while (answer := await self.send(kind)).status_code >= 400:
                assert time.monotonic() < deadline, f"{kind} not served again: {answer.text}"
                await asyncio.sleep(0.1)

    async def check_storage(self) -> None:
        """Nothing acknowledged lost, nothing released unaudited, the file intact, the log
        verifying (once the in-process sequencer has signed every entry)."""
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            stored = {row[0] for row in conn.execute("SELECT id FROM citizens")}
            audited = {
                json.loads(canonical).get("request_id")
                for (canonical,) in conn.execute("SELECT canonical FROM audit_entries")
            }
        acknowledged = {
            a.json()["id"] for kind, a in self.answers if kind == "register" and a.status_code == 201
        }
        assert acknowledged <= stored
        released = {
            a.headers["x-request-id"] for kind, a in self.answers if kind == "read" and a.status_code == 200
        }
        assert released <= audited
        deadline = time.monotonic() + 20
        while True:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                signed = conn.execute("SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints").fetchone()[
                    0
                ]
                entries = conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0]
            if signed == entries:
                break
            assert time.monotonic() < deadline, "the sequencer did not catch up"
            await asyncio.sleep(0.1)
        key = await self.http.get("/v1/audit/verifier-key", headers=self.bearer["auditor"])
        assert key.status_code == 200, key.text
        size, _checkpoints = await verify_stored_log(
            self.database.engine.connect, NoteVerifier.parse(key.text)
        )
        assert size == entries
        assert "Traceback" not in self.server.log()


@pytest.fixture
async def world(database_url: str, root_key: str, tmp_path: Path) -> AsyncIterator[World]:
    """``tellonce serve`` (with its in-process sequencer) on a fresh SQLite file with the
    records tests' agreements, and one registered citizen."""
    if is_postgres(database_url):
        pytest.skip("SQLite only: the faults are of SQLite's own file and lock")
    url = await create_scratch_database(database_url)
    (tmp_path / "data").mkdir()
    settings = Settings(env="test", database_url=url, data_dir=tmp_path / "data", root_key=root_key)  # type: ignore[arg-type]
    database = Database(settings)
    try:
        apply_policies(url, RECORDS_POLICIES)
        secrets = await create_clients(database, CLIENTS)
        server = start_server(server_env(url, tmp_path / "data", root_key), tmp_path / "server.log")
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
                bearer = {}
                for name, secret in secrets.items():
                    token = await http.post(
                        "/oauth/token", data={"grant_type": "client_credentials"}, auth=secret
                    )
                    assert token.status_code == 200, token.text
                    bearer[name] = {"Authorization": f"Bearer {token.json()['access_token']}"}
                world = World(server, http, bearer, database, Path(url[len(SQLITE_PREFIX) :]))
                registered = await world.send("register")
                assert registered.status_code == 201, registered.text
                world.citizen_id = registered.json()["id"]
                yield world
        finally:
            server.stop()
    finally:
        await database.dispose()
        await drop_scratch_database(url)


@contextlib.contextmanager
def files_limited(world: World) -> Iterator[None]:
    """The server may not write past the current end of its largest file (a full disk)."""
    files = [world.path, Path(f"{world.path}-wal"), world.server.log_path]
    limit = max(f.stat().st_size for f in files if f.exists()) + 4096
    pid = world.server.process.pid
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class TestDiskFull:
    async def test_clean_503s_one_line_per_run_and_recovery_when_space_returns(self, world: World) -> None:
        with files_limited(world):
            for turn in range(200):
                await world.send(("register", "read", "write", "audit search")[turn % 4])
            refused = {kind for kind, answer in world.answers if answer.status_code == 503}
            assert {"register", "read", "write", "audit search"} <= refused
            world.assert_clean_refusals()
            # A run of refusals is a line or two from each part that met it (the requests,
            # the audit writer, the sequencer), not a line per request or round.
            assert 0 < world.server.log().count(UNAVAILABLE) <= 6, world.server.log()

        await world.wait_until_served()
        world.assert_clean_refusals()
        assert "audit writer: the database is usable again" in world.server.log()
        await world.check_storage()


class TestNotReadyWhileWritesFail:
    """A load balancer takes out a node whose writes fail for a full disk, and puts it back
    once a write succeeds (``errors.FailingWrites``)."""

    async def test_not_ready_while_refused_and_ready_once_a_write_succeeds(self, world: World) -> None:
        assert (await world.http.get("/readyz")).status_code == 200
        with files_limited(world):
            for _ in range(100):
                if (await world.send("register")).status_code == 503:
                    break
            ready = await world.http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.headers["content-type"].startswith(PROBLEM)
            assert ready.headers["retry-after"].isdigit()
            assert "cannot be written" in ready.json()["detail"]
            world.assert_clean_refusals()

        await world.wait_until_served()
        ready = await world.http.get("/readyz")
        assert ready.status_code == 200, ready.text
        await world.check_storage()


class TestLockedByAnotherProcess:
    async def test_refusals_within_the_busy_timeout_then_served_with_no_restart(self, world: World) -> None:
        holder = sqlite3.connect(world.path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            during = asyncio.gather(*(world.send(kind) for kind in world.kinds() for _ in range(3)))
            # Held past the busy timeout, then let go.
            await asyncio.sleep(SQLITE_BUSY_TIMEOUT_SECONDS + 2)
            holder.execute("ROLLBACK")
            await during
            waited = time.monotonic() - started
        finally:
            holder.close()

        # Writes and audited reads waited for the lock, within the busy timeout, and gave up.
        assert {kind for kind, answer in world.answers if answer.status_code == 503} >= {"register", "read"}
        assert waited < SQLITE_BUSY_TIMEOUT_SECONDS * 2.5
        world.assert_clean_refusals()
        await world.wait_until_served()
        await world.check_storage()


class TestFileReplacedUnderneath:
    """SQLite cannot tell an open connection that its file was moved over or deleted: the
    process goes on writing to the old one, which nobody else sees. So the process says it
    is not ready, and the operator restarts it."""

    @pytest.mark.parametrize("replace", ["database restored over it", "write-ahead log deleted"])
    async def test_not_ready_and_says_restart(self, world: World, replace: str) -> None:
        ready = await world.http.get("/readyz")
        assert ready.status_code == 200, ready.text
        if replace == "database restored over it":
            copy = world.path.with_name("copy.db")
            with contextlib.closing(sqlite3.connect(world.path)) as source:
                with contextlib.closing(sqlite3.connect(copy)) as target:
                    source.backup(target)
            copy.replace(world.path)
        else:
            Path(f"{world.path}-wal").unlink()
        for _ in range(2):
            ready = await world.http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.headers["content-type"].startswith(PROBLEM)
            assert "restart the service" in ready.json()["detail"]
        assert world.server.log().count("was replaced or deleted while this process had it open") == 1
