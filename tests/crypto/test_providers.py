"""Root key loading and the local provider: files, modes, production refusals, contexts."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.bootstrap import missing_keys
from service.config import Settings
from service.crypto.errors import KeyUnwrapError, RootKeyUnavailable
from service.crypto.keyring import Keyring
from service.crypto.material import KeyMaterial
from service.crypto.providers import KeyProvider, LocalKeyProvider, load_root_key
from tests.fixtures.cli import run_cli, scratch_env


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, database_url="sqlite+aiosqlite:///:memory:", **overrides)  # type: ignore[arg-type]


def write_key_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


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
        write_key_file(tmp_path / "root.key", base64.b64encode(raw).decode() + "\n")
        settings = settings_for(tmp_path, env="production")
        assert load_root_key(settings).reveal() == raw

    @pytest.mark.parametrize("env", ["production", "development"])
    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
    def test_a_key_file_others_may_read_or_write_is_refused(
        self, tmp_path: Path, env: str, mode: int
    ) -> None:
        """Fail closed: a root key any other account can read is no longer secret."""
        text = base64.b64encode(secrets.token_bytes(32)).decode()
        path = write_key_file(tmp_path / "root.key", text + "\n", mode)
        with pytest.raises(RootKeyUnavailable, match=f"chmod 600 {path}") as caught:
            load_root_key(settings_for(tmp_path, env=env))
        assert f"mode {mode:o}" in str(caught.value)
        assert text not in str(caught.value)
        # The file is left as it is: tightening it would hide that the key was exposed.
        assert stat.S_IMODE(path.stat().st_mode) == mode

    def test_a_setting_s_bad_key_is_never_echoed_by_validation(self) -> None:
        text = base64.b64encode(b"ROOTKEYMARKER" + secrets.token_bytes(17)).decode()
        with pytest.raises(ValidationError) as caught:
            Settings(root_key=text, database_url="sqlite+aiosqlite:///:memory:")  # type: ignore[arg-type]
        assert "exactly 32 bytes" in str(caught.value)
        assert text not in str(caught.value)

    @pytest.mark.parametrize(
        ("content", "message"),
        [("not base64!!", "not base64"), (base64.b64encode(b"short").decode(), "not 32 bytes")],
    )
    def test_a_bad_key_file_is_refused_without_echoing_it(
        self, tmp_path: Path, content: str, message: str
    ) -> None:
        write_key_file(tmp_path / "root.key", content)
        with pytest.raises(RootKeyUnavailable, match=message) as caught:
            load_root_key(settings_for(tmp_path, env="development"))
        assert content not in str(caught.value)


class TestPinFile:
    """TELLONCE_PKCS11_PIN_FILE is held to the root key file's rule: others may not read it,
    and one that cannot be read is a one-line refusal (it was a FileNotFoundError)."""

    def pin_settings(self, pin_file: Path) -> Settings:
        return Settings(
            database_url="sqlite+aiosqlite:///:memory:",
            key_provider="pkcs11",
            pkcs11_module="/nonexistent/libsofthsm2.so",
            pkcs11_token_label="tellonce",
            pkcs11_pin_file=pin_file,
        )

    def test_a_private_pin_file_is_read(self, tmp_path: Path) -> None:
        from service.crypto.hsm import token_config

        path = write_key_file(tmp_path / "pin", "PINMARKER-1234\n")
        assert token_config(self.pin_settings(path)).pin == "PINMARKER-1234"

    @pytest.mark.parametrize(
        ("mode", "says"), [(0o644, "(mode 644): run chmod 600"), (None, "cannot be read")]
    )
    def test_an_unusable_pin_file_is_refused(self, tmp_path: Path, mode: int | None, says: str) -> None:
        from service.crypto.hsm import token_config

        path = tmp_path / "pin"
        if mode is not None:
            write_key_file(path, "PINMARKER-1234\n", mode)
        with pytest.raises(RootKeyUnavailable) as caught:
            token_config(self.pin_settings(path))
        assert f"the PKCS#11 PIN in {path} " in str(caught.value)
        assert says in str(caught.value)
        assert "PINMARKER" not in str(caught.value)


ROTATE = ["keys", "rotate", "--department", "register"]


class TestUnusableRootKeyOnTheCommandLine:
    """A root key that cannot be used stops any command in one line naming the file and
    the fix, exit 2: never a traceback, never the key."""

    @pytest.mark.parametrize(
        ("args", "content", "mode", "says"),
        [
            (ROTATE, base64.b64encode(b"ROOTKEYMARKER-short").decode(), 0o600, "is not 32 bytes"),
            (
                ROTATE,
                base64.b64encode(b"ROOTKEYMARKER" + secrets.token_bytes(19)).decode(),
                0o644,
                "chmod 600",
            ),
            (["serve", "--no-worker", "--port", "1"], "ROOTKEYMARKER not base64!!", 0o600, "is not base64"),
        ],
    )
    def test_one_line_and_exit_2(
        self, tmp_path: Path, args: list[str], content: str, mode: int, says: str
    ) -> None:
        data = tmp_path / "data"
        data.mkdir()
        path = write_key_file(data / "root.key", content + "\n", mode)
        result = run_cli(scratch_env(data, tmp_path / "tellonce.db"), *args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"tellonce: cannot use the root key: the root key in {path} ")
        assert says in line
        assert "ROOTKEYMARKER" not in result.stderr + result.stdout
        assert content not in result.stderr + result.stdout

    def test_with_a_token_the_line_names_the_token_not_a_root_key(self, tmp_path: Path) -> None:
        """With TELLONCE_KEY_PROVIDER=pkcs11 there is no root key: a PIN or token that cannot
        be used is not called one."""
        data = tmp_path / "data"
        data.mkdir()
        pin = tmp_path / "absent-pin"
        env = scratch_env(data, tmp_path / "tellonce.db") | {
            "TELLONCE_KEY_PROVIDER": "pkcs11",
            "TELLONCE_PKCS11_MODULE": "/nonexistent/libsofthsm2.so",
            "TELLONCE_PKCS11_TOKEN_LABEL": "tellonce",
            "TELLONCE_PKCS11_PIN_FILE": str(pin),
        }
        result = run_cli(env, *ROTATE)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"tellonce: cannot use the PKCS#11 token: the PKCS#11 PIN in {pin} "), line
        assert "root key" not in line


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
