from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import pytest
from joserfc.jwk import ECKey

from service.auth.keys import (
    SigningKeyCorrupt,
    SigningKeyMissing,
    SigningKeys,
    ensure_signing_key,
    rotate_signing_key,
)
from service.auth.runtime import AuthRuntime
from service.config import Settings
from service.consent import artefact as consent_artefact
from tests.fixtures.cli import run_cli, scratch_env
from tests.fixtures.server import LiveServer, free_port

# Written into a corrupt file: it must never appear in an answer, a log or a command's output.
MARKER = "corrupt-content-4f1d"


def corrupt_manifests(kid: str) -> dict[str, str]:
    """Manifests that are not what ``tellonce`` writes, by what is wrong with them."""
    entry = {"kid": kid, "created_at": "2026-01-02T00:00:00+00:00", "retired_at": None}
    return {
        "not JSON": f"{{{MARKER}",
        "wrong shape": json.dumps([MARKER]),
        "missing members": json.dumps({"active": kid}),
        "key not an object": json.dumps({"active": kid, "keys": [MARKER]}),
        "kid not a string": json.dumps({"active": kid, "keys": [{**entry, "kid": 7}]}),
        "time not a time": json.dumps({"active": kid, "keys": [{**entry, "created_at": MARKER}]}),
        "time without offset": json.dumps(
            {"active": kid, "keys": [{**entry, "created_at": "2026-01-02T00:00:00"}]}
        ),
        "active not listed": json.dumps({"active": MARKER, "keys": [entry]}),
    }


def corrupt_pems() -> dict[str, bytes]:
    """PEM files that are not a P-256 private key, by what they are."""
    return {
        "garbage": MARKER.encode(),
        "truncated": ECKey.generate_key("P-256", private=True).as_pem(private=True)[:120],
        "public half only": ECKey.generate_key("P-256", private=True).as_pem(private=False),
        "another curve": ECKey.generate_key("P-384", private=True).as_pem(private=True),
    }


def bump_mtime(path: Path) -> None:
    """Make a running server see the manifest as changed, however coarse the file times."""
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


