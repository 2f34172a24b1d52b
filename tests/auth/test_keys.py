from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from service.auth.keys import SigningKeyMissing, SigningKeys, ensure_signing_key, rotate_signing_key
from service.auth.runtime import AuthRuntime
from service.config import Settings
from service.consent import artefact as consent_artefact


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
