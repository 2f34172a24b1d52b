"""tlog-cosignature/v1 (Ed25519), checked by a verifier written here from the C2SP text."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import struct
from pathlib import Path

import pytest
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner, Result

from service.cli import app as cli
from service.witness import cli as witness_cli
from service.witness.cosignature import (
    CosignatureError,
    CosignatureSigner,
    CosignatureVerifier,
    split_note,
)
from tests.fixtures.tlog import MemoryLog


def independent_verify(vkey: str, note: str) -> int:
    """Verify a cosignature as the spec reads, sharing no code with the service.

    vkey: ``name+hex(key id)+base64(0x04 || key)``. Key id: SHA-256(name || 0x0A || 0x04 ||
    key)[:4]. Line: ``— name base64(key id || u64 big-endian time || Ed25519 signature)``.
    Message: ``cosignature/v1\\ntime <T>\\n`` then the checkpoint body with its final newline.
    Returns the timestamp; raises AssertionError or InvalidSignature otherwise.
    """
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    material = base64.b64decode(key_b64)
    assert material[0] == 0x04
    public_key = material[1:]
    key_id = hashlib.sha256(name.encode() + b"\x0a" + b"\x04" + public_key).digest()[:4]
    assert key_id.hex() == key_id_hex
    body, _, signatures = note.partition("\n\n")
    body += "\n"
    for line in signatures.split("\n"):
        if not line.startswith("\u2014 " + name + " "):
            continue
        raw = base64.b64decode(line.split(" ")[2])
        if raw[:4] != key_id:
            continue
        assert len(raw) == 76
        timestamp = struct.unpack(">Q", raw[4:12])[0]
        message = b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + body.encode()
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw[12:], message)
        return int(timestamp)
    raise AssertionError("no cosignature by this witness")


@pytest.fixture
def signer() -> CosignatureSigner:
    return CosignatureSigner.generate("ico.example/witness")


class TestCosignature:
    def test_independent_verifier_accepts_it(self, signer: CosignatureSigner) -> None:
        note = MemoryLog.new(size=5).note()
        body, _lines = split_note(note)
        cosigned = note + signer.cosign(body, 1_700_000_123)
        assert independent_verify(signer.verifier_key(), cosigned) == 1_700_000_123

    def test_independent_verifier_rejects_another_body(self, signer: CosignatureSigner) -> None:
        log = MemoryLog.new(size=5)
        body, _lines = split_note(log.note())
        line = signer.cosign(body, 1_700_000_000)
        log.grow(1)
        with pytest.raises(InvalidSignature):
            independent_verify(signer.verifier_key(), log.note() + line)

    def test_service_verifier_finds_it_among_other_signatures(self, signer: CosignatureSigner) -> None:
        other = CosignatureSigner.generate("someone.example/witness")
        note = MemoryLog.new(size=3).note()
        body, _lines = split_note(note)
        cosigned = note + other.cosign(body, 5) + signer.cosign(body, 7)
        found = CosignatureVerifier.parse(signer.verifier_key()).find(*split_note(cosigned))
        assert found is not None
        assert (found.witness, found.timestamp) == (signer.name, 7)

    def test_a_tampered_cosignature_is_refused(self, signer: CosignatureSigner) -> None:
        note = MemoryLog.new(size=3).note()
        body, _lines = split_note(note)
        line = signer.cosign(body, 9)
        raw = bytearray(base64.b64decode(line.split(" ")[2]))
        raw[20] ^= 1
        forged = f"\u2014 {signer.name} {base64.b64encode(bytes(raw)).decode()}\n"
        with pytest.raises(CosignatureError, match="does not verify"):
            CosignatureVerifier.parse(signer.verifier_key()).find(*split_note(note + forged))

    def test_absent_cosignature_is_none(self, signer: CosignatureSigner) -> None:
        note = MemoryLog.new(size=3).note()
        assert CosignatureVerifier.parse(signer.verifier_key()).find(*split_note(note)) is None

    def test_private_key_text_round_trips(self, signer: CosignatureSigner) -> None:
        again = CosignatureSigner.from_private_key_text(signer.private_key_text())
        assert again.verifier_key() == signer.verifier_key()
        assert "PRIVATE" not in repr(again)

    @pytest.mark.parametrize(
        "vkey",
        ["", "a+b", "name+00000000+AQ==", "bad name+00000000+BA=="],
    )
    def test_malformed_witness_keys_are_refused(self, vkey: str) -> None:
        with pytest.raises(CosignatureError):
            CosignatureVerifier.parse(vkey)

    def test_a_log_key_is_not_a_witness_key(self) -> None:
        log = MemoryLog.new()
        with pytest.raises(CosignatureError, match="0x04"):
            CosignatureVerifier.parse(log.signer.verifier_key())


class TestKeygen:
    def test_writes_a_0600_key_and_prints_the_vkey(self, tmp_path: Path) -> None:
        out = tmp_path / "nao.key"
        result = CliRunner().invoke(
            cli, ["witness", "keygen", "--name", "nao.example/witness", "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        vkey = result.stdout.strip()
        verifier = CosignatureVerifier.parse(vkey)
        assert verifier.name == "nao.example/witness"
        assert CosignatureSigner.from_private_key_text(out.read_text()).verifier_key() == vkey

    def test_never_overwrites_a_key(self, tmp_path: Path) -> None:
        out = tmp_path / "nao.key"
        out.write_text("existing")
        result = CliRunner().invoke(cli, ["witness", "keygen", "--name", "nao.example/w", "--out", str(out)])
        assert result.exit_code == 1
        assert out.read_text() == "existing"

    @pytest.mark.parametrize(
        ("folder", "reason"), [("missing", "No such file or directory"), ("a-file", "Not a directory")]
    )
    def test_a_folder_that_is_not_there_is_said_so(self, tmp_path: Path, folder: str, reason: str) -> None:
        (tmp_path / "a-file").write_text("not a folder")
        out = tmp_path / folder / "nao.key"
        result = CliRunner().invoke(cli, ["witness", "keygen", "--name", "nao.example/w", "--out", str(out)])
        assert result.exit_code == 1
        assert result.stderr.strip() == f"cannot write {out}: {reason}"
        assert not (tmp_path / "missing").exists()


class TestServeRefusals:
    @pytest.mark.parametrize("which", ["key", "log"])
    def test_a_key_or_log_file_that_is_not_text_is_one_line(
        self, tmp_path: Path, signer: CosignatureSigner, which: str
    ) -> None:
        key = tmp_path / "witness.key"
        key.write_text(signer.private_key_text())
        key.chmod(0o600)
        binary = tmp_path / "binary"
        binary.write_bytes(b"\xff\xfe\x00\x01")
        binary.chmod(0o600)
        args = ["--key", str(binary if which == "key" else key), "--state", str(tmp_path / "state.db")]
        args += ["--log", str(binary) if which == "log" else signer.verifier_key()]

        result = CliRunner().invoke(cli, ["witness", "serve", "--port", "8100", *args])

        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("cannot start the witness: ")
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "state.db").exists()


class TestServeKeyFileMode:
    """A witness key file other accounts may read or write is refused, as the root key's
    is: one line saying what to run, exit 2, nothing served, the file left as it is."""

    @pytest.fixture
    def served(self, monkeypatch: pytest.MonkeyPatch) -> list[object]:
        """What ``uvicorn.run`` was asked to serve (nothing listens in these tests)."""
        apps: list[object] = []
        monkeypatch.setattr(uvicorn, "run", lambda app, **_options: apps.append(app))
        return apps

    def serve(self, tmp_path: Path, signer: CosignatureSigner, mode: int) -> tuple[Path, Result]:
        key = tmp_path / "witness.key"
        witness_cli.write_private_key(signer, key)
        key.chmod(mode)
        args = [
            "--key",
            str(key),
            "--state",
            str(tmp_path / "state.db"),
            "--log",
            MemoryLog.new().signer.verifier_key(),
        ]
        return key, CliRunner().invoke(cli, ["witness", "serve", "--port", "8100", *args])

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
    def test_a_key_open_to_other_accounts_is_refused(
        self, tmp_path: Path, signer: CosignatureSigner, served: list[object], mode: int
    ) -> None:
        key, result = self.serve(tmp_path, signer, mode)

        assert result.exit_code == 2, result.output
        assert result.stderr == (
            f"cannot start the witness: the witness key in {key} is open to other accounts "
            f"(mode {mode:o}): run chmod 600 {key}, and replace the witness key if anyone else "
            "may have read it\n"
        )
        assert served == []
        assert not (tmp_path / "state.db").exists()
        assert stat.S_IMODE(key.stat().st_mode) == mode

    def test_an_owner_only_key_is_served(
        self, tmp_path: Path, signer: CosignatureSigner, served: list[object]
    ) -> None:
        _key, result = self.serve(tmp_path, signer, 0o600)

        assert result.exit_code == 0, result.output
        assert len(served) == 1
        assert f"witness {signer.verifier_key()} on http://127.0.0.1:8100" in result.stderr


class TestCosignatureLines:
    """Every line with the witness's name and key id is verified (C2SP signed-note)."""

    @pytest.mark.parametrize("failing_first", [False, True], ids=["after", "before"])
    def test_a_failing_line_beside_a_valid_one_is_refused(
        self, signer: CosignatureSigner, failing_first: bool
    ) -> None:
        note = MemoryLog.new(size=3).note()
        body, _lines = split_note(note)
        valid = signer.cosign(body, 9)
        failing = f"\u2014 {signer.name} {base64.b64encode(signer.key_id + bytes(72)).decode()}\n"
        cosigned = note + (failing + valid if failing_first else valid + failing)
        with pytest.raises(CosignatureError, match="does not verify"):
            CosignatureVerifier.parse(signer.verifier_key()).find(*split_note(cosigned))

    @pytest.mark.parametrize("length", [0, 8, 71, 73])
    def test_a_line_of_the_wrong_length_is_refused_not_skipped(
        self, signer: CosignatureSigner, length: int
    ) -> None:
        note = MemoryLog.new(size=3).note()
        body, _lines = split_note(note)
        encoded = base64.b64encode(signer.key_id + bytes([1]) * length).decode()
        cosigned = note + signer.cosign(body, 9) + f"\u2014 {signer.name} {encoded}\n"
        with pytest.raises(CosignatureError, match="76 bytes"):
            CosignatureVerifier.parse(signer.verifier_key()).find(*split_note(cosigned))

    def test_a_note_with_a_control_character_is_refused(self, signer: CosignatureSigner) -> None:
        note = MemoryLog.new(size=3).note()
        body, _lines = split_note(note)
        with pytest.raises(CosignatureError, match="control character"):
            split_note(note + signer.cosign(body, 9).replace(" ", "\t", 1))
