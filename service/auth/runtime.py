"""The auth objects one process keeps for its lifetime, on ``app.state.auth``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request

from service.auth import service as auth_service
from service.auth.keys import SigningKeys, ensure_signing_key
from service.auth.ratelimit import ClientRateLimit, RateLimiter, SharedRateLimiter
from service.auth.server import TellonceAuthorizationServer
from service.auth.tokens import TokenIssuer, TokenVerifier
from service.config import Settings
from service.hotpath import app_state
from service.policy.epoch import SharedEpochReads

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a secret


class ClientStanding:
    """Clients' standing by revocation epoch, bounded; a moved epoch misses every entry."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.entries: dict[str, tuple[object, auth_service.ClientStatus | None]] = {}

    def get(self, client_id: str, epoch: object) -> auth_service.ClientStatus | None:
        entry = self.entries.get(client_id)
        return entry[1] if entry is not None and entry[0] == epoch else None

    def put(self, client_id: str, epoch: object, status: auth_service.ClientStatus | None) -> None:
        if status is None or status.disabled:
            self.entries.pop(client_id, None)
            return
        if len(self.entries) >= self.limit:
            self.entries.clear()
        self.entries[client_id] = (epoch, status)


@dataclass
class AuthRuntime:
    settings: Settings
    keys: SigningKeys
    issuer: TokenIssuer
    verifier: TokenVerifier
    limiter: ClientRateLimit
    server: TellonceAuthorizationServer
    # Clients' standing as last read, per process (each uvicorn worker has its own).
    standing: ClientStanding = field(default_factory=ClientStanding)
    # The per-request epoch read, shared by concurrent requests (never one begun before them).
    epochs: SharedEpochReads = field(default_factory=SharedEpochReads)

    @property
    def issuer_url(self) -> str:
        return self.issuer.issuer

    @property
    def token_url(self) -> str:
        return self.server.token_url

    @classmethod
    def create(cls, settings: Settings) -> AuthRuntime:
        # Every process (each uvicorn worker) loads the keys itself from data_dir;
        # only development and test may make the first one.
        ensure_signing_key(settings.data_dir, may_generate=settings.allows_generated_keys)
        keys = SigningKeys(settings.data_dir, settings.access_token_ttl_seconds)
        issuer_url = settings.public_url.rstrip("/")
        issuer = TokenIssuer(keys, issuer_url, settings.token_audience, settings.access_token_ttl_seconds)
        verifier = TokenVerifier(keys, issuer_url, settings.token_audience, settings.token_cache_size)
        limiter: ClientRateLimit = (
            SharedRateLimiter(settings.client_rate_per_second, settings.client_rate_burst)
            if settings.shares_rate_limit
            else RateLimiter(settings.client_rate_per_second, settings.client_rate_burst)
        )
        server = TellonceAuthorizationServer(
            issuer, issuer_url + TOKEN_PATH, settings.assertion_max_lifetime_seconds
        )
        return cls(settings, keys, issuer, verifier, limiter, server)


@asynccontextmanager
async def auth_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    app.state.auth = AuthRuntime.create(app.state.settings)
    yield


def get_auth(request: Request) -> AuthRuntime:
    runtime: AuthRuntime | None = app_state(request).get("auth")
    if runtime is None:
        # An app used without its lifespan (rare: some test clients) still authenticates.
        runtime = AuthRuntime.create(request.app.state.settings)
        request.app.state.auth = runtime
    return runtime
