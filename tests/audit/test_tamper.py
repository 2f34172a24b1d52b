"""Tamper evidence: an attacker with database access (the test drops the triggers) is caught
by `tellonce audit verify`, against the database and against an exported bundle."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.cli import export_bundle, verify_bundle, verify_database
from service.audit.models import AuditEntryRow
from service.audit.verify import VerificationFailed
from service.audit.verify_pages import Parallel
from service.audit.writer import FILTER_COLUMNS, AuditWriter
from service.db import create_engine
from tests.fixtures.audit import make_entry, make_sequencer, make_signer, sequence_all
from tests.fixtures.databases import settings_on

ENTRIES = 12


@pytest.fixture
async def sealed_log(scratch_database: str) -> AsyncIterator[tuple[str, AsyncEngine, NoteSigner, list[int]]]:
    """A scratch log of 12 entries, sequenced, with a checkpoint every 4 entries."""
    engine = create_engine(scratch_database)
    signer = make_signer()
    writer = AuditWriter(engine)
    await writer.start()
    ids = await writer.append_many([make_entry(request_id=f"t-{i}") for i in range(ENTRIES)])
    await writer.stop()
    sequencer = make_sequencer(engine, signer, every=4)
    await sequence_all(sequencer)
    yield scratch_database, engine, signer, ids
    await engine.dispose()


async def _drop_triggers(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for table in ("audit_entries", "audit_leaves", "audit_nodes", "audit_checkpoints"):
                await conn.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
        else:
            for table in ("audit_entries", "audit_leaves", "audit_nodes", "audit_checkpoints"):
                await conn.execute(text(f"DROP TRIGGER {table}_no_update"))
                await conn.execute(text(f"DROP TRIGGER {table}_no_delete"))


def _in_pages(url: str) -> Parallel:
    """Worker processes checking pages of 4 leaves (the checkpoints fall at 7, inside the
    page of leaves 4 to 7, and at 12, the end of the last page)."""
    return Parallel(url, workers=2, page=4, from_size=0)


async def _expect_failure(url: str, signer: NoteSigner, tmp_path: Path, expected: str) -> None:
    verifier = NoteVerifier.parse(signer.verifier_key())
    with pytest.raises(VerificationFailed, match=expected) as in_process:
        await verify_database(settings_on(url), verifier)
    # Worker processes checking pages apart name the same first problem, word for word.
    with pytest.raises(VerificationFailed) as in_pages:
        await verify_database(settings_on(url), verifier, parallel=_in_pages(url))
    assert str(in_pages.value) == str(in_process.value)
    bundle = tmp_path / "bundle.jsonl"
    await export_bundle(settings_on(url), signer, bundle)
    with pytest.raises(VerificationFailed, match=expected):
        verify_bundle(bundle, verifier)


class TestTamperEvidence:
    async def test_an_intact_log_verifies(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, _engine, signer, _ids = sealed_log
        verifier = NoteVerifier.parse(signer.verifier_key())
        assert await verify_database(settings_on(url), verifier) == ENTRIES
        assert await verify_database(settings_on(url), verifier, parallel=_in_pages(url)) == ENTRIES
        bundle = tmp_path / "bundle.jsonl"
        bundle.write_text("an older file, world-readable")
        bundle.chmod(0o644)
        assert await export_bundle(settings_on(url), signer, bundle) == ENTRIES
        assert verify_bundle(bundle, verifier) == ENTRIES
        # Who looked at which citizen, and why: readable by the operator alone, as a key is.
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
        kinds = [json.loads(line)["type"] for line in bundle.read_text().splitlines()]
        assert kinds[0] == "bundle"
        assert kinds.count("entry") == ENTRIES
        sizes = [
            json.loads(line)["tree_size"]
            for line in bundle.read_text().splitlines()[1:]
            if '"checkpoint"' in line
        ]
        # Rounds of 7 (the test sequencer's batch), a checkpoint once 4 or more are new.
        assert sizes == [7, 12]

    async def test_a_tampered_row_is_named(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, ids = sealed_log
        await _drop_triggers(engine)
        victim = ids[5]
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE audit_entries SET canonical = replace(canonical, '\"permit\"', '\"deny\"') "
                    "WHERE id = :id"
                ),
                {"id": victim},
            )
        await _expect_failure(url, signer, tmp_path, f"entry {victim} at leaf 5 no longer matches")

    async def test_a_row_changed_with_its_leaf_hash_is_found_by_the_checkpoint(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, ids = sealed_log
        await _drop_triggers(engine)
        async with engine.begin() as conn:
            canonical = (
                await conn.execute(text("SELECT canonical FROM audit_entries WHERE id = :id"), {"id": ids[5]})
            ).scalar_one()
            changed = canonical.replace("officer-17", "officer-99")
            await conn.execute(
                text("UPDATE audit_entries SET canonical = :c WHERE id = :id"), {"c": changed, "id": ids[5]}
            )
            await conn.execute(
                text('UPDATE audit_nodes SET hash = :h WHERE level = 0 AND "index" = 5'),
                {"h": hashlib.sha256(b"\x00" + changed.encode()).digest()},
            )
        # Only the checkpoint at 7 can tell; in pages of 4 it falls inside leaves 4 to 7.
        await _expect_failure(url, signer, tmp_path, "size 7.*the root of leaves 0..6 does not match")

    async def test_a_deleted_row_is_named(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, ids = sealed_log
        await _drop_triggers(engine)
        victim = ids[3]
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_entries WHERE id = :id"), {"id": victim})
        await _expect_failure(url, signer, tmp_path, f"entry {victim} at leaf 3 has been deleted")

    async def test_a_deleted_leaf_is_found(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, _ids = sealed_log
        await _drop_triggers(engine)
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_leaves WHERE leaf_index = 11"))
        await _expect_failure(
            url,
            signer,
            tmp_path,
            f"entry {_ids[11]} was sequenced but its leaf has been removed|signs size 12 but",
        )

    async def test_a_reordered_pair_is_named(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, ids = sealed_log
        await _drop_triggers(engine)
        first, second = ids[6], ids[7]
        async with engine.begin() as conn:
            # Swap which entry each leaf points at: the pair now appears in the other order.
            await conn.execute(text("UPDATE audit_leaves SET entry_id = -1 WHERE leaf_index = 6"))
            await conn.execute(
                text("UPDATE audit_leaves SET entry_id = :a WHERE leaf_index = 7"), {"a": first}
            )
            await conn.execute(
                text("UPDATE audit_leaves SET entry_id = :b WHERE leaf_index = 6"), {"b": second}
            )
        await _expect_failure(url, signer, tmp_path, f"entry {second} at leaf 6 no longer matches")

    async def test_a_forged_checkpoint_is_named(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, _ids = sealed_log
        forger = make_signer()
        note = forger.sign(f"{signer.name}\n12\n{'A' * 43}=\n")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO audit_checkpoints (tree_size, root_hash, note, created_at) "
                    "VALUES (12, :r, :n, CURRENT_TIMESTAMP)"
                ),
                {"r": b"\x00" * 32, "n": note},
            )
        await _expect_failure(url, signer, tmp_path, "checkpoint .*no signature")

    async def test_cli_exits_1_naming_the_entry(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path
    ) -> None:
        url, engine, signer, ids = sealed_log
        await _drop_triggers(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE audit_entries SET canonical = replace(canonical, 'officer-17', 'officer-99') "
                    "WHERE id = :id"
                ),
                {"id": ids[0]},
            )
        env = {"TELLONCE_DATABASE_URL": url, "TELLONCE_ENV": "test", "TELLONCE_DATA_DIR": str(tmp_path)}
        command = [sys.executable, "-m", "service.cli", "audit", "verify", "--key", signer.verifier_key()]
        result = subprocess.run(
            command, env={**_base_env(), **env}, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 1, result.stderr
        assert f"entry {ids[0]} at leaf 0 no longer matches" in result.stderr
        bundle = tmp_path / "b.jsonl"
        await export_bundle(settings_on(url), signer, bundle)
        offline = [
            sys.executable,
            "-m",
            "service.cli",
            "audit",
            "verify",
            "--bundle",
            str(bundle),
            "--key",
            signer.verifier_key(),
        ]
        # Offline: no database reachable at all.
        no_db = {**_base_env(), "TELLONCE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
        result = subprocess.run(offline, env=no_db, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1, result.stderr
        assert f"entry {ids[0]} at leaf 0 no longer matches" in result.stderr


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TELLONCE_")}


# One changed value per filter column: the canonical entry (and its leaf) stay intact, so
# only re-deriving the column from the entry notices.
TAMPERED_COLUMNS = {
    "time": datetime(2020, 1, 1, tzinfo=UTC),
    "client_id": "someone-else",
    "department": "revenue",
    "citizen_id": "c-other",
    "action": "lookup",
    "decision": "deny",
    "purpose": "other-purpose",
    "owners": ",hmrc,",
    "fields": ",address,",
}


class TestFilterColumns:
    def test_every_filter_column_is_covered(self) -> None:
        assert set(TAMPERED_COLUMNS) == set(FILTER_COLUMNS)

    @pytest.mark.parametrize("column", sorted(TAMPERED_COLUMNS))
    async def test_a_changed_column_is_named(
        self, sealed_log: tuple[str, AsyncEngine, NoteSigner, list[int]], tmp_path: Path, column: str
    ) -> None:
        url, engine, signer, ids = sealed_log
        await _drop_triggers(engine)
        victim = ids[5]
        async with engine.begin() as conn:
            await conn.execute(
                update(AuditEntryRow)
                .where(AuditEntryRow.id == victim)
                .values({column: TAMPERED_COLUMNS[column]})
            )
        await _expect_failure(
            url, signer, tmp_path, f"entry {victim} at leaf 5: the stored column '{column}' differs"
        )
