"""Finding 6 (issue #20): ``audit verify`` passed a truncated or emptied log.

An operator who deletes the newest entries together with their leaves, nodes and the
checkpoints that signed them leaves a log that is internally consistent. Verification
must then be anchored outside the log: a checkpoint an auditor kept
(``--trusted-checkpoint``), a size it must reach (``--min-size``), and by default an
empty log, or one with no checkpoint, does not pass.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.cli import export_bundle, verify_bundle, verify_database
from service.audit.observed import verify_for_auditor
from service.audit.verify import Expectations, StoredCheckpoint, VerificationFailed
from service.audit.writer import AuditWriter
from service.db import create_engine
from tests.fixtures.audit import make_entry, make_sequencer, make_signer, sequence_all
from tests.fixtures.databases import settings_on

ENTRIES = 12
KEPT = 7


@pytest.fixture
async def sealed(scratch_database: str) -> AsyncIterator[tuple[str, AsyncEngine, NoteSigner, list[int]]]:
    engine = create_engine(scratch_database)
    signer = make_signer()
    writer = AuditWriter(engine)
    await writer.start()
    ids = await writer.append_many([make_entry(request_id=f"f6-{i}") for i in range(ENTRIES)])
    await writer.stop()
    await sequence_all(make_sequencer(engine, signer, every=4))  # checkpoints at 7 and 12
    yield scratch_database, engine, signer, ids
    await engine.dispose()


async def _drop_triggers(engine: AsyncEngine) -> None:
    tables = ("audit_entries", "audit_leaves", "audit_nodes", "audit_checkpoints")
    async with engine.begin() as conn:
        for table in tables:
            if engine.dialect.name == "postgresql":
                await conn.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
            else:
                await conn.execute(text(f"DROP TRIGGER {table}_no_delete"))


async def _truncate(engine: AsyncEngine, ids: list[int], keep: int) -> None:
    """Cut the log back to ``keep`` leaves, removing everything that mentions the rest."""
    await _drop_triggers(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_leaves WHERE leaf_index >= :k"), {"k": keep})
        await conn.execute(text('DELETE FROM audit_nodes WHERE level = 0 AND "index" >= :k'), {"k": keep})
        await conn.execute(text("DELETE FROM audit_checkpoints WHERE tree_size > :k"), {"k": keep})
        if keep:
            await conn.execute(text("DELETE FROM audit_entries WHERE id > :last"), {"last": ids[keep - 1]})
        else:
            await conn.execute(text("DELETE FROM audit_entries"))
            await conn.execute(text("DELETE FROM audit_nodes"))
        await conn.execute(
            text(
                "UPDATE audit_sequencer SET tree_size = :k, last_entry_id = :last, last_checkpoint_size = :c"
            ),
            {"k": keep, "last": ids[keep - 1] if keep else 0, "c": keep if keep >= KEPT else 0},
        )


def _cli(url: str, signer: NoteSigner, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLONCE_")}
    env |= {"TELLONCE_DATABASE_URL": url, "TELLONCE_ENV": "test"}
    command = [sys.executable, "-m", "service.cli", "audit", "verify", "--key", signer.verifier_key(), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


class TestTruncatedLog:
    async def test_trusted_checkpoint_catches_truncation(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, ids = sealed
        async with engine.connect() as conn:
            kept_note = (
                await conn.execute(
                    text("SELECT note FROM audit_checkpoints WHERE tree_size = :n"), {"n": ENTRIES}
                )
            ).scalar_one()
        trusted = tmp_path / "trusted-checkpoint.txt"
        trusted.write_text(kept_note)
        await _truncate(engine, ids, KEPT)
        # Internally consistent: without an outside anchor it still verifies.
        verifier = NoteVerifier.parse(signer.verifier_key())
        assert await verify_database(settings_on(url), verifier) == KEPT
        result = _cli(url, signer, "--trusted-checkpoint", str(trusted))
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"signs size {ENTRIES} but the log holds only {KEPT} leaves" in result.stderr
        result = _cli(url, signer, "--min-size", str(ENTRIES))
        assert result.returncode == 1
        assert f"holds {KEPT} leaves, fewer than the {ENTRIES} required" in result.stderr
        # Offline too: the bundle of the truncated log against the kept checkpoint.
        bundle = tmp_path / "bundle.jsonl"
        await export_bundle(settings_on(url), signer, bundle)
        opened = verifier.open_checkpoint(kept_note)
        expectations = Expectations(
            trusted=(StoredCheckpoint(opened.size, opened.root_hash, kept_note, "kept"),)
        )
        with pytest.raises(VerificationFailed, match="entries were removed"):
            verify_bundle(bundle, verifier, expectations)

    async def test_a_trusted_checkpoint_of_another_history_fails(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, _engine, signer, _ids = sealed
        forged = tmp_path / "other.txt"
        forged.write_text(signer.sign(f"{signer.name}\n{KEPT}\n{'A' * 43}=\n"))
        result = _cli(url, signer, "--trusted-checkpoint", str(forged))
        assert result.returncode == 1
        # The log's own checkpoint of that size matched its leaves: two signed histories.
        assert "are both signed for size 7 with different roots: the log forked" in result.stderr

    @pytest.mark.parametrize("content", [b"\xff\xfe not text", None])
    async def test_a_trusted_checkpoint_file_that_cannot_be_read_is_a_usage_error(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path, content: bytes | None
    ) -> None:
        # Not UTF-8, or not there: one line and exit 2 (no verdict on the log), no traceback.
        url, _engine, signer, _ids = sealed
        path = tmp_path / "kept.txt"
        if content is not None:
            path.write_bytes(content)
        result = _cli(url, signer, "--trusted-checkpoint", str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"--trusted-checkpoint: cannot read {path}: ")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    async def test_an_intact_log_passes_with_its_anchors(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, _ids = sealed
        async with engine.connect() as conn:
            note = (
                await conn.execute(
                    text("SELECT note FROM audit_checkpoints WHERE tree_size = :n"), {"n": KEPT}
                )
            ).scalar_one()
        trusted = tmp_path / "trusted.txt"
        trusted.write_text(note)
        result = _cli(url, signer, "--trusted-checkpoint", str(trusted), "--min-size", str(ENTRIES))
        assert result.returncode == 0, result.stderr
        assert f"{ENTRIES} entries" in result.stdout


class TestEmptiedLog:
    async def test_an_emptied_log_fails_unless_allowed(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]]
    ) -> None:
        url, engine, signer, ids = sealed
        await _truncate(engine, ids, 0)
        result = _cli(url, signer)
        assert result.returncode == 1
        assert "the log is empty" in result.stderr
        allowed = _cli(url, signer, "--allow-empty")
        assert allowed.returncode == 0, allowed.stderr

    async def test_a_log_without_checkpoints_fails_unless_allowed(self, scratch_database: str) -> None:
        engine = create_engine(scratch_database)
        signer = make_signer()
        writer = AuditWriter(engine)
        await writer.start()
        await writer.append_many([make_entry() for _ in range(3)])
        await writer.stop()
        await sequence_all(make_sequencer(engine, signer, every=1000))
        await engine.dispose()
        verifier = NoteVerifier.parse(signer.verifier_key())
        with pytest.raises(VerificationFailed, match="holds no signed checkpoint"):
            await verify_database(settings_on(scratch_database), verifier)
        assert (
            await verify_database(settings_on(scratch_database), verifier, Expectations(allow_empty=True))
            == 3
        )


class TestConsoleVerifyNow:
    """The console's "verify now" anchors on the largest checkpoint an auditor verified."""

    async def test_a_log_truncated_after_an_auditor_verified_it_fails(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]]
    ) -> None:
        _url, engine, signer, ids = sealed
        verifier = NoteVerifier.parse(signer.verifier_key())
        first = await verify_for_auditor(engine.connect, engine.begin, verifier, "audit-office-auditor")
        assert (first.size, first.anchored_at) == (ENTRIES, None)
        again = await verify_for_auditor(engine.connect, engine.begin, verifier, "audit-office-auditor")
        assert again.anchored_at == ENTRIES
        await _truncate(engine, ids, KEPT)
        with pytest.raises(
            VerificationFailed, match=f"size {ENTRIES} an auditor verified on .* entries were removed"
        ):
            await verify_for_auditor(engine.connect, engine.begin, verifier, "audit-office-auditor")

    async def test_a_checkpoint_signed_during_the_check_does_not_lose_the_record(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]]
    ) -> None:
        # The server's sequencer keeps signing while verify now runs (its own audit entry
        # among the new leaves). The record is the largest checkpoint this run matched, not
        # whatever is newest once it ends (which the run did not check, and was skipped).
        _url, engine, signer, _ids = sealed
        verifier = NoteVerifier.parse(signer.verifier_key())

        @contextlib.asynccontextmanager
        async def begin_after_growth() -> AsyncIterator[AsyncConnection]:
            writer = AuditWriter(engine)
            await writer.start()
            await writer.append_many([make_entry(request_id=f"f6-late-{i}") for i in range(4)])
            await writer.stop()
            await sequence_all(make_sequencer(engine, signer, every=1))
            async with engine.begin() as conn:
                yield conn

        first = await verify_for_auditor(engine.connect, begin_after_growth, verifier, "audit-office-auditor")
        assert (first.size, first.anchored_at) == (ENTRIES, None)
        again = await verify_for_auditor(engine.connect, engine.begin, verifier, "audit-office-auditor")
        assert again.anchored_at == ENTRIES
        assert again.size == ENTRIES + 4

    async def test_an_emptied_log_fails_once_an_auditor_has_seen_it(
        self, sealed: tuple[str, AsyncEngine, NoteSigner, list[int]]
    ) -> None:
        _url, engine, signer, ids = sealed
        verifier = NoteVerifier.parse(signer.verifier_key())
        await verify_for_auditor(engine.connect, engine.begin, verifier, "audit-office-auditor")
        await _truncate(engine, ids, 0)
        with pytest.raises(VerificationFailed, match="holds only 0 leaves"):
            await verify_for_auditor(engine.connect, engine.begin, verifier, "audit-office-auditor")
