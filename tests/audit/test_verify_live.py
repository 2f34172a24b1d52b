"""The console's "verify now": the full check, bounded to the size read when it starts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.service import verify_stored_log as verify_log
from service.audit.verify import VerificationFailed
from service.audit.writer import AuditWriter
from service.db import create_engine
from tests.fixtures.audit import make_entry, make_sequencer, make_signer, sequence_all


@pytest.fixture
async def log(scratch_database: str) -> AsyncIterator[tuple[AsyncEngine, NoteSigner, list[int]]]:
    """12 entries, sequenced, a checkpoint every 4."""
    engine = create_engine(scratch_database)
    signer = make_signer()
    writer = AuditWriter(engine)
    await writer.start()
    ids = await writer.append_many([make_entry(request_id=f"v-{i}") for i in range(12)])
    await writer.stop()
    await sequence_all(make_sequencer(engine, signer, every=4))
    yield engine, signer, ids
    await engine.dispose()


class TestVerifyNow:
    async def test_an_intact_log_verifies(self, log: tuple[AsyncEngine, NoteSigner, list[int]]) -> None:
        engine, signer, _ids = log
        assert await verify_log(engine.connect, NoteVerifier.parse(signer.verifier_key())) == (12, 2)

    async def test_leaves_added_while_it_runs_are_left_for_next_time(
        self, log: tuple[AsyncEngine, NoteSigner, list[int]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine, signer, _ids = log
        writer = AuditWriter(engine)
        await writer.start()
        await writer.append_many([make_entry(request_id=f"late-{i}") for i in range(3)])
        await writer.stop()
        await sequence_all(make_sequencer(engine, signer, every=1000))

        # The size as it was read at the start, before the last three were sequenced.
        async def size_at_start(_db: AsyncConnection) -> int:
            return 12

        monkeypatch.setattr(audit_repository, "tree_size", size_at_start)
        assert await verify_log(engine.connect, NoteVerifier.parse(signer.verifier_key())) == (12, 2)

    async def test_a_changed_entry_is_named(self, log: tuple[AsyncEngine, NoteSigner, list[int]]) -> None:
        engine, signer, ids = log
        async with engine.begin() as conn:
            # An attacker with database access first removes the append-only triggers.
            if engine.dialect.name == "postgresql":
                await conn.execute(text("DROP TRIGGER audit_entries_append_only ON audit_entries"))
            else:
                await conn.execute(text("DROP TRIGGER audit_entries_no_update"))
            await conn.execute(
                text("UPDATE audit_entries SET canonical = replace(canonical, 'v-5', 'v-X') WHERE id = :id"),
                {"id": ids[5]},
            )
        with pytest.raises(VerificationFailed, match=f"entry {ids[5]} at leaf 5 no longer matches"):
            await verify_log(engine.connect, NoteVerifier.parse(signer.verifier_key()))
