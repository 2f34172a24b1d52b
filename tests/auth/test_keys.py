from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.auth.keys import SigningKeyMissing, SigningKeys, ensure_signing_key, rotate_signing_key
from service.auth.runtime import AuthRuntime
from service.config import Settings


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
