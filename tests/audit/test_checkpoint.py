"""C2SP signed notes and tlog-checkpoints."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.audit.checkpoint import Checkpoint, CheckpointError, NoteSigner, NoteVerifier


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner("tellonce.example/audit", Ed25519PrivateKey.generate())


class TestSignedNote:
    def test_format_follows_c2sp(self, signer: NoteSigner) -> None:
        body = Checkpoint("tellonce.example/audit", 7, bytes(range(32))).body()
        assert body == f"tellonce.example/audit\n7\n{base64.b64encode(bytes(range(32))).decode()}\n"
        note = signer.sign(body)
        head, signature_line = note.rsplit("\n\n", 1)
        assert head + "\n" == body
        dash, name, blob = signature_line.rstrip("\n").split(" ")
        assert dash == "\u2014"
        assert name == "tellonce.example/audit"
        raw = base64.b64decode(blob)
        expected_hash = hashlib.sha256(name.encode() + b"\n\x01" + signer.public_key).digest()[:4]
        assert raw[:4] == expected_hash
        assert len(raw) == 4 + 64

    def test_verifier_key_string(self, signer: NoteSigner) -> None:
        name, key_hash, key = signer.verifier_key().split("+", 2)
        assert name == signer.name
        assert bytes.fromhex(key_hash) == signer.key_hash
        assert base64.b64decode(key) == b"\x01" + signer.public_key

    def test_round_trip(self, signer: NoteSigner) -> None:
        checkpoint = Checkpoint(signer.name, 12, b"\x07" * 32)
        opened = NoteVerifier.parse(signer.verifier_key()).open_checkpoint(signer.sign(checkpoint.body()))
        assert opened == checkpoint

    def test_forged_body_fails(self, signer: NoteSigner) -> None:
        note = signer.sign(Checkpoint(signer.name, 12, b"\x07" * 32).body()).replace("\n12\n", "\n13\n")
        with pytest.raises(CheckpointError, match="does not verify"):
            NoteVerifier.parse(signer.verifier_key()).open(note)

    def test_other_key_fails(self, signer: NoteSigner) -> None:
        other = NoteSigner(signer.name, Ed25519PrivateKey.generate())
        note = other.sign(Checkpoint(signer.name, 1, b"\x01" * 32).body())
        with pytest.raises(CheckpointError, match="no signature"):
            NoteVerifier.parse(signer.verifier_key()).open(note)

    @pytest.mark.parametrize(
        "vkey", ["", "a+b", "name+zz+AAAA", "name+00000000+AQ==", "bad name+00000000+AQ=="]
    )
    def test_malformed_verifier_keys_are_refused(self, vkey: str) -> None:
        with pytest.raises(CheckpointError):
            NoteVerifier.parse(vkey)

    def test_signer_repr_hides_the_key(self, signer: NoteSigner) -> None:
        assert "private" not in repr(signer).lower()
        assert signer.key_hash.hex() in repr(signer)

    @pytest.mark.parametrize(
        "body", ["origin\n", "origin\nx\nAAAA\n", "origin\n1\nnot-base64!\n", "o\n01\nAA==\n"]
    )
    def test_malformed_bodies_are_refused(self, body: str) -> None:
        with pytest.raises(CheckpointError):
            Checkpoint.parse_body(body)
