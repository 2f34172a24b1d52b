"""The witness reads a checkpoint as C2SP signed-note and tlog-checkpoint say, and knows
each log by its origin line (tlog-witness), whatever its key is named."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from typer.testing import CliRunner

from service.audit.checkpoint import Checkpoint, CheckpointError, NoteSigner, NoteVerifier
from service.witness import cli as witness_cli
from service.witness.cosignature import CosignatureSigner, CosignatureVerifier, split_note
from service.witness.protocol import parse_submission, submission_body
from service.witness.server import create_witness_app
from service.witness.state import TrustedLog, WitnessState
from tests.fixtures.tlog import MemoryLog
from tests.witness.test_cosignature import independent_verify
from tests.witness.test_protocol import assert_problem, submit

ORIGIN = "tellonce.example/audit"

# Starts a witness following the logs given; returns a client of it.
Serve = Callable[[Sequence[TrustedLog | NoteVerifier]], httpx.AsyncClient]


def _signed(
    log: MemoryLog, extra: str = "", origin: str | None = None, signer: NoteSigner | None = None
) -> str:
    """A note over ``log`` at its size, signed with the log's real key (or ``signer``), with
    ``extra`` appended to the checkpoint text."""
    signer = signer or log.signer
    body = Checkpoint(origin or log.signer.name, len(log.leaves), log.root()).body() + extra
    return signer.sign(body)


def _line(name: str, raw: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"


async def _nothing_cosigned(witness: httpx.AsyncClient, origin: str) -> bool:
    return (await witness.get("/checkpoint", params={"origin": origin})).status_code == 404


@pytest.fixture
def serve(tmp_path: Path, witness_signer: CosignatureSigner) -> Iterator[Serve]:
    """A witness client following ``logs``; the state is closed at the end of the test."""
    states: list[WitnessState] = []

    def start(logs: Sequence[TrustedLog | NoteVerifier]) -> httpx.AsyncClient:
        state = WitnessState(tmp_path / f"witness-{len(states)}.db", witness_signer, logs)
        states.append(state)
        transport = httpx.ASGITransport(app=create_witness_app(state))
        return httpx.AsyncClient(transport=transport, base_url="http://witness.test")

    yield start
    for state in states:
        state.close()


class TestSignedNoteRules:
    """Each of these was cosigned (200) while the note parser was lenient."""

    @pytest.mark.parametrize("control", ["\t", "\r", "\x00", "\x1b"])
    async def test_a_control_character_in_the_checkpoint_is_400(
        self, witness: httpx.AsyncClient, log: MemoryLog, control: str
    ) -> None:
        note = _signed(log, f"extension{control}line\n")
        assert_problem(await submit(witness, submission_body(0, [], note)), 400)
        assert await _nothing_cosigned(witness, log.signer.name)

    async def test_an_empty_extension_line_is_400(self, witness: httpx.AsyncClient, log: MemoryLog) -> None:
        note = _signed(log, "\nextension\n")
        assert_problem(await submit(witness, submission_body(0, [], note)), 400)
        assert await _nothing_cosigned(witness, log.signer.name)

    async def test_an_empty_tree_with_another_root_is_400_and_its_own_root_is_cosigned(
        self, witness: httpx.AsyncClient, log: MemoryLog, witness_signer: CosignatureSigner
    ) -> None:
        # RFC 9162, 2.1.1: the empty tree's root is SHA-256 of nothing; a size-0 checkpoint
        # with any other root states a tree that cannot exist, and is not vouched for.
        bogus = log.signer.sign(Checkpoint(log.signer.name, 0, b"\x11" * 32).body())
        refused = await submit(witness, submission_body(0, [], bogus))
        assert_problem(refused, 400)
        assert "size 0" in refused.json()["detail"]
        assert await _nothing_cosigned(witness, log.signer.name)
        empty = log.signer.sign(Checkpoint(log.signer.name, 0, hashlib.sha256(b"").digest()).body())
        response = await submit(witness, submission_body(0, [], empty))
        assert response.status_code == 200, response.text
        independent_verify(witness_signer.verifier_key(), empty + response.text)

    async def test_non_empty_extension_lines_are_cosigned_over_the_whole_text(
        self, witness: httpx.AsyncClient, log: MemoryLog, witness_signer: CosignatureSigner
    ) -> None:
        note = _signed(log, "extension one\nextension two\n")
        response = await submit(witness, submission_body(0, [], note))
        assert response.status_code == 200
        independent_verify(witness_signer.verifier_key(), note + response.text)

    @pytest.mark.parametrize("failing_first", [False, True], ids=["after", "before"])
    async def test_a_failing_log_signature_beside_a_valid_one_is_403(
        self, witness: httpx.AsyncClient, log: MemoryLog, failing_first: bool
    ) -> None:
        body, _lines = split_note(log.note())
        valid = log.note().removeprefix(body + "\n")
        failing = _line(log.signer.name, log.signer.key_hash + bytes(64))
        note = f"{body}\n{failing + valid if failing_first else valid + failing}"
        assert_problem(await submit(witness, submission_body(0, [], note)), 403)
        assert await _nothing_cosigned(witness, log.signer.name)

    @pytest.mark.parametrize("length", [0, 32, 63, 65])
    async def test_a_log_signature_of_the_wrong_length_is_403(
        self, witness: httpx.AsyncClient, log: MemoryLog, length: int
    ) -> None:
        note = log.note() + _line(log.signer.name, log.signer.key_hash + b"\x01" * length)
        assert_problem(await submit(witness, submission_body(0, [], note)), 403)
        assert await _nothing_cosigned(witness, log.signer.name)

    async def test_signatures_by_unknown_keys_are_ignored(
        self, witness: httpx.AsyncClient, log: MemoryLog
    ) -> None:
        """Sharing the name or the key id, but not both, makes a key unknown (signed-note)."""
        other_id = bytes(b ^ 0xFF for b in log.signer.key_hash)
        note = (
            log.note()
            + _line(log.signer.name, other_id + bytes(64))
            + _line("mirror.example/log", log.signer.key_hash + bytes(7))
        )
        assert (await submit(witness, submission_body(0, [], note))).status_code == 200

    async def test_the_served_note_is_the_one_checked(
        self, witness: httpx.AsyncClient, log: MemoryLog, witness_signer: CosignatureSigner
    ) -> None:
        assert (await submit(witness, log.submission(0))).status_code == 200
        served = (await witness.get("/checkpoint", params={"origin": log.signer.name})).text
        NoteVerifier.parse(log.signer.verifier_key()).open(served)
        assert CosignatureVerifier.parse(witness_signer.verifier_key()).find(*split_note(served))


class TestLogsByOrigin:
    async def test_a_log_whose_key_has_another_name_is_followed_by_its_origin(
        self, serve: Serve, witness_signer: CosignatureSigner
    ) -> None:
        log = MemoryLog.new(origin="keys.example/audit-2026", size=6)
        verifier = NoteVerifier.parse(log.signer.verifier_key())
        note = _signed(log, origin=ORIGIN)
        async with serve([TrustedLog(ORIGIN, verifier)]) as witness:
            response = await submit(witness, submission_body(0, [], note))
            assert response.status_code == 200
            independent_verify(witness_signer.verifier_key(), note + response.text)
            served = await witness.get("/checkpoint", params={"origin": ORIGIN})
            assert served.status_code == 200
            assert served.text == note + response.text
            # The key's name is no log this witness follows.
            assert_problem(await witness.get("/checkpoint", params={"origin": log.signer.name}), 404)
            assert_problem(await submit(witness, log.submission(0)), 404)

    async def test_a_bare_key_follows_the_log_its_name_is_the_origin_of(self, serve: Serve) -> None:
        log = MemoryLog.new(origin=ORIGIN, size=4)
        async with serve([NoteVerifier.parse(log.signer.verifier_key())]) as witness:
            assert (await submit(witness, log.submission(0))).status_code == 200

    async def test_a_key_trusted_for_another_origin_does_not_sign_this_one(self, serve: Serve) -> None:
        ours, theirs = (
            MemoryLog.new(origin="a.example/key", size=4),
            MemoryLog.new(origin="b.example/key", size=4),
        )
        logs = [
            TrustedLog(ORIGIN, NoteVerifier.parse(ours.signer.verifier_key())),
            TrustedLog("other.example/log", NoteVerifier.parse(theirs.signer.verifier_key())),
        ]
        async with serve(logs) as witness:
            forged = _signed(ours, origin=ORIGIN, signer=theirs.signer)
            assert_problem(await submit(witness, submission_body(0, [], forged)), 403)

    async def test_with_two_keys_for_one_origin_a_failing_one_refuses_the_note(self, serve: Serve) -> None:
        """Key rotation: either key may sign, but a line by a trusted key that fails refuses
        the whole note, even beside a valid line by the other."""
        old = NoteSigner("tellonce.example/audit-2025", Ed25519PrivateKey.generate())
        new = NoteSigner("tellonce.example/audit-2026", Ed25519PrivateKey.generate())
        log = MemoryLog(old, MemoryLog.new(size=5).leaves)
        logs = [TrustedLog(ORIGIN, NoteVerifier.parse(k.verifier_key())) for k in (old, new)]
        async with serve(logs) as witness:
            signed_by_new = _signed(log, origin=ORIGIN, signer=new)
            broken_old = _line(old.name, old.key_hash + bytes(64))
            assert_problem(await submit(witness, submission_body(0, [], signed_by_new + broken_old)), 403)
            assert (await submit(witness, submission_body(0, [], signed_by_new))).status_code == 200


class TestTrustedLogConfiguration:
    def test_a_bare_verifier_key_names_its_origin(self) -> None:
        vkey = MemoryLog.new(origin=ORIGIN).signer.verifier_key()
        trusted = TrustedLog.parse(vkey + "\n")
        assert (trusted.origin, trusted.verifier) == (ORIGIN, NoteVerifier.parse(vkey))

    @pytest.mark.parametrize("origin", [ORIGIN, "example.com/log?id=4", "a log with spaces"])
    def test_an_origin_before_the_key(self, origin: str) -> None:
        vkey = MemoryLog.new(origin="keys.example/k1").signer.verifier_key()
        trusted = TrustedLog.parse(f"  {origin}  {vkey}\n")
        assert (trusted.origin, trusted.verifier) == (origin, NoteVerifier.parse(vkey))

    @pytest.mark.parametrize("text", ["", ORIGIN, f"{ORIGIN} not-a-key"])
    def test_no_verifier_key_is_refused(self, text: str) -> None:
        with pytest.raises(CheckpointError):
            TrustedLog.parse(text)

    def test_serve_follows_the_origin_given_with_the_key(
        self, tmp_path: Path, witness_signer: CosignatureSigner, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``witness serve --log 'ORIGIN VKEY'`` (as a string or in a file) and ``--log VKEY``."""
        renamed = MemoryLog.new(origin="keys.example/audit-2026", size=3)
        plain = MemoryLog.new(origin="plain.example/audit", size=3)
        key = tmp_path / "witness.key"
        witness_cli.write_private_key(witness_signer, key)
        in_file = tmp_path / "renamed.log"
        in_file.write_text(f"{ORIGIN} {renamed.signer.verifier_key()}\n")
        cosigned: list[str] = []

        def run(app: FastAPI, **_options: object) -> None:
            # What the served app's witness does, while it runs (serve closes it after).
            state: WitnessState = app.state.witness
            for body in (submission_body(0, [], _signed(renamed, origin=ORIGIN)), plain.submission(0)):
                cosigned.append(state.add_checkpoint(parse_submission(body)).cosignature)

        monkeypatch.setattr(uvicorn, "run", run)
        for number, renamed_log in enumerate((f"{ORIGIN} {renamed.signer.verifier_key()}", str(in_file))):
            arguments = ["serve", "--key", str(key), "--state", str(tmp_path / f"{number}.db")]
            arguments += ["--log", renamed_log, "--log", plain.signer.verifier_key()]
            result = CliRunner().invoke(witness_cli.app, arguments)
            assert result.exit_code == 0, result.output
        assert len(cosigned) == 4
