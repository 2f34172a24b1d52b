"""``TELLONCE_KEY_PROVIDER=pkcs11`` against SoftHSM2: a real ``tellonce serve`` keeps its
KEKs, blind-index root, checkpoint key and webhook-secret key in a token of the test's own.

What is shown: KEKs are made in the token and cannot be read out of it; no key that
protects citizen data is in the database or the data directory; a copy of the database
without the token decrypts nothing; ``tellonce keys rotate`` works as with the local
provider, across processes sharing the token.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive, NoSuchKey
from sqlalchemy import select
from tellonce_client import ClientSecret, TellonceClient

from service.auth import service as auth_service
from service.config import Settings
from service.crypto.errors import KeyUnwrapError
from service.crypto.hsm import AUDIT_SIGNING_LABEL, Pkcs11KeyProvider, open_token
from service.crypto.keyring import DATA_KEYS, KEKS, Keyring
from service.crypto.material import KeyMaterial
from service.crypto.providers import LocalKeyProvider
from service.db import Base, Database, create_engine
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from tests.conftest import REPO_ROOT, TEST_POLICIES, server_env
from tests.fixtures.databases import (
    SQLITE_PREFIX,
    create_scratch_database,
    drop_scratch_database,
    is_postgres,
)
from tests.fixtures.server import LiveServer, start_server
from tests.fixtures.softhsm import TOKENS, SoftHsm
from tests.fixtures.webhooks import WebhookReceiver

pytestmark = pytest.mark.e2e

PURPOSE = "benefit-eligibility"
PEOPLE = {"NI300001": "Ada", "NI300002": "Grace", "NI300003": "Mary"}


@dataclass
class HsmSite:
    server: LiveServer
    database_url: str
    data_dir: Path
    env: dict[str, str]
    settings: Settings
    secrets: dict[str, tuple[str, str]]
    citizens: dict[str, str]
    webhook_secret: str

    def client(self, name: str) -> TellonceClient:
        client_id, secret = self.secrets[name]
        return TellonceClient(self.server.base_url, ClientSecret(client_id, secret))


def _hsm_settings(softhsm: SoftHsm, url: str, data: Path, token: str = TOKENS[0]) -> Settings:
    return Settings(
        env="test",
        database_url=url,
        data_dir=data,
        key_provider="pkcs11",
        pkcs11_module=softhsm.module,
        pkcs11_token_label=token,
        pkcs11_pin=softhsm.env()["TELLONCE_PKCS11_PIN"],  # type: ignore[arg-type]
    )


async def _prepare(settings: Settings) -> dict[str, tuple[str, str]]:
    database = Database(settings)
    made: dict[str, tuple[str, str]] = {}
    try:
        async with database.sessions.begin() as session:
            await policy_service.apply_folder(
                session, load_policy_folder(TEST_POLICIES), author="tests", reason="hsm tests"
            )
            for name, department, roles in (
                ("registrar", "register", ["registrar", "writer"]),
                ("welfare", "welfare", ["consumer"]),
            ):
                created = await auth_service.create_client(session, department=department, roles=roles)
                assert created.client_secret is not None
                made[name] = (created.client_id, created.client_secret)
    finally:
        await database.dispose()
    return made


@pytest.fixture(scope="module")
async def hsm_site(
    softhsm: SoftHsm, database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HsmSite]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("hsm-data")
    env = {
        name: value for name, value in server_env(url, data, root_key).items() if name != "TELLONCE_ROOT_KEY"
    }
    env |= softhsm.env() | {"TELLONCE_WEBHOOK_ALLOW_PRIVATE": "true"}
    settings = _hsm_settings(softhsm, url, data)
    try:
        secrets = await _prepare(settings)
        server = await asyncio.to_thread(
            start_server, env, data.parent / f"{data.name}-server.log", timeout=90
        )
        try:
            citizens: dict[str, str] = {}
            with WebhookReceiver() as receiver:
                async with (
                    TellonceClient(server.base_url, ClientSecret(*secrets["registrar"])) as registrar,
                    TellonceClient(server.base_url, ClientSecret(*secrets["welfare"])) as welfare,
                ):
                    subscription = await welfare.subscribe(
                        ["address"], "address-update", webhook_url=receiver.url
                    )
                    for national_id, name in PEOPLE.items():
                        created = await registrar.register_citizen(
                            national_id,
                            {"given_name": name, "date_of_birth": "1970-01-01", "address": "1 Elm"},
                        )
                        citizens[national_id] = created.id
                        read = await welfare.read_citizen(created.id, PURPOSE, ["given_name"])
                        assert read.fields["given_name"].value == name
            assert subscription.secret is not None
            yield HsmSite(server, url, data, env, settings, secrets, citizens, subscription.secret)
        finally:
            server.stop()
            assert "Traceback" not in server.log(), server.log()
    finally:
        await drop_scratch_database(url)


async def _every_stored_byte(database_url: str) -> bytes:
    """Every value of every table, as bytes; plus the SQLite files themselves."""
    engine = create_engine(database_url)
    chunks: list[bytes] = []
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                for row in (await conn.execute(select(table))).all():
                    for value in row:
                        chunks.append(value if isinstance(value, bytes) else str(value).encode())
    finally:
        await engine.dispose()
    if not is_postgres(database_url):
        path = Path(database_url[len(SQLITE_PREFIX) :])
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").exists():
                chunks.append(Path(f"{path}{suffix}").read_bytes())
    return b"\x00".join(chunks)


async def _unwrapped_data_keys(settings: Settings) -> dict[int, bytes]:
    """Every live data key, unwrapped by the token under its KEK."""
    keyring = Keyring(Pkcs11KeyProvider.from_settings(settings))
    engine = create_engine(settings.database_url)
    found: dict[int, bytes] = {}
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(DATA_KEYS).where(DATA_KEYS.c.wrapped_key.is_not(None)))).all()
            for row in rows:
                kek = await keyring.kek(conn, row.department, row.kek_version)
                found[row.id] = kek.unwrap(row.wrapped_key, row.citizen_id).reveal()
    finally:
        await engine.dispose()
    return found


class TestKeysInTheToken:
    async def test_keks_are_token_keys_that_cannot_be_read_out(self, hsm_site: HsmSite) -> None:
        engine = create_engine(hsm_site.database_url)
        try:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(select(KEKS.c.department, KEKS.c.provider, KEKS.c.wrapped_key))
                ).all()
        finally:
            await engine.dispose()
        assert {row.department for row in rows} == {"register"}
        token = open_token(hsm_site.settings)
        for row in rows:
            assert row.provider == "pkcs11"
            assert row.wrapped_key.startswith(b"pkcs11:tellonce/kek/register/v1/")
            key = token.find(ObjectClass.SECRET_KEY, row.wrapped_key.removeprefix(b"pkcs11:").decode())
            with token.lock:
                assert key[Attribute.EXTRACTABLE] is False
                assert key[Attribute.NEVER_EXTRACTABLE] is True
                assert key[Attribute.SENSITIVE] is True
                assert key[Attribute.VALUE_LEN] == 32
                with pytest.raises(AttributeSensitive):
                    key[Attribute.VALUE]

    async def test_the_checkpoint_key_is_in_the_token(self, hsm_site: HsmSite) -> None:
        async with hsm_site.client("welfare") as welfare:
            await welfare.catalog()
        token = open_token(hsm_site.settings)
        private = token.find(ObjectClass.PRIVATE_KEY, AUDIT_SIGNING_LABEL)
        with token.lock:
            assert private[Attribute.EXTRACTABLE] is False
        assert not (hsm_site.data_dir / "audit-signing.key").exists()

    async def test_no_key_material_in_the_database_or_data_directory(self, hsm_site: HsmSite) -> None:
        data_keys = await _unwrapped_data_keys(hsm_site.settings)
        assert len(data_keys) == len(PEOPLE)
        stored = await _every_stored_byte(hsm_site.database_url)
        files = [path for path in hsm_site.data_dir.rglob("*") if path.is_file()]
        stored += b"\x00".join(path.read_bytes() for path in files)
        for raw in data_keys.values():
            assert raw not in stored
            assert base64.b64encode(raw) not in stored
        webhook_key = base64.b64decode(hsm_site.webhook_secret.removeprefix("whsec_"))
        assert hsm_site.webhook_secret.encode() not in stored
        assert webhook_key not in stored
        # No root key, no audit seed: only the access-token signing keys live here.
        assert {path.relative_to(hsm_site.data_dir).parts[0] for path in files} <= {"signing-keys"}

    async def test_a_copied_database_without_the_token_decrypts_nothing(
        self, hsm_site: HsmSite, softhsm: SoftHsm, tmp_path: Path
    ) -> None:
        url = hsm_site.database_url
        if not is_postgres(url):
            copy = tmp_path / "copied.db"
            for suffix in ("", "-wal"):  # what copying the data folder takes
                source = Path(f"{url[len(SQLITE_PREFIX) :]}{suffix}")
                if source.exists():  # SQLite removes the WAL when the last connection closes
                    shutil.copy(source, f"{copy}{suffix}")
            url = f"{SQLITE_PREFIX}{copy}"
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                ids = list((await conn.execute(select(DATA_KEYS.c.id))).scalars())
                assert ids
                elsewhere = Keyring(
                    Pkcs11KeyProvider.from_settings(_hsm_settings(softhsm, url, tmp_path, TOKENS[1]))
                )
                with pytest.raises(KeyUnwrapError):
                    await elsewhere.data_keys(conn, ids)
                local = Keyring(LocalKeyProvider(KeyMaterial(os.urandom(32))))
                with pytest.raises(KeyUnwrapError):
                    await local.data_keys(conn, ids)
                # Nor can a national id be looked up: its blind index is keyed in the token.
                home = Keyring(Pkcs11KeyProvider.from_settings(hsm_site.settings))
                assert elsewhere.blind_index("national_id", "NI300001") != home.blind_index(
                    "national_id", "NI300001"
                )
        finally:
            await engine.dispose()


class TestRotation:
    async def test_keys_rotate_moves_every_data_key_to_a_new_token_kek(self, hsm_site: HsmSite) -> None:
        before = await _unwrapped_data_keys(hsm_site.settings)
        engine = create_engine(hsm_site.database_url)
        try:
            async with engine.connect() as conn:
                v1_reference = (
                    await conn.execute(select(KEKS.c.wrapped_key).where(KEKS.c.version == 1))
                ).scalar_one()
        finally:
            await engine.dispose()
        completed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service.cli", "keys", "rotate", "--department", "register"],
            cwd=REPO_ROOT,
            env={**os.environ, **hsm_site.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr
        assert "rotated to KEK v2" in completed.stdout
        engine = create_engine(hsm_site.database_url)
        try:
            async with engine.connect() as conn:
                keks = {row.version: row for row in (await conn.execute(select(KEKS))).all()}
                versions = set((await conn.execute(select(DATA_KEYS.c.kek_version))).scalars())
        finally:
            await engine.dispose()
        assert keks[1].status == "retired"
        assert keks[1].wrapped_key is None
        assert keks[2].status == "active"
        assert keks[2].wrapped_key.startswith(b"pkcs11:tellonce/kek/register/v2/")
        assert versions == {2}
        # The same data keys, now under v2; v1 is gone from the token too.
        assert await _unwrapped_data_keys(hsm_site.settings) == before
        token = open_token(hsm_site.settings)
        with pytest.raises(NoSuchKey):
            token.find(ObjectClass.SECRET_KEY, v1_reference.removeprefix(b"pkcs11:").decode())
        # The running server reads the old citizens and registers a new one under v2.
        async with hsm_site.client("registrar") as registrar, hsm_site.client("welfare") as welfare:
            for national_id, name in PEOPLE.items():
                read = await welfare.read_citizen(hsm_site.citizens[national_id], PURPOSE, ["given_name"])
                assert read.fields["given_name"].value == name
            created = await registrar.register_citizen("NI300009", {"given_name": "Rosalind"})
            assert (await welfare.lookup("NI300009", PURPOSE)).id == created.id
            read = await welfare.read_citizen(created.id, PURPOSE, ["given_name"])
            assert read.fields["given_name"].value == "Rosalind"
