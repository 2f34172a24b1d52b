"""A real ``tellonce serve`` for the client library's tests, with the test catalog, its
agreements and one client per role (made in-process: the CLI takes seconds per client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from tellonce_client import ClientSecret, PrivateKeyJwt, RetryPolicy, TellonceClient

from service.auth import service as auth_service
from service.config import Settings
from service.db import Database
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from tests.conftest import TEST_POLICIES, server_env
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import LiveServer, start_server
from tests.fixtures.webhooks import WebhookReceiver

# name -> (department, roles, rate per second or None for the default)
CLIENTS: dict[str, tuple[str, str, float | None]] = {
    "registrar": ("register", "registrar,writer", None),
    "owner": ("register", "data-owner", None),
    "auditor": ("audit-office", "auditor", None),
    "portal": ("portal", "citizen-portal", None),
    "welfare": ("welfare", "consumer", None),
    "welfare-admin": ("welfare", "admin", None),
    # One request at a time, refilled every two seconds: the retry tests' 429s.
    "throttled": ("welfare", "consumer", 0.5),
    "throttled-no-retry": ("welfare", "consumer", 0.5),
    "throttled-renewal": ("welfare", "consumer", 0.5),
}


@dataclass
class ClientSite:
    server: LiveServer
    secrets: dict[str, tuple[str, str]]
    jwt_client_id: str
    jwt_private_pem: bytes
    jwt_key_id: str
    # The server's database, for a test that changes what an operator would (the catalog).
    settings: Settings
    open_clients: list[TellonceClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.base_url

    def client(self, name: str, *, retry: RetryPolicy | None = None) -> TellonceClient:
        client_id, secret = self.secrets[name]
        made = TellonceClient(self.url, ClientSecret(client_id, secret), retry=retry)
        self.open_clients.append(made)
        return made


async def _prepare(
    url: str, data: Path, root_key: str, jwk: dict[str, str]
) -> tuple[dict[str, tuple[str, str]], str]:
    settings = Settings(env="test", database_url=url, data_dir=data, root_key=root_key)  # type: ignore[arg-type]
    database = Database(settings)
    secrets: dict[str, tuple[str, str]] = {}
    try:
        async with database.sessions.begin() as session:
            await policy_service.apply_folder(
                session, load_policy_folder(TEST_POLICIES), author="tests", reason="client tests", prune=False
            )
            for name, (department, roles, rate) in CLIENTS.items():
                created = await auth_service.create_client(
                    session,
                    department=department,
                    roles=roles.split(","),
                    rate_per_second=rate,
                    rate_burst=1 if rate is not None else None,
                )
                assert created.client_secret is not None
                secrets[name] = (created.client_id, created.client_secret)
            by_key = await auth_service.create_client(
                session, department="welfare", roles=["consumer"], public_jwk=jwk
            )
    finally:
        await database.dispose()
    return secrets, by_key.client_id


@pytest.fixture(scope="module")
async def client_site(
    database_url: str, root_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ClientSite]:
    url = await create_scratch_database(database_url)
    data = tmp_path_factory.mktemp("client-data")
    private_key = ec.generate_private_key(ec.SECP256R1())
    key_id = "client-test-key"
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": key_id}
    try:
        secrets, jwt_client_id = await _prepare(url, data, root_key, jwk)
        env = server_env(url, data, root_key) | {
            "TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS": "50",
            "TELLONCE_WEBHOOK_ALLOW_PRIVATE": "true",
            "TELLONCE_EVENTS_POLL_INTERVAL_SECONDS": "0.1",
            "TELLONCE_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        }
        # public_url: the token endpoint's URL is a private_key_jwt assertion's audience.
        server = await asyncio.to_thread(start_server, env, data / "server.log", timeout=90, public_url=True)
        pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        settings = Settings(env="test", database_url=url, data_dir=data, root_key=root_key)  # type: ignore[arg-type]
        site = ClientSite(server, secrets, jwt_client_id, pem, key_id, settings)
        try:
            yield site
        finally:
            for made in site.open_clients:
                await made.aclose()
            server.stop()
            assert "Traceback" not in server.log(), server.log()
    finally:
        await drop_scratch_database(url)


@pytest.fixture
def jwt_auth(client_site: ClientSite) -> PrivateKeyJwt:
    return PrivateKeyJwt(
        client_site.jwt_client_id, client_site.jwt_private_pem, key_id=client_site.jwt_key_id
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running
