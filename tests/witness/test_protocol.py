"""POST /add-checkpoint and GET /checkpoint, status by status, as C2SP tlog-witness says."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from service.audit.checkpoint import NoteVerifier
from service.witness.cosignature import CosignatureSigner, CosignatureVerifier, split_note
from service.witness.protocol import parse_submission, submission_body
from service.witness.state import Refusal, WitnessState
from tests.fixtures.tlog import MemoryLog
from tests.witness.test_cosignature import independent_verify


async def submit(witness: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await witness.post("/add-checkpoint", content=body)


def assert_conflict(response: httpx.Response, size: int) -> None:
    assert response.status_code == 409
    assert response.headers["content-type"] == "text/x.tlog.size"
    assert response.text == f"{size}\n"


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


class TestAddCheckpoint:
    async def test_first_checkpoint_is_cosigned(
        self, witness: httpx.AsyncClient, log: MemoryLog, witness_signer: CosignatureSigner
    ) -> None:
        response = await submit(witness, log.submission(0))
        assert response.status_code == 200
        assert response.text.startswith("\u2014 audit-office.example/witness ")
        assert response.text.endswith("\n")
        independent_verify(witness_signer.verifier_key(), log.note() + response.text)

    async def test_growth_with_a_valid_proof_is_cosigned(
        self, witness: httpx.AsyncClient, log: MemoryLog, witness_signer: CosignatureSigner
    ) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        log.grow(7)
        response = await submit(witness, log.submission(10))
        assert response.status_code == 200
        independent_verify(witness_signer.verifier_key(), log.note() + response.text)

    async def test_same_checkpoint_again_is_cosigned_again(
        self, witness: httpx.AsyncClient, log: MemoryLog
    ) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        assert (await submit(witness, log.submission(10))).status_code == 200

    async def test_unknown_origin_is_404(self, witness: httpx.AsyncClient) -> None:
        stranger = MemoryLog.new(origin="elsewhere.example/log", size=3)
        assert_problem(await submit(witness, stranger.submission(0)), 404)

    async def test_untrusted_signature_is_403(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        impostor = MemoryLog.new(origin=log.signer.name, size=10)
        assert_problem(await submit(witness, impostor.submission(0)), 403)

    async def test_old_above_the_checkpoint_size_is_400(
        self, witness: httpx.AsyncClient, log: MemoryLog
    ) -> None:
        assert_problem(await submit(witness, submission_body(11, [], log.note())), 400)

    @pytest.mark.parametrize(
        "body",
        [b"", b"old 1\n", b"new 0\n\nx", b"old 01\n\nx", b"old 0\nnot-base64!\n\nx", b"\xff\n\n"],
    )
    async def test_malformed_body_is_400(self, witness: httpx.AsyncClient, body: bytes) -> None:
        assert_problem(await submit(witness, body), 400)

    async def test_stale_old_size_is_409_with_the_size(
        self, witness: httpx.AsyncClient, log: MemoryLog
    ) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        log.grow(5)
        assert_conflict(await submit(witness, log.submission(0)), 10)
        assert_conflict(await submit(witness, log.submission(4)), 10)

    async def test_never_cosigned_answers_409_zero(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        assert_conflict(await submit(witness, log.submission(5)), 0)

    async def test_failed_consistency_proof_is_422(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        log.grow(6)
        proof = log.proof(10)
        proof[0] = bytes(32)
        assert_problem(await submit(witness, submission_body(10, proof, log.note())), 422)

    async def test_proof_with_old_zero_is_422(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        assert_problem(await submit(witness, submission_body(0, [bytes(32)], log.note())), 422)


class TestSplitView:
    async def test_same_size_fork_is_409_not_422(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        fork = log.fork(3)
        assert fork.root() != log.root()
        assert_conflict(await submit(witness, fork.submission(10)), 10)

    async def test_larger_fork_fails_its_proof(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        fork = log.fork(3)
        fork.grow(5)
        # The proof is honest for the forked tree, so it cannot lead from the cosigned root.
        assert_problem(await submit(witness, fork.submission(10)), 422)
        latest = await witness.get("/checkpoint", params={"origin": log.signer.name})
        assert split_note(latest.text)[0] == split_note(log.note())[0]


class TestRollback:
    async def test_smaller_checkpoint_is_refused(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        # Claiming the old size: it is above the smaller checkpoint's size.
        assert_problem(await submit(witness, submission_body(10, [], log.note(6))), 400)
        # Claiming a smaller old size: stale.
        assert_conflict(await submit(witness, log.submission(3, 6)), 10)

    async def test_concurrent_submissions_cosign_exactly_one(
        self, witness: httpx.AsyncClient, log: MemoryLog
    ) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        forks = []
        for index in range(8):
            fork = log.fork(index) if index % 2 else MemoryLog(log.signer, list(log.leaves))
            fork.grow(index + 1, tag=f"branch {index}")
            forks.append(fork)
        responses = await asyncio.gather(*(submit(witness, fork.submission(10)) for fork in forks))
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 1
        # Only the honest extensions (even indexes) can win: an odd one is a fork of the
        # cosigned tree, whose proof cannot lead from the cosigned root.
        won = codes.index(200)
        assert won % 2 == 0
        for index, response in enumerate(responses):
            if index == won:
                continue
            if index % 2 and response.status_code == 422:
                # A fork checked before the winner was saved: its proof fails against the
                # size-10 root (old 10 still matched then).
                assert_problem(response, 422)
            else:
                # Everything checked after the winner was saved is stale: 409 with its size.
                assert_conflict(response, len(forks[won].leaves))

    def test_two_witness_processes_on_one_state_file_cosign_exactly_one(
        self, tmp_path: Path, witness_signer: CosignatureSigner, log: MemoryLog
    ) -> None:
        verifier = NoteVerifier.parse(log.signer.verifier_key())
        states = [WitnessState(tmp_path / "shared.db", witness_signer, [verifier]) for _ in range(2)]
        small, large = MemoryLog(log.signer, list(log.leaves[:4])), log
        outcomes: list[object] = []
        barrier = threading.Barrier(2)

        def race(state: WitnessState, candidate: MemoryLog) -> None:
            barrier.wait()
            try:
                outcomes.append(state.add_checkpoint(parse_submission(candidate.submission(0))))
            except Refusal as refusal:
                outcomes.append(refusal)

        threads = [
            threading.Thread(target=race, args=pair) for pair in zip(states, (small, large), strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        refusals = [o for o in outcomes if isinstance(o, Refusal)]
        assert len(outcomes) == 2
        assert len(refusals) == 1
        assert refusals[0].status == 409
        for state in states:
            state.close()


class TestLatestCheckpoint:
    async def test_serves_the_cosigned_note(
        self, witness: httpx.AsyncClient, log: MemoryLog, witness_signer: CosignatureSigner
    ) -> None:
        assert (await witness.get("/checkpoint", params={"origin": log.signer.name})).status_code == 404
        await submit(witness, log.submission(0))
        response = await witness.get("/checkpoint", params={"origin": log.signer.name})
        assert response.status_code == 200
        NoteVerifier.parse(log.signer.verifier_key()).open(response.text)
        assert CosignatureVerifier.parse(witness_signer.verifier_key()).find(*split_note(response.text))

    async def test_unknown_origin_is_404(self, witness: httpx.AsyncClient) -> None:
        assert_problem(await witness.get("/checkpoint", params={"origin": "nobody"}), 404)

    def test_state_survives_a_restart(
        self, tmp_path: Path, witness_signer: CosignatureSigner, log: MemoryLog
    ) -> None:
        verifier = NoteVerifier.parse(log.signer.verifier_key())
        first = WitnessState(tmp_path / "w.db", witness_signer, [verifier])
        first.add_checkpoint(parse_submission(log.submission(0)))
        first.close()
        again = WitnessState(tmp_path / "w.db", witness_signer, [verifier])
        with pytest.raises(Refusal) as refused:
            again.add_checkpoint(parse_submission(log.fork(2).submission(10)))
        assert (refused.value.status, refused.value.latest_size) == (409, 10)
        again.close()

    def test_state_is_readable_by_its_owner_only(
        self, tmp_path: Path, witness_signer: CosignatureSigner, log: MemoryLog
    ) -> None:
        path = tmp_path / "w.db"
        path.touch(mode=0o644)  # even a file left readable by an older version is closed up
        state = WitnessState(path, witness_signer, [NoteVerifier.parse(log.signer.verifier_key())])
        state.add_checkpoint(parse_submission(log.submission(0)))
        files = sorted(tmp_path.glob("w.db*"))
        assert files
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o600" for f in files}
        state.close()