class TestSigningKeys:
    def test_generated_key_is_private_to_the_owner(self, tmp_path: Path) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        keys = SigningKeys(tmp_path, 300)
        pem = tmp_path / "signing-keys" / f"{keys.active_kid}.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert [k["kid"] for k in keys.jwks()["keys"]] == [keys.active_kid]
        assert "d" not in keys.jwks()["keys"][0]

    def test_production_refuses_to_generate(self, settings: Settings, tmp_path: Path) -> None:
        production = settings.model_copy(update={"env": "production", "data_dir": tmp_path})
        with pytest.raises(SigningKeyMissing, match="production does not generate one"):
            AuthRuntime.create(production)
        assert not (tmp_path / "signing-keys").exists()

    def test_production_uses_an_existing_key(self, settings: Settings, tmp_path: Path) -> None:
        kid = rotate_signing_key(tmp_path)
        production = settings.model_copy(update={"env": "production", "data_dir": tmp_path})
        assert AuthRuntime.create(production).keys.active_kid == kid

    def test_running_process_sees_a_rotation(self, tmp_path: Path) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        keys = SigningKeys(tmp_path, 300)
        old = keys.active_kid
        new = rotate_signing_key(tmp_path)
        # A token signed by the new key reaches a process that loaded before the rotation.
        assert keys.verification_key(new) is not None
        assert keys.active_kid == new
        assert keys.verification_key(old) is not None

    def test_retired_key_leaves_once_its_tokens_expired(self, tmp_path: Path) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        old = SigningKeys(tmp_path, 300).active_kid
        rotate_signing_key(tmp_path)
        # A verifier whose tokens live -61 s: the old key's last token is already past.
        keys = SigningKeys(tmp_path, -61)
        assert keys.verification_key(old) is None
        assert old not in {k["kid"] for k in keys.jwks()["keys"]}

    def test_evidence_keys_keep_retired_keys_so_an_old_consent_verifies(self, tmp_path: Path) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        signer = SigningKeys(tmp_path, 300)
        old = signer.active_kid
        claims = consent_artefact.terms(
            issuer="https://tellonce.test",
            consent_id="c-1",
            citizen_id="citizen-1",
            agreement="support-reads-benefits",
            owner="dwp",
            consumer="council",
            purpose="discretionary-support",
            fields=["benefit_status"],
            actions=["read"],
            created_at=datetime(2026, 1, 2, tzinfo=UTC),
            expires_at=None,
            data_life=None,
        )
        signature = consent_artefact.sign(claims, signer)
        new = rotate_signing_key(tmp_path)
        # Long after the rotation (every token the old key signed has expired): gone from
        # the tokens' JWKS, still among the evidence keys, and PyJWT verifies with it.
        keys = SigningKeys(tmp_path, -61)
        assert old not in {k["kid"] for k in keys.jwks()["keys"]}
        evidence = keys.evidence_jwks()
        assert {k["kid"] for k in evidence["keys"]} == {old, new}
        assert not [k for k in evidence["keys"] if "d" in k]
        key = jwt.PyJWKSet.from_dict(evidence)[jwt.get_unverified_header(signature)["kid"]]
        assert jwt.decode(signature, key.key, algorithms=["ES256"])["jti"] == "c-1"

    @pytest.mark.parametrize("case", list(corrupt_manifests("k")))
    def test_a_manifest_that_cannot_be_parsed_is_refused_by_name(self, tmp_path: Path, case: str) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        kid = SigningKeys(tmp_path, 300).active_kid
        manifest = tmp_path / "signing-keys" / "manifest.json"
        manifest.write_text(corrupt_manifests(kid)[case])
        with pytest.raises(SigningKeyCorrupt) as caught:
            SigningKeys(tmp_path, 300)
        assert str(caught.value) == (
            f"the access-token signing-key manifest in {manifest} cannot be parsed: "
            f"restore the {manifest.parent} folder from a backup"
        )
        with pytest.raises(SigningKeyCorrupt):
            rotate_signing_key(tmp_path)

    @pytest.mark.parametrize("case", list(corrupt_pems()))
    def test_a_key_file_that_is_not_a_p256_private_key_is_refused_by_name(
        self, tmp_path: Path, case: str
    ) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        (pem,) = (tmp_path / "signing-keys").glob("*.pem")
        pem.write_bytes(corrupt_pems()[case])
        with pytest.raises(SigningKeyCorrupt) as caught:
            SigningKeys(tmp_path, 300)
        assert str(caught.value) == (
            f"the access-token signing key in {pem} cannot be parsed: "
            f"restore the {pem.parent} folder from a backup"
        )


