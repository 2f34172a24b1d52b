"""Production bootstrap: `tellonce init`, what `serve` refuses, and an unmigrated database."""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.app import StartupRefused, create_app
from service.bootstrap import _signed_checkpoints, production_overrides, startup_refusal
from service.cli import app as cli_app
from service.config import Settings, get_settings
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, is_postgres
from tests.fixtures.server import free_port
from tests.fixtures.softhsm import make_token_store


@pytest.fixture
async def empty_database(database_url: str) -> AsyncIterator[str]:
    """A database with no schema at all, as a new installation starts."""
    url = await create_scratch_database(database_url, migrate=False)
    try:
        yield url
    finally:
        await drop_scratch_database(url)


@pytest.fixture
def production_env(empty_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Production settings on the empty database; SQLite only through its logged override."""
    data = tmp_path / "data"
    for name in list(os.environ):
        if name.startswith("TELLONCE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TELLONCE_ENV", "production")
    monkeypatch.setenv("TELLONCE_DATABASE_URL", empty_database)
    monkeypatch.setenv("TELLONCE_DATA_DIR", str(data))
    monkeypatch.setenv("TELLONCE_PUBLIC_URL", "https://tellonce.example.gov.uk")
    if not is_postgres(empty_database):
        monkeypatch.setenv("TELLONCE_ALLOW_SQLITE_IN_PRODUCTION", "true")
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


async def _store_a_kek(settings: Settings, department: str) -> None:
    """A department KEK wrapped under the current root key, as the first write makes one."""
    from service.crypto.keyring import Keyring
    from service.db import create_engine

    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await Keyring.from_settings(settings).active_kek(conn, department)
    finally:
        await engine.dispose()


async def _sign_checkpoints(settings: Settings) -> int:
    """Sequence the log with the installation's checkpoint key, a checkpoint per round, as
    a running worker would; the number of checkpoints stored."""
    from sqlalchemy import func, select

    from service.audit.checkpoint import NoteSigner
    from service.audit.config import AuditSettings, read_signing_key, signing_key_path
    from service.audit.models import AuditCheckpoint
    from service.db import create_engine
    from tests.fixtures.audit import make_sequencer, sequence_all

    signer = NoteSigner(AuditSettings().origin, read_signing_key(signing_key_path(settings)))
    engine = create_engine(settings.database_url)
    try:
        await sequence_all(make_sequencer(engine, signer, every=1))
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(AuditCheckpoint))).scalar_one())
    finally:
        await engine.dispose()


async def _stamp(settings: Settings, revision: str) -> None:
    """Mark the database as migrated to ``revision``, as a newer release would leave it."""
    from sqlalchemy import text

    from service.db import create_engine

    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        await engine.dispose()


def _contents(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and folder under ``folder``: its mode and bytes (a folder's are empty)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mode, path.read_bytes() if path.is_file() else b"")
        for path in sorted(folder.rglob("*"))
    }


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.stdout, result.stderr


class TestInit:
    def test_without_a_root_key_it_names_the_two_ways_to_get_one(self, production_env: Path) -> None:
        code, _out, err = invoke("init")
        assert code == 1
        assert "no root key" in err
        assert "TELLONCE_ROOT_KEY" in err
        assert "--new-root-key" in err
        assert not production_env.exists() or not any(production_env.iterdir())

    def test_creates_every_key_migrates_and_is_idempotent(self, production_env: Path) -> None:
        code, out, err = invoke("init", "--new-root-key")
        assert code == 0, err
        root_key = production_env / "root.key"
        checkpoint_key = production_env / "audit-checkpoint.key"
        manifest = production_env / "signing-keys" / "manifest.json"
        for path in (root_key, checkpoint_key, manifest):
            assert path.exists(), path
        for path in (root_key, checkpoint_key):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(base64.b64decode(checkpoint_key.read_text().strip())) == 32
        assert f"root key: created {root_key}" in out
        assert "access-token signing key: created" in out
        assert "audit checkpoint key: created" in out
        assert "database: migrated from empty to" in out
        assert "audit checkpoint verifier key (give it to auditors): tellonce.example/audit+" in out
        assert "back up:" in out
        assert "without it every stored value is unreadable" in out

        before = {p: p.read_bytes() for p in (root_key, checkpoint_key, manifest)}
        code, again, err = invoke("init")
        assert code == 0, err
        assert f"root key: present ({root_key})" in again
        assert "access-token signing key: present" in again
        assert "audit checkpoint key: present" in again
        assert "database: already at" in again
        assert {p: p.read_bytes() for p in before} == before  # nothing replaced

    def test_refuses_a_root_key_that_does_not_open_the_stored_keys(
        self, production_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert invoke("init", "--new-root-key")[0] == 0
        asyncio.run(_store_a_kek(get_settings(), "dvla"))
        assert "the root key opens them" in invoke("init")[1]
        monkeypatch.setenv("TELLONCE_ROOT_KEY", base64.b64encode(os.urandom(32)).decode())
        get_settings.cache_clear()
        code, _out, err = invoke("init")
        assert code == 1
        assert "the root key does not open the stored key of dvla" in err

    def test_a_lost_checkpoint_key_is_not_replaced_unasked(self, production_env: Path) -> None:
        assert invoke("init", "--new-root-key")[0] == 0  # its key creation is audited: entries
        held = asyncio.run(_sign_checkpoints(get_settings()))
        assert held >= 1
        checkpoint_key = production_env / "audit-checkpoint.key"
        checkpoint_key.unlink()  # a restore that left the data directory behind

        code, _out, err = invoke("init")
        assert code == 1
        assert err.strip().splitlines() == [
            f"tellonce init: the audit checkpoint key {checkpoint_key} is missing but the database "
            f"holds {held} checkpoints signed with it: put the backed-up key file back (a restore "
            "brings back the data directory with the database) and run init again, or run "
            "`tellonce init --new-checkpoint-key` to make a new key, after which `tellonce audit "
            "verify` fails from the first of those checkpoints unless given the lost key's verifier "
            "key too"
        ]
        assert not checkpoint_key.exists()

        code, out, err = invoke("init", "--new-checkpoint-key")
        assert code == 0, err
        assert checkpoint_key.exists()
        assert (
            f"audit checkpoint key: created ({checkpoint_key}) with --new-checkpoint-key; "
            f"{held} stored checkpoints were signed by the lost key"
        ) in out
        [warning] = err.strip().splitlines()
        assert warning.startswith(
            f"tellonce init: warning: the {held} checkpoints already stored were signed"
        )
        assert "verify only with its verifier key" in warning
        # What the warning says: verify, with the new key, fails from the first checkpoint.
        code, _out, err = invoke("audit", "verify")
        assert code == 1
        assert "audit log does NOT verify" in err
        # Once made, the key is present: init is quiet again and never replaces it.
        code, again, err = invoke("init", "--new-checkpoint-key")
        assert code == 0, err
        assert f"audit checkpoint key: present ({checkpoint_key})" in again
        assert err == ""

    def test_a_fresh_install_makes_the_checkpoint_key_unasked(self, production_env: Path) -> None:
        code, out, err = invoke("init", "--new-root-key")
        assert code == 0, err
        assert "audit checkpoint key: created" in out
        assert "--new-checkpoint-key" not in out + err


class TestCommandsWithoutTheCheckpointKey:
    @pytest.mark.parametrize("command", [("audit", "verify"), ("audit", "export", "--out", "bundle.jsonl")])
    def test_a_missing_checkpoint_key_is_one_line_not_a_traceback(
        self, production_env: Path, command: tuple[str, ...]
    ) -> None:
        assert invoke("init", "--new-root-key")[0] == 0
        checkpoint_key = production_env / "audit-checkpoint.key"
        checkpoint_key.unlink()
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *command],
            cwd=production_env.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("tellonce: cannot use the audit checkpoint key: ")
        assert str(checkpoint_key) in line
        assert "run `tellonce init`" in line


class TestUnusableDataDirectory:
    """A data directory, or its signing-keys folder, that cannot be used is one line naming
    the path and the OS reason (as root, a file where a folder is expected stands in for a
    permissions error, and a refused ``os.access`` or write for one), never a traceback."""

    def _under_a_file(self, production_env: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
        blocker = production_env.parent / "not-a-folder"
        blocker.write_text("")
        data = blocker / "data"
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(data))
        get_settings.cache_clear()
        return blocker, data

    def test_a_data_directory_under_a_file(
        self, production_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        blocker, data = self._under_a_file(production_env, monkeypatch)
        code, out, err = invoke("init", "--new-root-key")
        assert code == 1
        assert out == ""
        assert err.splitlines() == [
            f"tellonce init: cannot use the data directory {data}: {blocker}: Not a directory"
        ]

        code, out, err = invoke("auth", "rotate-signing-key")
        assert code == 2
        assert err.splitlines() == [
            f"tellonce: cannot use the access-token signing keys in {data}: {blocker}: Not a directory"
        ]

    def test_a_file_where_the_signing_keys_folder_is(self, production_env: Path) -> None:
        production_env.mkdir()
        folder = production_env / "signing-keys"
        folder.write_text("")
        code, out, err = invoke("init", "--new-root-key")
        assert out == ""
        assert code == 1
        assert err.splitlines() == [
            f"tellonce init: cannot use the data directory {production_env}: {folder}: Not a directory"
        ]
        # Refused before anything was made.
        assert [path.name for path in production_env.iterdir()] == ["signing-keys"]

        code, _out, err = invoke("auth", "rotate-signing-key")
        assert code == 2
        assert err.splitlines() == [
            f"tellonce: cannot use the access-token signing keys in {production_env}: "
            f"{folder}: Not a directory"
        ]

    def test_a_folder_this_account_may_not_write(
        self, production_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production_env.mkdir()
        monkeypatch.setattr("service.private_files.os.access", lambda _path, _mode: False)
        code, _out, err = invoke("init", "--new-root-key")
        assert code == 1
        assert err.splitlines() == [
            f"tellonce init: cannot use the data directory {production_env}: "
            f"{production_env}: Permission denied"
        ]
        assert not any(production_env.iterdir())

    def test_a_write_refused_after_the_checks(
        self, production_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def refused(path: Path, _content: bytes) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr("service.auth.keys._write_private", refused)
        code, _out, err = invoke("init", "--new-root-key")
        assert code == 1
        [line] = err.splitlines()
        assert line.startswith(
            f"tellonce init: cannot use the data directory {production_env}: {production_env}/signing-keys/"
        )
        assert line.endswith(".pem: Permission denied")

        code, _out, err = invoke("auth", "rotate-signing-key")
        assert code == 2
        [line] = err.splitlines()
        assert line.startswith(
            f"tellonce: cannot use the access-token signing keys in {production_env}: "
            f"{production_env}/signing-keys/"
        )
        assert line.endswith(".pem: Permission denied")


class TestRefusedInitMakesNothing:
    """Every refusal is checked before init makes a file: the data directory stays as it was."""

    @pytest.fixture
    def installed(self, production_env: Path) -> Path:
        """An installation with a stored department key, whose data directory then lost both
        signing keys (``init`` would make them again)."""
        assert invoke("init", "--new-root-key")[0] == 0
        asyncio.run(_store_a_kek(get_settings(), "dvla"))
        return production_env

    @staticmethod
    def _lose_signing_keys(data: Path) -> dict[str, tuple[int, bytes]]:
        (data / "audit-checkpoint.key").unlink()
        shutil.rmtree(data / "signing-keys")
        return _contents(data)

    def test_a_wrong_root_key(self, installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        before = self._lose_signing_keys(installed)
        monkeypatch.setenv("TELLONCE_ROOT_KEY", base64.b64encode(os.urandom(32)).decode())
        get_settings.cache_clear()
        code, _out, err = invoke("init")
        assert code == 1
        assert "the root key does not open the stored key of dvla v1" in err
        assert _contents(installed) == before

    def test_a_new_root_key_where_the_database_holds_department_keys(self, installed: Path) -> None:
        (installed / "root.key").unlink()
        before = self._lose_signing_keys(installed)
        code, _out, err = invoke("init", "--new-root-key")
        assert code == 1
        assert err.strip().splitlines() == [
            "tellonce init: no root key, and the database holds department keys (dvla v1) that a "
            "new one would not open: set TELLONCE_ROOT_KEY from your key store, or put "
            f"{installed / 'root.key'} back"
        ]
        assert _contents(installed) == before

    def test_stored_checkpoints_and_a_missing_checkpoint_key(self, installed: Path) -> None:
        assert asyncio.run(_sign_checkpoints(get_settings())) >= 1
        before = self._lose_signing_keys(installed)
        code, _out, err = invoke("init")
        assert code == 1
        assert "the audit checkpoint key" in err
        assert "--new-checkpoint-key" in err
        assert _contents(installed) == before

    def test_a_schema_a_newer_release_migrated(self, installed: Path) -> None:
        from service.schema import NewerSchema

        asyncio.run(_stamp(get_settings(), "29991231_newer"))
        before = self._lose_signing_keys(installed)
        result = CliRunner().invoke(cli_app, ["init"])
        assert isinstance(result.exception, NewerSchema)
        assert "29991231_newer" in str(result.exception)
        assert _contents(installed) == before


# Run in a process of their own with the token's settings (SoftHSM reads its token folder
# once per process): what ``serve`` and ``worker`` check first, and whether the first signer
# would make the checkpoint key pair.
_TOKEN_STARTUP = """
from pkcs11 import ObjectClass
from pkcs11.exceptions import NoSuchKey

from service.audit.config import load_signer
from service.audit.errors import SigningKeyMissing
from service.bootstrap import startup_refusal
from service.config import get_settings
from service.crypto.hsm import AUDIT_SIGNING_LABEL, open_token

settings = get_settings()
print(startup_refusal(settings))
try:
    load_signer(settings, "tellonce.example/audit")
    print("signer: loaded")
except SigningKeyMissing as exc:
    print(f"signer: {exc}")
try:
    open_token(settings).find(ObjectClass.PRIVATE_KEY, AUDIT_SIGNING_LABEL)
    print("pair in token: True")
except NoSuchKey:
    print("pair in token: False")
"""
_TOKEN_SIGN_CHECKPOINTS = """
import asyncio

from service.audit.config import AuditSettings, load_signer
from service.config import get_settings
from service.db import create_engine
from tests.fixtures.audit import make_sequencer, sequence_all


async def main() -> None:
    settings = get_settings()
    engine = create_engine(settings.database_url)
    try:
        await sequence_all(make_sequencer(engine, load_signer(settings, AuditSettings().origin), every=1))
    finally:
        await engine.dispose()


asyncio.run(main())
"""
_TOKEN_LOSE_CHECKPOINT_KEY = """
from pkcs11 import ObjectClass

from service.config import get_settings
from service.crypto.hsm import AUDIT_SIGNING_LABEL, open_token

token = open_token(get_settings())
for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
    key = token.find(object_class, AUDIT_SIGNING_LABEL)
    with token.lock:
        key.destroy()
"""


class TestInitWithToken:
    """TELLONCE_KEY_PROVIDER=pkcs11: no root key, and the checkpoint key is in the token."""

    def _run(self, token_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        # A process of its own: SoftHSM reads its token folder once per process.
        return subprocess.run(
            [sys.executable, *args],
            env={**os.environ, **token_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def _init(self, token_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(token_env, "-m", "service.cli", "init", *args)

    def _python(self, token_env: dict[str, str], code: str) -> list[str]:
        result = self._run(token_env, "-c", code)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    def test_needs_no_key_file_but_the_access_token_key(self, production_env: Path, tmp_path: Path) -> None:
        (tmp_path / "softhsm").mkdir()
        token_env = make_token_store(tmp_path / "softhsm").env()
        refusal, signer, pair = self._python(token_env, _TOKEN_STARTUP)
        assert "access-token signing key" in refusal
        assert "root key" not in refusal
        # Production makes the key pair in `init` only, as it makes the key file.
        assert (
            "audit checkpoint key (key pair 'tellonce/audit-signing' in the PKCS#11 token 'tellonce-test')"
        ) in refusal
        assert signer.startswith("signer: no audit checkpoint key pair 'tellonce/audit-signing'")
        assert pair == "pair in token: False"

        first = self._init(token_env)
        assert first.returncode == 0, first.stderr
        assert "no root key" in first.stdout
        assert (
            "audit checkpoint key: created (key pair 'tellonce/audit-signing' in the PKCS#11 token "
            "'tellonce-test')"
        ) in first.stdout
        assert not (production_env / "root.key").exists()
        assert not (production_env / "audit-checkpoint.key").exists()
        assert self._python(token_env, _TOKEN_STARTUP) == ["None", "signer: loaded", "pair in token: True"]
        # The verifier key given to auditors is the token's, the same in every process.
        again = self._init(token_env)
        assert again.returncode == 0, again.stderr
        vkey_line = "audit checkpoint verifier key (give it to auditors): tellonce.example/audit+"
        vkeys = {
            line
            for result in (first, again)
            for line in result.stdout.splitlines()
            if line.startswith(vkey_line)
        }
        assert len(vkeys) == 1, (first.stdout, again.stdout)
        assert not (production_env / "audit-checkpoint.key").exists()

    def test_a_new_root_key_is_refused_not_ignored(self, production_env: Path, tmp_path: Path) -> None:
        (tmp_path / "softhsm").mkdir()
        token_env = make_token_store(tmp_path / "softhsm").env()
        refused = self._init(token_env, "--new-root-key")
        assert refused.returncode == 1
        assert "--new-root-key: with TELLONCE_KEY_PROVIDER=pkcs11 there is no root key" in refused.stderr
        assert not (production_env / "root.key").exists()

    def test_a_lost_checkpoint_key_pair_is_not_replaced_unasked(
        self, production_env: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "softhsm").mkdir()
        token_env = make_token_store(tmp_path / "softhsm").env()
        where = "key pair 'tellonce/audit-signing' in the PKCS#11 token 'tellonce-test'"
        assert self._init(token_env).returncode == 0  # its key creation is audited: entries
        self._python(token_env, _TOKEN_SIGN_CHECKPOINTS)
        held = asyncio.run(_signed_checkpoints(get_settings()))
        assert held >= 1
        verified = self._run(token_env, "-m", "service.cli", "audit", "verify")
        assert verified.returncode == 0, verified.stderr
        self._python(token_env, _TOKEN_LOSE_CHECKPOINT_KEY)  # a token restored without it

        # serve and worker refuse to start, as with a missing key file, and no signer makes one.
        refusal, signer, pair = self._python(token_env, _TOKEN_STARTUP)
        assert refusal == f"cannot start: missing audit checkpoint key ({where}); run `tellonce init`"
        assert signer == (
            f"signer: no audit checkpoint {where}; production does not generate one: run `tellonce init`"
        )
        assert pair == "pair in token: False"

        refused = self._init(token_env)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"tellonce init: the audit checkpoint {where} is missing but the database holds {held} "
            "checkpoints signed with it: restore the token's key pair from its backup (as your HSM "
            "provides) and run init again, or run `tellonce init --new-checkpoint-key` to make a new "
            "key, after which `tellonce audit verify` fails from the first of those checkpoints "
            "unless given the lost key's verifier key too"
        ]
        assert self._python(token_env, _TOKEN_STARTUP)[2] == "pair in token: False"

        made = self._init(token_env, "--new-checkpoint-key")
        assert made.returncode == 0, made.stderr
        assert (
            f"audit checkpoint key: created ({where}) with --new-checkpoint-key; "
            f"{held} stored checkpoints were signed by the lost key"
        ) in made.stdout
        [warning] = made.stderr.strip().splitlines()
        assert warning.startswith(
            f"tellonce init: warning: the {held} checkpoints already stored were signed"
        )
        # What the warning says: verify, with the new key, fails from the first checkpoint.
        verified = self._run(token_env, "-m", "service.cli", "audit", "verify")
        assert verified.returncode == 1
        assert "audit log does NOT verify" in verified.stderr
        again = self._init(token_env, "--new-checkpoint-key")
        assert again.returncode == 0, again.stderr
        assert f"audit checkpoint key: present ({where})" in again.stdout
        assert again.stderr == ""

    def test_a_fresh_token_gets_its_checkpoint_key_pair_unasked(
        self, production_env: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "softhsm").mkdir()
        token_env = make_token_store(tmp_path / "softhsm").env()
        for args in ((), ("--new-checkpoint-key",)):
            result = self._init(token_env, *args)
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""
        assert "audit checkpoint key: present (key pair 'tellonce/audit-signing'" in result.stdout


class TestServeRefuses:
    def _serve(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_missing_keys_give_one_line_naming_them_and_the_fix(self, tmp_path: Path) -> None:
        root_key = base64.b64encode(os.urandom(32)).decode()
        result = self._serve(
            {
                "TELLONCE_ENV": "production",
                "TELLONCE_ROOT_KEY": root_key,
                "TELLONCE_DATA_DIR": str(tmp_path),
                "TELLONCE_DATABASE_URL": "postgresql+asyncpg://tellonce@127.0.0.1:1/tellonce",
                "TELLONCE_PUBLIC_URL": "https://tellonce.example.gov.uk",
            }
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "access-token signing key" in lines[0]
        assert "audit checkpoint key" in lines[0]
        assert "run `tellonce init`" in lines[0]
        assert root_key not in result.stderr

    @pytest.mark.parametrize(
        ("database_url", "public_url", "expected"),
        [
            ("sqlite+aiosqlite:///./x.db", "https://t.example", "production refuses SQLite"),
            ("postgresql+asyncpg://t@127.0.0.1:1/t", "http://t.example", "not https"),
        ],
    )
    def test_sqlite_and_plain_http_are_refused(
        self, tmp_path: Path, database_url: str, public_url: str, expected: str
    ) -> None:
        result = self._serve(
            {
                "TELLONCE_ENV": "production",
                "TELLONCE_ROOT_KEY": base64.b64encode(os.urandom(32)).decode(),
                "TELLONCE_DATA_DIR": str(tmp_path),
                "TELLONCE_DATABASE_URL": database_url,
                "TELLONCE_PUBLIC_URL": public_url,
            }
        )
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1
        assert expected in result.stderr
        assert "TELLONCE_ALLOW_" in result.stderr


class TestProductionOverrides:
    def _production(self, settings: Settings, **update: object) -> Settings:
        # In the test run's data folder: making the app makes the SQLite file.
        database_url = f"sqlite+aiosqlite:///{settings.data_dir / 'production.db'}"
        return settings.model_copy(update={"env": "production", "database_url": database_url, **update})

    def test_create_app_refuses_without_override(self, settings: Settings) -> None:
        with pytest.raises(StartupRefused, match="production refuses SQLite"):
            create_app(self._production(settings, public_url="https://t.example"))
        with pytest.raises(StartupRefused, match="not https"):
            create_app(self._production(settings, allow_sqlite_in_production=True))

    def test_webhooks_to_private_addresses_are_refused(
        self, settings: Settings, production_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production = self._production(
            settings,
            allow_sqlite_in_production=True,
            public_url="https://t.example",
            webhook_allow_private=True,
        )
        assert startup_refusal(production) == (
            "production refuses TELLONCE_WEBHOOK_ALLOW_PRIVATE (webhooks to loopback and private "
            "addresses are for development and tests only): unset it"
        )
        with pytest.raises(StartupRefused, match="TELLONCE_WEBHOOK_ALLOW_PRIVATE"):
            create_app(production)
        # tellonce init refuses it too, before making anything.
        monkeypatch.setenv("TELLONCE_WEBHOOK_ALLOW_PRIVATE", "true")
        get_settings.cache_clear()
        code, _out, err = invoke("init", "--new-root-key")
        assert code == 1
        assert "TELLONCE_WEBHOOK_ALLOW_PRIVATE" in err
        assert not production_env.exists()
        # Development and tests keep it (the demo's and the tests' receivers are on loopback).
        assert startup_refusal(settings.model_copy(update={"webhook_allow_private": True})) is None

    def test_overrides_are_logged_at_start(
        self, settings: Settings, capsys: pytest.CaptureFixture[str]
    ) -> None:
        production = self._production(
            settings, allow_sqlite_in_production=True, allow_insecure_public_url=True
        )
        assert len(production_overrides(production)) == 2
        create_app(production)
        err = capsys.readouterr().err
        assert "production override in effect: TELLONCE_ALLOW_SQLITE_IN_PRODUCTION" in err
        assert "production override in effect: TELLONCE_ALLOW_INSECURE_PUBLIC_URL" in err

    def test_development_needs_no_override(self, settings: Settings) -> None:
        assert production_overrides(settings) == []
        assert startup_refusal(settings) is None


class TestUnmigratedDatabase:
    def test_one_line_then_503_then_ready_after_migration(
        self, empty_database: str, tmp_path: Path, root_key: str
    ) -> None:
        from service.schema import upgrade
        from tests.fixtures.server import start_server

        env = {
            "TELLONCE_ENV": "test",
            "TELLONCE_DATABASE_URL": empty_database,
            "TELLONCE_DATA_DIR": str(tmp_path / "data"),
            "TELLONCE_ROOT_KEY": root_key,
            "TELLONCE_LOG_LEVEL": "INFO",
        }
        log_path = tmp_path / "server.log"
        server = start_server(env, log_path, timeout=90)
        try:
            readyz = httpx.get(f"{server.base_url}/readyz", timeout=5)
            assert readyz.status_code == 503
            assert "tellonce db upgrade" in readyz.json()["detail"]
            deadline = time.monotonic() + 20
            while "background work waits" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            upgrade(empty_database)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 200:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("never ready after migration")
            deadline = time.monotonic() + 60
            while "background work starting" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            server.stop()
        log = log_path.read_text()
        assert "Traceback" not in log
        assert log.count("background work waits") == 1
        assert "background work starting" in log


async def test_schema_gate_stops_waiting_when_told(empty_database: str) -> None:
    from service.db import create_engine
    from service.schema import SchemaGate

    engine = create_engine(empty_database)
    try:
        gate = SchemaGate(engine, first_delay=0.01, max_delay=0.02)
        stop = asyncio.Event()
        waiting = asyncio.create_task(gate.wait(stop))
        stop.set()
        assert await waiting is False
        assert not gate.ready.is_set()
    finally:
        await engine.dispose()
