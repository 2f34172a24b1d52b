"""The restore drill of docs/operations.md, run for real.

A demo government is built on a scratch database (citizens, agreements, clients, an audit
log with signed checkpoints). Its database is then backed up as the runbook says
(`pg_dump` on PostgreSQL, SQLite's online backup API on SQLite) and restored into a fresh,
empty database. With the same data directory (root key, checkpoint key, signing keys),
`tellonce audit verify` must pass on the restored copy and a department must read a citizen
through the API, decrypted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import DEMO_POLICIES
from tests.fixtures.databases import (
    SQLITE_PREFIX,
    create_scratch_database,
    drop_scratch_database,
    is_postgres,
)
from tests.fixtures.server import free_port, start_server

pytestmark = pytest.mark.e2e


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def back_up_and_restore(source: str, target: str, folder: Path) -> None:
    """The runbook's commands: a plain-SQL dump replayed with psql, or SQLite's backup API."""
    if is_postgres(source):
        dump = folder / "tellonce.sql"
        subprocess.run(
            ["pg_dump", "--no-owner", "--no-privileges", "--file", str(dump), libpq_url(source)],
            check=True,
            timeout=300,
        )
        subprocess.run(
            ["psql", "--quiet", "-v", "ON_ERROR_STOP=1", "--file", str(dump), libpq_url(target)],
            check=True,
            timeout=300,
            capture_output=True,
        )
        return
    with (
        sqlite3.connect(source.removeprefix(SQLITE_PREFIX)) as live,
        sqlite3.connect(target.removeprefix(SQLITE_PREFIX)) as copy,
    ):
        live.backup(copy)


@pytest.fixture(scope="module")
async def restored(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Path, dict[str, str]]]:
    source = await create_scratch_database(database_url)
    target = await create_scratch_database(database_url, migrate=False)
    workdir = tmp_path_factory.mktemp("restore")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TELLONCE_")}
    env.update(
        {
            "TELLONCE_ENV": "development",
            "TELLONCE_DATABASE_URL": source,
            "TELLONCE_DATA_DIR": str(workdir / ".tellonce"),
            "TELLONCE_POLICIES_DIR": str(DEMO_POLICIES),
        }
    )
    try:
        command = ["demo", "--citizens", "20", "--duration", "2", "--exit-after-report"]
        demo = subprocess.run(
            [sys.executable, "-m", "service.cli", *command, "--port", str(free_port())],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        back_up_and_restore(source, target, workdir)
        yield target, workdir, {**env, "TELLONCE_DATABASE_URL": target}
    finally:
        await drop_scratch_database(source)
        await drop_scratch_database(target)


class TestRestoreDrill:
    def test_audit_verifies_on_the_restored_copy(self, restored: tuple[str, Path, dict[str, str]]) -> None:
        _target, workdir, env = restored
        verified = subprocess.run(
            [sys.executable, "-m", "service.cli", "audit", "verify"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "verified" in verified.stdout + verified.stderr

    def test_a_department_reads_a_citizen_from_the_restored_copy(
        self, restored: tuple[str, Path, dict[str, str]]
    ) -> None:
        _target, workdir, env = restored
        data_dir = workdir / ".tellonce"
        clients = json.loads((data_dir / "clients.json").read_text())
        citizen_id = json.loads((data_dir / "population.json").read_text())["ids"][0]
        server = start_server({**env, "TELLONCE_LOG_LEVEL": "WARNING"}, workdir / "restored.log", timeout=90)
        try:
            dvla = clients["systems"]["dvla"]
            token = httpx.post(
                f"{server.base_url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(dvla["client_id"], dvla["client_secret"]),
                timeout=10,
            )
            assert token.status_code == 200, token.text
            read = httpx.get(
                f"{server.base_url}/v1/citizens/{citizen_id}",
                params={"fields": "address,postcode", "purpose": "licence-administration"},
                headers={"Authorization": f"Bearer {token.json()['access_token']}"},
                timeout=10,
            )
        finally:
            server.stop()
        assert read.status_code == 200, read.text
        fields = read.json()["fields"]
        assert fields["postcode"]["value"]
        assert fields["address"]["value"]
