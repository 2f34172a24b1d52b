"""C2SP signed notes and tlog-checkpoints."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

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

    @pytest.mark.parametrize(
        "spelled",
        [
            pytest.param(lambda key_id: f"{key_id[:4]} {key_id[4:]}", id="inner-space"),
            pytest.param(lambda key_id: f"\t{key_id}", id="leading-tab"),
            pytest.param(lambda key_id: f"{key_id}\n", id="trailing-newline"),
            pytest.param(lambda key_id: f"{key_id}00", id="ten-digits"),
            pytest.param(lambda key_id: key_id[:6], id="six-digits"),
            pytest.param(lambda _key_id: "", id="empty"),
        ],
    )
    def test_a_key_id_not_of_eight_hex_digits_is_refused(
        self, signer: NoteSigner, spelled: Callable[[str], str]
    ) -> None:
        """signed-note: ``<name>+<key id>+<key>`` with the id as eight hex digits.
        ``bytes.fromhex`` also read whitespace between the digits, so a key id with a
        space, a tab or a newline in it was taken for the same key."""
        name, key_id, key = signer.verifier_key().split("+", 2)
        with pytest.raises(CheckpointError, match="eight hex digits"):
            NoteVerifier.parse(f"{name}+{spelled(key_id)}+{key}")

    def test_a_key_id_in_upper_case_hex_is_the_same_key(self, signer: NoteSigner) -> None:
        """Hex digits of either case, as Go's ``note.NewVerifier`` reads them."""
        name, key_id, key = signer.verifier_key().split("+", 2)
        parsed = NoteVerifier.parse(f"{name}+{key_id.upper()}+{key}")
        assert parsed == NoteVerifier.parse(signer.verifier_key())

    def test_signer_repr_hides_the_key(self, signer: NoteSigner) -> None:
        assert "private" not in repr(signer).lower()
        assert signer.key_hash.hex() in repr(signer)

    @pytest.mark.parametrize(
        "body", ["origin\n", "origin\nx\nAAAA\n", "origin\n1\nnot-base64!\n", "o\n01\nAA==\n"]
    )
    def test_malformed_bodies_are_refused(self, body: str) -> None:
        with pytest.raises(CheckpointError):
            Checkpoint.parse_body(body)


def _line(name: str, raw: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"


class TestSignedNoteRules:
    """C2SP signed-note and tlog-checkpoint, to the letter: what a verifier must refuse."""

    @pytest.mark.parametrize("control", ["\t", "\r", "\x00", "\x0b", "\x1f"])
    def test_a_control_character_in_the_text_is_refused(self, signer: NoteSigner, control: str) -> None:
        # Signed by the log's own key: the signature verifies, the note is still malformed.
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body() + f"extension{control}line\n"
        with pytest.raises(CheckpointError, match="control character"):
            NoteVerifier.parse(signer.verifier_key()).open(signer.sign(body))

    def test_a_control_character_among_the_signatures_is_refused(self, signer: NoteSigner) -> None:
        note = signer.sign(Checkpoint(signer.name, 3, b"\x02" * 32).body())
        with pytest.raises(CheckpointError, match="control character"):
            NoteVerifier.parse(signer.verifier_key()).open(note + "\u2014 other.example/key\tAAAAAAAA\n")

    @pytest.mark.parametrize("text", ["ext \x7f line", "caf\u00e9", "\u2028"])
    def test_characters_from_u0020_up_are_allowed(self, signer: NoteSigner, text: str) -> None:
        """Only ASCII controls below U+0020 are forbidden: DEL and non-ASCII text are not."""
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body() + text + "\n"
        assert NoteVerifier.parse(signer.verifier_key()).open(signer.sign(body)) == body

    @pytest.mark.parametrize("extensions", ["\n", "\nsecond\n", "first\n\n"])
    def test_an_empty_extension_line_is_refused(self, signer: NoteSigner, extensions: str) -> None:
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body() + extensions
        with pytest.raises(CheckpointError, match="extension"):
            Checkpoint.parse_body(body)
        with pytest.raises(CheckpointError):
            NoteVerifier.parse(signer.verifier_key()).open_checkpoint(signer.sign(body))

    def test_non_empty_extension_lines_are_accepted(self, signer: NoteSigner) -> None:
        checkpoint = Checkpoint(signer.name, 3, b"\x02" * 32)
        note = signer.sign(checkpoint.body() + "first\nsecond\n")
        assert NoteVerifier.parse(signer.verifier_key()).open_checkpoint(note) == checkpoint

    @pytest.mark.parametrize("failing_first", [False, True], ids=["after", "before"])
    def test_a_failing_signature_by_the_key_rejects_the_note_wherever_it_is(
        self, signer: NoteSigner, failing_first: bool
    ) -> None:
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body()
        valid = signer.sign(body).removeprefix(body + "\n")
        failing = _line(signer.name, signer.key_hash + bytes(64))
        lines = failing + valid if failing_first else valid + failing
        with pytest.raises(CheckpointError, match="does not verify"):
            NoteVerifier.parse(signer.verifier_key()).open(f"{body}\n{lines}")

    @pytest.mark.parametrize("length", [0, 1, 63, 65, 100])
    def test_a_signature_of_the_wrong_length_by_the_key_rejects_the_note(
        self, signer: NoteSigner, length: int
    ) -> None:
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body()
        note = signer.sign(body) + _line(signer.name, signer.key_hash + b"\x01" * length)
        with pytest.raises(CheckpointError, match="does not verify"):
            NoteVerifier.parse(signer.verifier_key()).open(note)

    def test_signatures_sharing_only_the_name_or_only_the_key_id_are_ignored(
        self, signer: NoteSigner
    ) -> None:
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body()
        other_id = bytes(b ^ 0xFF for b in signer.key_hash)
        note = (
            signer.sign(body)
            + _line(signer.name, other_id + bytes(64))
            + _line("someone.example/else", signer.key_hash + bytes(64))
        )
        assert NoteVerifier.parse(signer.verifier_key()).open(note) == body

    def test_the_same_valid_signature_twice_is_accepted(self, signer: NoteSigner) -> None:
        body = Checkpoint(signer.name, 3, b"\x02" * 32).body()
        note = signer.sign(body)
        assert NoteVerifier.parse(signer.verifier_key()).open(note + note.removeprefix(body + "\n")) == body

    @pytest.mark.parametrize(
        "line",
        [
            "not a signature\n",
            "\u2014 name\n",
            "\u2014  AAAAAAAA\n",
            "\u2014 na+me AAAAAAAA\n",
            "\u2014 name not-base64!\n",
            "\u2014 name AAA=\n",
            "- name AAAAAAAA\n",
        ],
    )
    def test_a_malformed_signature_line_is_refused(self, signer: NoteSigner, line: str) -> None:
        note = signer.sign(Checkpoint(signer.name, 3, b"\x02" * 32).body())
        with pytest.raises(CheckpointError):
            NoteVerifier.parse(signer.verifier_key()).open(note + line)

    @pytest.mark.parametrize("note", ["origin\n1\nAA==\n", "origin\n\n", "origin\n\n\u2014 a AAAAAAAA\n\n"])
    def test_a_note_without_signature_lines_is_refused(self, signer: NoteSigner, note: str) -> None:
        with pytest.raises(CheckpointError):
            NoteVerifier.parse(signer.verifier_key()).open(note)
