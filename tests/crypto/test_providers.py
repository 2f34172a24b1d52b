"""Root key loading and the local provider: files, modes, production refusals, contexts."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest

from service.bootstrap import missing_keys
from service.config import Settings
from service.crypto.errors import KeyUnwrapError, RootKeyUnavailable
from service.crypto.keyring import Keyring
from service.crypto.material import KeyMaterial
from service.crypto.providers import KeyProvider, LocalKeyProvider, load_root_key


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, database_url="sqlite+aiosqlite:///:memory:", **overrides)  # type: ignore[arg-type]


class TestRootKey:
    def test_setting_wins(self, tmp_path: Path) -> None:
        raw = secrets.token_bytes(32)
        settings = settings_for(tmp_path, env="test", root_key=base64.b64encode(raw).decode())
        assert load_root_key(settings).reveal() == raw
        assert not settings.root_key_file.exists()

    def test_development_creates_a_private_key_file_once(self, tmp_path: Path) -> None:
        settings = settings_for(tmp_path / "state", env="development")
        first = load_root_key(settings)
        path = settings.root_key_file
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(base64.b64decode(path.read_text().strip())) == 32
        # Later starts read the same key back.
        assert load_root_key(settings) == first

    def test_production_refuses_to_generate(self, tmp_path: Path) -> None:
        # `serve` refuses production without a key before start-up (tests/test_bootstrap.py);
        # a key file that disappears after start-up must not be silently replaced either.
        settings = settings_for(tmp_path, env="production")
        assert f"root key (TELLONCE_ROOT_KEY or {settings.root_key_file})" in missing_keys(settings)
        with pytest.raises(RootKeyUnavailable, match="production refuses to generate a root key"):
            load_root_key(settings)
        assert not settings.root_key_file.exists()
        with pytest.raises(RootKeyUnavailable):
            Keyring.from_settings(settings)

    def test_production_uses_a_provided_file(self, tmp_path: Path) -> None:
        raw = secrets.token_bytes(32)
        (tmp_path / "root.key").write_text(base64.b64encode(raw).decode() + "\n")
        settings = settings_for(tmp_path, env="production")
        assert load_root_key(settings).reveal() == raw

    @pytest.mark.parametrize(
        ("content", "message"),
        [("not base64!!", "not base64"), (base64.b64encode(b"short").decode(), "not 32 bytes")],
    )
    def test_a_bad_key_file_is_refused_without_echoing_it(
        self, tmp_path: Path, content: str, message: str
    ) -> None:
        (tmp_path / "root.key").write_text(content)
        with pytest.raises(RootKeyUnavailable, match=message) as caught:
            load_root_key(settings_for(tmp_path, env="development"))
        assert content not in str(caught.value)


class TestLocalProvider:
    async def test_wraps_under_a_context(self) -> None:
        provider = LocalKeyProvider(KeyMaterial(secrets.token_bytes(32)))
        assert isinstance(provider, KeyProvider)
        kek = KeyMaterial(secrets.token_bytes(32))
        wrapped = await provider.wrap(kek, context=b"register/1")
        assert kek.reveal() not in wrapped
        assert await provider.unwrap(wrapped, context=b"register/1") == kek
        with pytest.raises(KeyUnwrapError):
            await provider.unwrap(wrapped, context=b"register/2")
        tampered = bytearray(wrapped)
        tampered[-1] ^= 1
        with pytest.raises(KeyUnwrapError):
            await provider.unwrap(bytes(tampered), context=b"register/1")
        with pytest.raises(KeyUnwrapError, match="malformed"):
            await provider.unwrap(b"\x01short", context=b"register/1")

    async def test_another_root_cannot_unwrap(self) -> None:
        kek = KeyMaterial(secrets.token_bytes(32))
        wrapped = await LocalKeyProvider(KeyMaterial(secrets.token_bytes(32))).wrap(kek, context=b"c")
        with pytest.raises(KeyUnwrapError):
            await LocalKeyProvider(KeyMaterial(secrets.token_bytes(32))).unwrap(wrapped, context=b"c")

    def test_repr_hides_the_root(self) -> None:
        root = secrets.token_bytes(32)
        provider = LocalKeyProvider(KeyMaterial(root))
        keyring = Keyring(provider)
        for text in (repr(provider), repr(keyring), str(keyring)):
            assert root.hex() not in text
            assert base64.b64encode(root).decode() not in text
