"""The sequencer: consecutive leaves in commit order, stored nodes, signed checkpoints."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import merkle, proofs
from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteVerifier
from service.audit.errors import AuditQueryInvalid, LeafNotFound, NoCheckpoint
from service.audit.models import AuditLeaf
from service.audit.schemas import canonical_json
from service.audit.sequencer import Sequencer, SequencerConfig
from service.audit.writer import AuditWriter
from service.db import PostgresReads, create_engine
from tests.fixtures.audit import make_entry, make_sequencer, make_signer, sequence_all


@pytest.fixture
async def scratch_engine(scratch_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(scratch_database)
    yield engine
    await engine.dispose()


async def _append(engine: AsyncEngine, count: int) -> list[int]:
    writer = AuditWriter(engine)
    await writer.start()
    try:
        return await writer.append_many([make_entry(request_id=f"seq-{i}") for i in range(count)])
    finally:
        await writer.stop()


def _then_sequenced(
    function: Callable[[AsyncConnection], Awaitable[Any]], sequencer: Sequencer
) -> Callable[[AsyncConnection], Awaitable[Any]]:
    """``function``, after whose answer ``sequencer`` sequences all that has committed: a
    sequencer of another process, racing the caller."""

    async def then_sequenced(conn: AsyncConnection) -> Any:
        answer = await function(conn)
        await sequence_all(sequencer)
        return answer

    return then_sequenced


class TestSequencer:
    async def test_leaves_are_consecutive_and_proofs_verify(self, scratch_engine: AsyncEngine) -> None:
        signer = make_signer()
        sequencer = make_sequencer(scratch_engine, signer, every=10)
        ids = await _append(scratch_engine, 25)
        await sequence_all(sequencer)
        async with scratch_engine.connect() as conn:
            leaves = (
                await conn.execute(
                    select(AuditLeaf.leaf_index, AuditLeaf.entry_id).order_by(AuditLeaf.leaf_index)
                )
            ).all()
            assert [leaf for leaf, _ in leaves] == list(range(25))
            assert [entry for _, entry in leaves] == ids
            checkpoints = await audit_repository.all_checkpoints(conn)
            verifier = NoteVerifier.parse(signer.verifier_key())
            sizes = [verifier.open_checkpoint(note).size for _id, _s, _r, note in checkpoints]
            assert sizes == [size for _id, size, _r, _n in checkpoints]
            assert sizes[0] >= 10
            latest = verifier.open_checkpoint(await proofs.checkpoint_note(conn))
            for index in (0, 7, latest.size - 1):
                proof = await proofs.inclusion(conn, index, latest.size)
                leaf = merkle.leaf_hash(canonical_json(proof["entry"]).encode())
                assert base64.b64decode(proof["leaf_hash"]) == leaf
                hashes = [base64.b64decode(h) for h in proof["hashes"]]
                assert merkle.verify_inclusion(leaf, index, latest.size, hashes, latest.root_hash)
            first = verifier.open_checkpoint(checkpoints[0][3])
            consistency = await proofs.consistency(conn, first.size, latest.size)
            hashes = [base64.b64decode(h) for h in consistency["hashes"]]
            assert merkle.verify_consistency(
                first.size, latest.size, hashes, first.root_hash, latest.root_hash
            )

    async def test_a_new_sequencer_continues_the_tree(self, scratch_engine: AsyncEngine) -> None:
        signer = make_signer()
        await _append(scratch_engine, 5)
        await sequence_all(make_sequencer(scratch_engine, signer, every=1))
        await _append(scratch_engine, 6)
        # Another process's sequencer: it must rebuild the right edge from stored nodes.
        await sequence_all(make_sequencer(scratch_engine, signer, every=1))
        async with scratch_engine.connect() as conn:
            size = await audit_repository.tree_size(conn)
            note = await proofs.checkpoint_note(conn)
            nodes = await audit_repository.read_nodes(conn, [(0, i) for i in range(size)])
        compact = merkle.CompactRange()
        for i in range(size):
            compact.append(nodes[(0, i)])
        assert size == 11
        assert NoteVerifier.parse(signer.verifier_key()).open_checkpoint(note).root_hash == compact.root()

    async def test_a_round_raced_by_another_sequencer_writes_nothing(
        self, scratch_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        signer = make_signer()
        first = make_sequencer(scratch_engine, signer, every=3)
        second = make_sequencer(scratch_engine, signer, every=3)
        ids = await _append(scratch_engine, 5)
        # Another process sequences the same entries while this round computes.
        monkeypatch.setattr(first, "_prepare", _then_sequenced(first._prepare, second))
        assert await first.run_once() == 0
        monkeypatch.undo()
        ids += await _append(scratch_engine, 4)
        await sequence_all(first)  # continues from the state the other left

        async with scratch_engine.connect() as conn:
            leaves = (
                await conn.execute(
                    select(AuditLeaf.leaf_index, AuditLeaf.entry_id).order_by(AuditLeaf.leaf_index)
                )
            ).all()
            nodes = await audit_repository.read_nodes(conn, [(0, i) for i in range(len(ids))])
            checkpoints = await audit_repository.all_checkpoints(conn)
        assert [leaf for leaf, _ in leaves] == list(range(9))
        assert [entry for _, entry in leaves] == ids
        verifier = NoteVerifier.parse(signer.verifier_key())
        compact = merkle.CompactRange()
        roots = {}
        for i in range(len(ids)):
            compact.append(nodes[(0, i)])
            roots[compact.size] = compact.root()
        assert checkpoints
        for _id, size, _root, note in checkpoints:
            assert verifier.open_checkpoint(note).root_hash == roots[size]

    async def test_a_checkpoint_signed_during_a_proof_request_is_not_refused(
        self, scratch_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sequencer = make_sequencer(scratch_engine, make_signer(), every=1)
        await _append(scratch_engine, 3)
        await sequence_all(sequencer)
        await _append(scratch_engine, 2)
        # The sequencer adds the new entries and signs a checkpoint over them right after
        # the proof's request read the tree's size.
        monkeypatch.setattr(
            audit_repository, "tree_size", _then_sequenced(audit_repository.tree_size, sequencer)
        )
        async with scratch_engine.connect() as conn:
            proof = await proofs.inclusion(conn, 0, None)
        assert proof["leaf_index"] == 0
        assert proof["tree_size"] == 3
        monkeypatch.undo()
        async with scratch_engine.connect() as conn:
            assert (await proofs.inclusion(conn, 0, None))["tree_size"] == 5

    async def test_bad_proof_requests_are_refused(self, scratch_engine: AsyncEngine) -> None:
        async with scratch_engine.connect() as conn:
            with pytest.raises(NoCheckpoint):
                await proofs.checkpoint_note(conn)
        await _append(scratch_engine, 3)
        await sequence_all(make_sequencer(scratch_engine, make_signer(), every=1))
        async with scratch_engine.connect() as conn:
            with pytest.raises(AuditQueryInvalid):
                await proofs.inclusion(conn, 0, 4)
            with pytest.raises(LeafNotFound):
                await proofs.inclusion(conn, 3, 3)
            with pytest.raises(AuditQueryInvalid):
                await proofs.consistency(conn, 2, 1)
            with pytest.raises(AuditQueryInvalid):
                await proofs.consistency(conn, 1, 9)


class TestIdleRounds:
    """The sequencer's loop runs no round while nothing that a round reads has changed
    since a round that found nothing to do: on a SQLite file it watches the WAL index's
    commit marker, on PostgreSQL it asks one statement. A commit of any connection wakes it."""

    @staticmethod
    async def _until(condition: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not await condition():
            assert time.monotonic() < deadline, "the sequencer did not get there in time"
            await asyncio.sleep(0.01)

    async def test_on_a_sqlite_file(
        self, sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await self._no_round_runs_until_a_commit_and_an_owed_checkpoint_is_still_signed(
            sqlite_engine, monkeypatch
        )

    async def test_on_the_suites_database(
        self, scratch_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await self._no_round_runs_until_a_commit_and_an_owed_checkpoint_is_still_signed(
            scratch_engine, monkeypatch
        )

    async def test_without_a_connection_for_the_probe_every_poll_runs_a_round(
        self, scratch_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, on_postgres: bool
    ) -> None:
        if not on_postgres:
            pytest.skip("needs PostgreSQL: the probe is PostgreSQL's; SQLite reads its commit marker")

        async def refused(*_args: Any, **_kwargs: Any) -> None:
            raise OSError("connection refused")

        monkeypatch.setattr(PostgresReads, "open", refused)
        signer = make_signer()
        config = SequencerConfig(origin=signer.name, checkpoint_every=1, poll_interval=0.01)
        sequencer = Sequencer(scratch_engine, signer, config)
        stop = asyncio.Event()
        task = asyncio.create_task(sequencer.run(stop))
        try:
            await _append(scratch_engine, 2)

            async def sequenced() -> bool:
                async with scratch_engine.connect() as conn:
                    return await audit_repository.tree_size(conn) == 2

            await self._until(sequenced)
        finally:
            stop.set()
            await task

    async def _no_round_runs_until_a_commit_and_an_owed_checkpoint_is_still_signed(
        self, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        signer = make_signer()
        # A checkpoint only by time: after the first entry is sequenced, rounds go on
        # until one is due, though nothing but the sequencer itself commits meanwhile.
        config = SequencerConfig(
            origin=signer.name, checkpoint_every=1000, checkpoint_interval=0.3, poll_interval=0.01
        )
        sequencer = Sequencer(engine, signer, config)
        rounds = 0
        run_once = sequencer.run_once

        async def counted() -> int:
            nonlocal rounds
            rounds += 1
            return await run_once()

        monkeypatch.setattr(sequencer, "run_once", counted)

        async def checkpointed(size: int) -> bool:
            """Whether the latest checkpoint is of ``size`` entries."""
            async with engine.connect() as conn:
                try:
                    note = await proofs.checkpoint_note(conn)
                except NoCheckpoint:
                    return False
            return NoteVerifier.parse(signer.verifier_key()).open_checkpoint(note).size == size

        stop = asyncio.Event()
        task = asyncio.create_task(sequencer.run(stop))
        try:
            await _append(engine, 1)
            await self._until(lambda: checkpointed(1))
            await asyncio.sleep(0.1)  # the round after the checkpoint's commit settles
            settled = rounds
            await asyncio.sleep(0.5)  # fifty polls
            assert rounds == settled, "rounds ran with nothing committed"
            # A commit by another connection (a serving process's audit writer): the next
            # poll runs a round, and the entry is sequenced and checkpointed.
            await _append(engine, 2)
            await self._until(lambda: checkpointed(3))
            assert rounds > settled
        finally:
            stop.set()
            await task