@pytest.mark.e2e
class TestKeyFilesReReadWhileServing:
    """A running server re-reads its signing keys: one open to other accounts, missing or
    unreadable is the operator's key setup failing closed, a 503 problem, not a 500."""

    def _assert_unusable(self, response: httpx.Response, pem: Path) -> None:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"]
        body = response.json()
        assert (body["status"], body["type"]) == (
            503,
            "https://tellonce.example/problems/signing-keys-unusable",
        )
        # The detail names the problem, never the file or the key.
        assert "signing key file" in body["detail"]
        assert str(pem.parent) not in response.text
        assert "PRIVATE KEY" not in response.text

    def test_a_key_file_opened_to_others_or_missing_is_503_until_fixed(
        self, live_server: LiveServer, tmp_path: Path
    ) -> None:
        folder = tmp_path / "data" / "signing-keys"
        [pem] = folder.glob("*.pem")
        manifest = folder / "manifest.json"
        with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
            assert http.get("/.well-known/evidence-keys.json").status_code == 200
            pem.chmod(0o644)
            try:
                self._assert_unusable(http.get("/.well-known/evidence-keys.json"), pem)
                # A changed manifest makes the server re-read every key it uses.
                before = manifest.stat()
                os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
                self._assert_unusable(http.get("/.well-known/jwks.json"), pem)
            finally:
                pem.chmod(0o600)
            assert http.get("/.well-known/evidence-keys.json").status_code == 200
            assert http.get("/.well-known/jwks.json").status_code == 200
            moved = pem.with_suffix(".moved")
            pem.rename(moved)
            try:
                self._assert_unusable(http.get("/.well-known/evidence-keys.json"), pem)
            finally:
                moved.rename(pem)
            assert http.get("/.well-known/evidence-keys.json").status_code == 200
        log = live_server.log()
        assert f"the access-token signing key in {pem} is open to other accounts" in log
        assert f"cannot read the access-token signing key in {pem}" in log
        assert "PRIVATE KEY" not in log

    def test_a_key_file_or_manifest_that_cannot_be_parsed_is_503_until_restored(
        self, live_server: LiveServer, tmp_path: Path
    ) -> None:
        folder = tmp_path / "data" / "signing-keys"
        [pem] = folder.glob("*.pem")
        manifest = folder / "manifest.json"
        key, listing = pem.read_bytes(), manifest.read_text()
        with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
            assert http.get("/.well-known/jwks.json").status_code == 200
            pem.write_bytes(MARKER.encode())
            try:
                self._assert_unusable(http.get("/.well-known/evidence-keys.json"), pem)
                bump_mtime(manifest)
                self._assert_unusable(http.get("/.well-known/jwks.json"), pem)
            finally:
                pem.write_bytes(key)
            bump_mtime(manifest)
            assert http.get("/.well-known/jwks.json").status_code == 200
            assert http.get("/.well-known/evidence-keys.json").status_code == 200
            for case in ("not JSON", "wrong shape", "missing members"):
                manifest.write_text(corrupt_manifests(pem.stem)[case])
                bump_mtime(manifest)
                try:
                    self._assert_unusable(http.get("/.well-known/jwks.json"), pem)
                    self._assert_unusable(http.get("/.well-known/evidence-keys.json"), pem)
                    assert MARKER not in http.get("/.well-known/jwks.json").text
                finally:
                    manifest.write_text(listing)
                    bump_mtime(manifest)
                assert http.get("/.well-known/jwks.json").status_code == 200, case
        log = live_server.log()
        assert f"refusing to serve: the access-token signing key in {pem} cannot be parsed" in log
        assert (
            f"refusing to serve: the access-token signing-key manifest in {manifest} cannot be parsed" in log
        )
        assert "Traceback" not in log
        assert MARKER not in log
        assert "PRIVATE KEY" not in log


class TestCorruptKeyFilesStopCommands:
    """A signing-key file that cannot be parsed stops a command before it starts: one line
    naming the file, never what it holds, and no traceback."""

    @pytest.mark.parametrize(
        ("command", "which"),
        [
            ("serve", "key"),
            ("serve", "manifest"),
            ("init", "key"),
            ("init", "manifest"),
            # Rotation reads the manifest, not the keys.
            ("auth rotate-signing-key", "manifest"),
        ],
    )
    def test_one_line_naming_the_file(self, tmp_path: Path, command: str, which: str) -> None:
        data = tmp_path / "data"
        ensure_signing_key(data, may_generate=True)
        folder = data / "signing-keys"
        (pem,) = folder.glob("*.pem")
        if which == "key":
            path, what = pem, "access-token signing key"
            pem.write_text(MARKER)
        else:
            path, what = folder / "manifest.json", "access-token signing-key manifest"
            path.write_text(corrupt_manifests(pem.stem)["not JSON"])
        args = ["serve", "--port", str(free_port())] if command == "serve" else command.split()
        result = run_cli(scratch_env(data, tmp_path / "tellonce.db"), *args)
        assert "Traceback" not in result.stderr
        assert MARKER not in result.stdout + result.stderr
        refusal = f"the {what} in {path} cannot be parsed: restore the {folder} folder from a backup"
        if command == "init":
            # As every refusal of init's (a key file open to other accounts among them).
            assert result.returncode == 1, result.stderr
            assert result.stderr.strip().splitlines() == [f"tellonce init: {refusal}"]
        else:
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [
                f"tellonce: cannot use the access-token signing keys: {refusal}"
            ]

    def test_serve_names_a_missing_key_file_in_one_line(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        ensure_signing_key(data, may_generate=True)
        (pem,) = (data / "signing-keys").glob("*.pem")
        pem.unlink()
        result = run_cli(scratch_env(data, tmp_path / "tellonce.db"), "serve", "--port", str(free_port()))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"tellonce: cannot read the access-token signing key in {pem}: No such file or directory"
        ]
