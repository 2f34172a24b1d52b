"""The secrets the service keeps in files under its data dir (the audit checkpoint key, the
access-token signing keys, and the root key as the webhook secrets and ``worker`` read it)
are held to the root key file's rule: a file with any group or other permission bit is
refused in every environment, left as it is, with one line naming it and ``chmod 600``;
the data dir, when the service makes it, is 0700."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.audit.config import create_signing_key, load_signer, signing_key_path
from service.audit.errors import SigningKeyMissing
from service.auth.errors import SigningKeysUnusable
from service.auth.keys import SigningKeys, check_key_files, ensure_signing_key, rotate_signing_key
from service.auth.runtime import AuthRuntime
from service.bootstrap import check_secret_files
from service.cli import app as cli_app
from service.config import Settings, get_settings
from service.crypto.providers import load_root_key
from service.db import ensure_sqlite_dir
from service.events.secrets import SecretBox, SigningKeyUnavailable
from service.private_files import SharedSecretFile
from tests.fixtures.cli import run_cli, scratch_env
from tests.fixtures.server import free_port

CHECKPOINT = "audit checkpoint key"
TOKEN_KEY = "access-token signing key"
SHARED_MODES = [0o644, 0o640]


def refusal(secret: str, path: Path, mode: int) -> str:
    return (
        f"the {secret} in {path} is open to other accounts (mode {mode:o}): run chmod 600 {path}, "
        f"and replace the {secret} if anyone else may have read it"
    )


def settings_for(data: Path, env: str = "test", **update: object) -> Settings:
    return Settings(env=env, data_dir=data, database_url="sqlite+aiosqlite:///:memory:", **update)  # type: ignore[arg-type]


def only_pem(data: Path) -> Path:
    (pem,) = (data / "signing-keys").glob("*.pem")
    return pem


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestCheckpointKey:
    @pytest.mark.parametrize("env", ["production", "development"])
    @pytest.mark.parametrize("mode", SHARED_MODES, ids=oct)
    def test_a_key_others_may_read_is_refused_and_left_as_it_is(
        self, tmp_path: Path, env: str, mode: int
    ) -> None:
        settings = settings_for(tmp_path, env)
        path = signing_key_path(settings)
        assert create_signing_key(path)
        path.chmod(mode)
        before = path.read_bytes()
        with pytest.raises(SharedSecretFile) as caught:
            load_signer(settings, "tellonce.example/audit")
        assert str(caught.value) == refusal(CHECKPOINT, path, mode)
        assert before.strip().decode() not in str(caught.value)
        assert mode_of(path) == mode
        assert path.read_bytes() == before

    def test_a_private_key_signs(self, tmp_path: Path) -> None:
        settings = settings_for(tmp_path, "production")
        create_signing_key(signing_key_path(settings))
        signer = load_signer(settings, "tellonce.example/audit")
        assert signer.verifier_key().startswith("tellonce.example/audit+")

    def test_a_key_that_is_not_base64_is_one_error_not_a_traceback(self, tmp_path: Path) -> None:
        settings = settings_for(tmp_path)
        path = signing_key_path(settings)
        path.write_text("not base64!!\n")
        path.chmod(0o600)
        with pytest.raises(SigningKeyMissing, match="does not hold a base64 32-byte Ed25519 seed"):
            load_signer(settings, "tellonce.example/audit")


class TestAccessTokenSigningKeys:
    @pytest.mark.parametrize("env", ["production", "development"])
    @pytest.mark.parametrize("mode", SHARED_MODES, ids=oct)
    def test_a_key_others_may_read_is_refused(self, tmp_path: Path, env: str, mode: int) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        pem = only_pem(tmp_path)
        pem.chmod(mode)
        expected = refusal(TOKEN_KEY, pem, mode)
        with pytest.raises(SharedSecretFile) as caught:
            SigningKeys(tmp_path, 300)
        assert str(caught.value) == expected
        with pytest.raises(SharedSecretFile):
            AuthRuntime.create(settings_for(tmp_path, env))
        with pytest.raises(SharedSecretFile):
            check_key_files(tmp_path)
        assert mode_of(pem) == mode

    def test_a_retired_key_is_held_to_the_rule_too(self, tmp_path: Path) -> None:
        """A retired key no longer verifies tokens, but it could still sign evidence."""
        ensure_signing_key(tmp_path, may_generate=True)
        old = only_pem(tmp_path)
        keys = SigningKeys(tmp_path, 300)
        rotate_signing_key(tmp_path)
        old.chmod(0o640)
        with pytest.raises(SharedSecretFile, match=f"in {old} is open to other accounts"):
            check_key_files(tmp_path)
        # Re-read for a request, it is the 503 refusal (``SigningKeysUnusable``).
        with pytest.raises(SigningKeysUnusable):
            keys.evidence_jwks()

    @pytest.mark.parametrize("which", ["active", "retired"])
    def test_a_rotation_refuses_a_key_others_may_read_and_changes_nothing(
        self, tmp_path: Path, which: str
    ) -> None:
        """It made a new key beside it, leaving a folder that ``serve`` and ``worker`` then
        refuse. The file is named and left as it is, as everywhere else."""
        ensure_signing_key(tmp_path, may_generate=True)
        retired = only_pem(tmp_path)
        rotate_signing_key(tmp_path)
        folder = tmp_path / "signing-keys"
        exposed = retired if which == "retired" else next(p for p in folder.glob("*.pem") if p != retired)
        exposed.chmod(0o640)
        before = {path.name: path.read_bytes() for path in folder.iterdir()}
        with pytest.raises(SharedSecretFile) as caught:
            rotate_signing_key(tmp_path)
        assert str(caught.value) == refusal(TOKEN_KEY, exposed, 0o640)
        assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
        assert mode_of(exposed) == 0o640
        # Once the operator has run chmod 600, the rotation goes ahead and leaves a folder
        # the server uses.
        exposed.chmod(0o600)
        rotate_signing_key(tmp_path)
        check_key_files(tmp_path)
        assert len(SigningKeys(tmp_path, 300).evidence_jwks()["keys"]) == 3

    def test_the_rotate_command_refuses_in_one_line(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        ensure_signing_key(data, may_generate=True)
        pem = only_pem(data)
        pem.chmod(0o644)
        result = run_cli(scratch_env(data, tmp_path / "tellonce.db"), "auth", "rotate-signing-key")
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"tellonce: cannot use the {TOKEN_KEY}: {refusal(TOKEN_KEY, pem, 0o644)}"
        ]
        assert [path.name for path in (data / "signing-keys").glob("*.pem")] == [pem.name]

    def test_private_keys_are_used(self, tmp_path: Path) -> None:
        ensure_signing_key(tmp_path, may_generate=True)
        rotate_signing_key(tmp_path)
        check_key_files(tmp_path)
        keys = SigningKeys(tmp_path, 300)
        assert len(keys.evidence_jwks()["keys"]) == 2


class TestWebhookSecretsUnderTheRootKeyFile:
    @pytest.mark.parametrize("mode", SHARED_MODES, ids=oct)
    def test_a_root_key_file_others_may_read_is_refused(
        self, tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 503 whose detail names no path; the operator's log names the file and the remedy."""
        settings = settings_for(tmp_path)
        load_root_key(settings)  # made 0600
        settings.root_key_file.chmod(mode)
        with caplog.at_level(logging.ERROR, logger="tellonce.events"):
            with pytest.raises(SigningKeyUnavailable, match="open to other accounts") as caught:
                SecretBox.from_settings(settings)
        assert (caught.value.status, caught.value.slug) == (503, "webhook-signing-unavailable")
        assert str(tmp_path) not in caught.value.detail
        assert [r.getMessage() for r in caplog.records if r.name == "tellonce.events"] == [
            "refusing to keep webhook secrets: " + refusal("root key", settings.root_key_file, mode)
        ]
        assert mode_of(settings.root_key_file) == mode

    def test_a_root_key_file_that_cannot_be_read_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unreadable key file (the tests run as root, so its mode cannot deny the read)
        is the same 503, not an unhandled ``OSError``; the log names the file."""
        settings = settings_for(tmp_path)
        load_root_key(settings)
        root_key_file = settings.root_key_file

        def denied(path: Path, *args: object, **kwargs: object) -> str:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(Path, "read_text", denied)
        with caplog.at_level(logging.ERROR, logger="tellonce.events"):
            with pytest.raises(SigningKeyUnavailable, match="cannot be read") as caught:
                SecretBox.from_settings(settings)
        assert str(tmp_path) not in caught.value.detail
        assert [r.getMessage() for r in caplog.records if r.name == "tellonce.events"] == [
            f"refusing to keep webhook secrets: cannot read the root key in {root_key_file} (PermissionError)"
        ]

    def test_a_private_root_key_file_seals(self, tmp_path: Path) -> None:
        settings = settings_for(tmp_path)
        load_root_key(settings)
        box = SecretBox.from_settings(settings)
        assert box.open(box.seal("whsec_x", "sub-1"), "sub-1") == "whsec_x"


class TestCheckSecretFiles:
    """What serve, worker and init check before they start."""

    def make_keys(self, data: Path) -> Settings:
        settings = settings_for(data)
        load_root_key(settings)
        create_signing_key(signing_key_path(settings))
        ensure_signing_key(data, may_generate=True)
        return settings

    def test_private_files_pass(self, tmp_path: Path) -> None:
        check_secret_files(self.make_keys(tmp_path))

    @pytest.mark.parametrize("mode", SHARED_MODES, ids=oct)
    @pytest.mark.parametrize("which", ["root key", CHECKPOINT, TOKEN_KEY])
    def test_each_file_is_checked(self, tmp_path: Path, which: str, mode: int) -> None:
        settings = self.make_keys(tmp_path)
        path = {
            "root key": settings.root_key_file,
            CHECKPOINT: signing_key_path(settings),
            TOKEN_KEY: only_pem(tmp_path),
        }[which]
        path.chmod(mode)
        with pytest.raises(SharedSecretFile) as caught:
            check_secret_files(settings)
        assert str(caught.value) == refusal(which, path, mode)
        assert caught.value.secret == which
        assert mode_of(path) == mode

    def test_a_root_key_file_the_setting_overrides_is_not_read(self, tmp_path: Path, root_key: str) -> None:
        self.make_keys(tmp_path).root_key_file.chmod(0o644)
        check_secret_files(settings_for(tmp_path, root_key=root_key))


class TestInit:
    @pytest.fixture
    def env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
        data = tmp_path / "data"
        for name in list(os.environ):
            if name.startswith("TELLONCE_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("TELLONCE_ENV", "test")
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(data))
        monkeypatch.setenv("TELLONCE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'db' / 't.db'}")
        get_settings.cache_clear()
        yield data
        get_settings.cache_clear()

    @pytest.mark.parametrize("mode", SHARED_MODES, ids=oct)
    def test_refuses_a_checkpoint_key_others_may_read_before_making_anything(
        self, env: Path, mode: int
    ) -> None:
        path = env / "audit-checkpoint.key"
        create_signing_key(path)
        path.chmod(mode)
        result = CliRunner().invoke(cli_app, ["init"])
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [f"tellonce init: {refusal(CHECKPOINT, path, mode)}"]
        assert mode_of(path) == mode
        assert not (env / "root.key").exists()
        assert not (env / "signing-keys").exists()

    def test_refuses_an_access_token_key_others_may_read(self, env: Path) -> None:
        ensure_signing_key(env, may_generate=True)
        pem = only_pem(env)
        pem.chmod(0o640)
        result = CliRunner().invoke(cli_app, ["init"])
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [f"tellonce init: {refusal(TOKEN_KEY, pem, 0o640)}"]

    def test_makes_the_data_dir_0700_and_keeps_an_existing_one_s_mode(
        self, env: Path, tmp_path: Path
    ) -> None:
        result = CliRunner().invoke(cli_app, ["init"])
        assert result.exit_code == 0, result.stderr
        assert mode_of(env) == 0o700
        assert mode_of(env / "signing-keys") == 0o700
        assert mode_of(tmp_path / "db") == 0o700  # the SQLite file's folder, made here
        for path in (env / "root.key", env / "audit-checkpoint.key", only_pem(env)):
            assert mode_of(path) == 0o600, path
        # Run again on a folder the operator opened: its mode is theirs, not changed silently.
        env.chmod(0o755)
        result = CliRunner().invoke(cli_app, ["init"])
        assert result.exit_code == 0, result.stderr
        assert mode_of(env) == 0o755


class TestDataDirMade0700:
    def test_by_each_key_that_makes_it(self, tmp_path: Path) -> None:
        root = tmp_path / "a" / "root"
        load_root_key(settings_for(root))
        checkpoint = tmp_path / "b" / "checkpoint"
        create_signing_key(checkpoint / "audit-checkpoint.key")
        tokens = tmp_path / "c" / "tokens"
        ensure_signing_key(tokens, may_generate=True)
        database = tmp_path / "d" / "db"
        ensure_sqlite_dir(f"sqlite+aiosqlite:///{database / 't.db'}")
        for folder in (root, checkpoint, tokens, tokens / "signing-keys", database):
            assert mode_of(folder) == 0o700, folder
        # Parents are made as `mkdir -p` makes them; only the folder holding the keys is 0700.
        assert mode_of(tmp_path / "a") & 0o700 == 0o700

    def test_an_existing_folder_keeps_its_mode(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir(mode=0o755)
        data.chmod(0o755)
        load_root_key(settings_for(data))
        ensure_signing_key(data, may_generate=True)
        assert mode_of(data) == 0o755
        assert mode_of(data / "root.key") == 0o600


class TestCommandsStop:
    """serve, worker and init, as processes: one line, the file named, the root key's exit code."""

    def keys(self, data: Path) -> dict[str, Path]:
        settings = settings_for(data)
        load_root_key(settings)
        create_signing_key(signing_key_path(settings))
        ensure_signing_key(data, may_generate=True)
        return {
            "root key": settings.root_key_file,
            CHECKPOINT: signing_key_path(settings),
            TOKEN_KEY: only_pem(data),
        }

    @pytest.mark.parametrize(
        ("command", "which", "mode"),
        [
            ("serve", CHECKPOINT, 0o644),
            ("serve", TOKEN_KEY, 0o640),
            ("worker", CHECKPOINT, 0o640),
            ("worker", TOKEN_KEY, 0o644),
            ("worker", "root key", 0o644),
            ("init", CHECKPOINT, 0o644),
            ("init", TOKEN_KEY, 0o640),
        ],
        ids=lambda value: oct(value) if isinstance(value, int) else value,
    )
    def test_a_key_file_others_may_read(self, tmp_path: Path, command: str, which: str, mode: int) -> None:
        data = tmp_path / "data"
        path = self.keys(data)[which]
        before = path.read_bytes()
        path.chmod(mode)
        args = ["serve", "--port", str(free_port())] if command == "serve" else [command]
        result = run_cli(scratch_env(data, tmp_path / "tellonce.db"), *args)
        assert "Traceback" not in result.stderr
        if command == "init":
            assert result.returncode == 1, result.stderr
            expected = f"tellonce init: {refusal(which, path, mode)}"
        else:
            assert result.returncode == 2, result.stderr
            expected = f"tellonce: cannot use the {which}: {refusal(which, path, mode)}"
        assert result.stderr.strip().splitlines() == [expected]
        assert before.decode() not in result.stdout + result.stderr
        assert mode_of(path) == mode
        assert path.read_bytes() == before

    def test_private_keys_are_accepted(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        self.keys(data)
        result = run_cli(scratch_env(data, tmp_path / "tellonce.db"), "init")
        assert result.returncode == 0, result.stderr
        assert "audit checkpoint key: present" in result.stdout
