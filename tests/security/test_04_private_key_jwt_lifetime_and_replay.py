"""Finding 4: private_key_jwt assertions were long-lived credentials.

An assertion with ``exp`` a year ahead was accepted, and replay protection lived in
process memory, so the same assertion worked again after a restart or on another replica.
An assertion may now live at most ``TELLONCE_ASSERTION_MAX_LIFETIME_SECONDS`` (``exp - iat``
and ``exp - now``), and its ``jti`` is kept in the database until it expires.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fastapi import FastAPI
from joserfc.jwk import ECKey
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.app import create_app
from service.auth import service as auth_service
from service.auth.models import UsedAssertion
from service.auth.server import ASSERTION_LEEWAY, SeenAssertion
from service.auth.tokens import LEEWAY_SECONDS
from service.config import Settings
from service.db import get_session
from tests.fixtures.tokens import register, runtime


async def _key_client(session: AsyncSession) -> tuple[str, ECKey]:
    key = ECKey.generate_key("P-256", private=True)
    created = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
    return created.client_id, key


def _form(app: FastAPI, client_id: str, key: ECKey, **claims: Any) -> dict[str, str]:
    signed = private_key_jwt_sign(
        key, client_id, runtime(app).token_url, claims=claims or None, alg="ES256", expires_in=60
    )
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed if isinstance(signed, str) else signed.decode(),
    }


@pytest.fixture
async def replica(settings: Settings, session: AsyncSession) -> AsyncIterator[httpx.AsyncClient]:
    """A second process over the same database (another replica, or this one restarted)."""
    application = create_app(settings)

    async def _test_session() -> AsyncIterator[AsyncSession]:
        yield session
        await session.flush()

    application.dependency_overrides[get_session] = _test_session
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


class TestLifetime:
    async def test_an_assertion_valid_for_a_year_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
    ) -> None:
        client_id, key = await _key_client(session)
        now = int(time.time())
        form = _form(app, client_id, key, iat=now, exp=now + 365 * 24 * 3600)
        response = await client.post("/oauth/token", data=form)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        # Its signer is told why, not that the assertion was a replay.
        cap = settings.assertion_max_lifetime_seconds
        assert f"at most {cap} seconds" in response.json()["error_description"]

    async def test_exp_minus_iat_over_the_cap_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
    ) -> None:
        client_id, key = await _key_client(session)
        now = int(time.time())
        cap = settings.assertion_max_lifetime_seconds
        form = _form(app, client_id, key, iat=now - cap, exp=now + 60)
        response = await client.post("/oauth/token", data=form)
        assert response.status_code == 401
        assert f"at most {cap} seconds" in response.json()["error_description"]

    async def test_a_short_lived_assertion_is_accepted(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await _key_client(session)
        now = int(time.time())
        response = await client.post("/oauth/token", data=_form(app, client_id, key, iat=now, exp=now + 120))
        assert response.status_code == 200, response.text


class TestReplay:
    async def test_a_used_assertion_is_refused_by_another_replica(
        self, app: FastAPI, client: httpx.AsyncClient, replica: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await _key_client(session)
        form = _form(app, client_id, key)

        first = await client.post("/oauth/token", data=form)
        replayed = await replica.post("/oauth/token", data=form)

        assert first.status_code == 200, first.text
        assert replayed.status_code == 401
        assert replayed.json()["error"] == "invalid_client"

    async def test_the_jti_is_kept_in_the_database_until_it_expires(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        client_id, key = await _key_client(session)
        now = int(time.time())
        form = _form(app, client_id, key, jti="assertion-1", iat=now, exp=now + 120)
        assert (await client.post("/oauth/token", data=form)).status_code == 200
        row = (
            await session.execute(select(UsedAssertion).where(UsedAssertion.client_id == client_id))
        ).scalar_one()
        assert row.jti == "assertion-1"
        assert now + 120 <= row.expires_at.timestamp() <= now + 120 + 60
        # The same jti in a fresh assertion (new signature, same id) is a replay too.
        again = _form(app, client_id, key, jti="assertion-1", iat=now, exp=now + 90)
        assert (await client.post("/oauth/token", data=again)).status_code == 401
        count = (
            await session.execute(
                select(func.count()).select_from(UsedAssertion).where(UsedAssertion.client_id == client_id)
            )
        ).scalar_one()
        assert count == 1

    async def test_an_exp_with_a_fraction_is_not_replayed_after_its_jti_is_deleted(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # joserfc reads the clock in whole seconds: an exp of T + 0.5 is accepted until
        # T + 1 + leeway. Its jti was kept only until T + 0.5 + leeway, and deleted by the
        # next request after that, so a replay in the half second between was taken.
        client_id, key = await _key_client(session)
        exp = int(time.time()) + 60.5
        form = _form(app, client_id, key, jti="fractional", exp=exp)
        assert (await client.post("/oauth/token", data=form)).status_code == 200
        later = exp + ASSERTION_LEEWAY + 0.25
        monkeypatch.setattr("joserfc._rfc7519.claims._generate_now", lambda: int(later))
        monkeypatch.setattr(auth_service, "utcnow", lambda: datetime.fromtimestamp(later, UTC))
        replayed = await client.post("/oauth/token", data=form)
        assert replayed.status_code == 401, replayed.text
        assert replayed.json()["error_description"] == "The client assertion was already used."

    async def test_a_jti_is_kept_past_its_expiry_for_a_replica_whose_clock_is_behind(
        self, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A replica whose clock runs ``LEEWAY_SECONDS`` behind this one's still accepts the
        assertion: its id must still be there when that replica sees the replay."""
        now = datetime(2030, 1, 1, tzinfo=UTC)
        monkeypatch.setattr(auth_service, "utcnow", lambda: now)
        used = SeenAssertion("skewed-client", "skewed-1", now.timestamp() - LEEWAY_SECONDS)
        assert await auth_service.first_use_of_assertion(session, used)

        assert not await auth_service.first_use_of_assertion(session, used)

        # Expired by more than the skew: deleted on the way by the next use of any.
        now += timedelta(seconds=1)
        other = SeenAssertion("skewed-client", "skewed-2", now.timestamp() + 60)
        assert await auth_service.first_use_of_assertion(session, other)
        kept = await session.execute(
            select(UsedAssertion.jti).where(UsedAssertion.client_id == "skewed-client")
        )
        assert list(kept.scalars()) == ["skewed-2"]

    @pytest.mark.parametrize("jti", ["", "a\x00b", "j" * 256])
    async def test_a_jti_the_registry_cannot_keep_is_refused_alike_on_every_database(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, jti: str
    ) -> None:
        # SQLite kept a NUL and issued a token; PostgreSQL cannot store one (a problem+json
        # 400). Both now refuse it as the token endpoint refuses a client: 401 invalid_client.
        client_id, key = await _key_client(session)
        response = await client.post("/oauth/token", data=_form(app, client_id, key, jti=jti))
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert "jti" in response.json()["error_description"]
