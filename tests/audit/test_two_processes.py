"""Two `tellonce serve` processes on one database, each running its sequencer, while two
more processes append concurrently: the log ends with no gaps, no duplicates, and every
checkpoint valid."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteVerifier
from service.audit.cli import verify_database
from service.audit.config import load_signer
from service.audit.models import AuditEntryRow, AuditLeaf
from service.config import Settings
from service.db import create_engine
from tests.audit.append_load import append
from tests.audit.conftest import poll
from tests.conftest import REPO_ROOT, server_env
from tests.fixtures.audit import ORIGIN
from tests.fixtures.databases import settings_on
from tests.fixtures.server import start_server

PER_PROCESS = 400


@pytest.mark.e2e
class TestTwoProcesses:
    async def test_racing_sequencers_keep_one_gapless_log(
        self, scratch_database: str, tmp_path: Path, root_key: str
    ) -> None:
        data = tmp_path / "data"
        data.mkdir()
        # The signing key exists before either server starts, so both sign with it.
        signer = load_signer(Settings(env="test", data_dir=data, database_url=scratch_database), ORIGIN)
        env = server_env(scratch_database, data, root_key) | {
            "TELLONCE_AUDIT_ORIGIN": ORIGIN,
            "TELLONCE_AUDIT_SEQUENCER_POLL_MS": "5",
            "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "20",
            "TELLONCE_AUDIT_SEQUENCER_BATCH": "37",
        }
        # Both servers start at once (each takes seconds to import on a loaded machine).
        servers = list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(start_server, env, tmp_path / f"server-{n}.log", timeout=90)
                    for n in range(2)
                )
            )
        )
        try:
            # Two writers in two processes: a subprocess and this test's own event loop.
            loader = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.audit.append_load",
                scratch_database,
                str(PER_PROCESS),
                "loader-0",
                cwd=REPO_ROOT,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            appended_here, (out, err) = await asyncio.gather(
                append(scratch_database, PER_PROCESS, "loader-1"),
                asyncio.wait_for(loader.communicate(), timeout=120),
            )
            assert loader.returncode == 0, err.decode()
            assert int(out) == PER_PROCESS
            assert appended_here == PER_PROCESS
            total = 2 * PER_PROCESS
            engine = create_engine(scratch_database)
            try:

                async def all_sequenced_and_sealed() -> bool:
                    async with engine.connect() as conn:
                        size = await audit_repository.tree_size(conn)
                        latest = await audit_repository.latest_checkpoint(conn)
                    return size == total and latest is not None and latest.tree_size == total

                await poll(all_sequenced_and_sealed, timeout=60)
                async with engine.connect() as conn:
                    leaves = (await conn.execute(select(AuditLeaf.leaf_index, AuditLeaf.entry_id))).all()
                    entries = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar()
                    checkpoints = await audit_repository.all_checkpoints(conn)
            finally:
                await engine.dispose()
            assert entries == total
            assert sorted(leaf for leaf, _ in leaves) == list(range(total))
            assert len({entry for _, entry in leaves}) == total
            assert len(checkpoints) > 1
            # Recompute the whole tree and check every checkpoint's signature and root.
            assert (
                await verify_database(
                    settings_on(scratch_database), NoteVerifier.parse(signer.verifier_key())
                )
                == total
            )
            for server in servers:
                assert server.process.poll() is None, server.log()
        finally:
            for server in servers:
                server.stop()
        for server in servers:
            assert "Traceback" not in server.log(), server.log()
