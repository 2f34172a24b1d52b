"""Finding 8: no throttle on ``/oauth/token`` or the console's sign-in (300 wrong secrets
in 1.7 s, all 401).

Failures are counted per client id and per source address in the database (every replica
shares the counts), over the current window and the previous one together; past the limit
the answer is 429 problem+json with ``Retry-After``, without checking the credentials, and
crossing the limit is logged and counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from service.app import create_app
from service.config import Settings
from service.db import get_session
from tests.fixtures.tokens import register

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
PER_CLIENT, PER_ADDRESS = 4, 7
WINDOW = 60
# A subject's own failures in the current window keep counting through the next one.
LONGEST_RETRY = 2 * WINDOW + 1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"auth_failures_per_client": PER_CLIENT, "auth_failures_per_address": PER_ADDRESS}
    )


def _problem_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(response.headers["retry-after"]) <= LONGEST_RETRY


async def _token(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    return await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )


class Clock:
    """The throttle's clock, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # Half a second before a window ends.
    clock = Clock(datetime(2026, 12, 4, 19, 35, 59, 500_000, tzinfo=UTC))
    monkeypatch.setattr("service.auth.throttle.utcnow", clock)
    return clock


class TestWindows:
    async def test_a_burst_across_a_window_boundary_is_counted_whole(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        statuses = [(await _token(client, created.client_id, "wrong")).status_code for _ in range(3)]
        clock.now += timedelta(seconds=0.6)  # 0.1 s into the next window
        statuses.append((await _token(client, created.client_id, "wrong")).status_code)
        assert statuses == [401] * PER_CLIENT

        refused = await _token(client, created.client_id, created.client_secret)
        _problem_429(refused)
        # Three of the four failures age out when this window ends.
        assert int(refused.headers["retry-after"]) == WINDOW

    async def test_failures_age_out_after_the_window_they_were_made_in_and_the_next(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        clock.now += timedelta(seconds=1)  # 0.5 s into a window
        for _ in range(PER_CLIENT):
            assert (await _token(client, created.client_id, "wrong")).status_code == 401

        refused = await _token(client, created.client_id, created.client_secret)
        _problem_429(refused)
        assert int(refused.headers["retry-after"]) == 2 * WINDOW

        clock.now += timedelta(seconds=WINDOW)
        refused = await _token(client, created.client_id, created.client_secret)
        _problem_429(refused)
        assert int(refused.headers["retry-after"]) == WINDOW

        clock.now += timedelta(seconds=WINDOW)
        granted = await _token(client, created.client_id, created.client_secret)
        assert granted.status_code == 200, granted.text


class TestTokenEndpoint:
    async def test_wrong_secrets_for_one_client_are_throttled_even_with_the_right_one(
        self, client: httpx.AsyncClient, session: AsyncSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        logging.getLogger("tellonce.auth.throttle").addHandler(caplog.handler)
        try:
            statuses = [
                (await _token(client, created.client_id, "wrong")).status_code for _ in range(PER_CLIENT)
            ]
            refused = await _token(client, created.client_id, created.client_secret)
        finally:
            logging.getLogger("tellonce.auth.throttle").removeHandler(caplog.handler)

        assert statuses == [401] * PER_CLIENT
        _problem_429(refused)
        assert any("repeated authentication failures" in r.getMessage() for r in caplog.records)
        metrics = (await client.get("/metrics")).text
        assert 'tellonce_auth_failures_total{endpoint="token"} 4.0' in metrics
        assert 'tellonce_auth_throttled_total{endpoint="token"} 1.0' in metrics

    async def test_guessing_many_client_ids_from_one_address_is_throttled(
        self, client: httpx.AsyncClient
    ) -> None:
        statuses = [(await _token(client, f"guess-{n}", "wrong")).status_code for n in range(PER_ADDRESS)]
        assert statuses == [401] * PER_ADDRESS
        _problem_429(await _token(client, "guess-next", "wrong"))

    async def test_the_count_is_shared_with_another_replica(
        self, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
    ) -> None:
        created = await register(session, "welfare", "consumer")
        for _ in range(PER_CLIENT):
            await _token(client, created.client_id, "wrong")
        other = create_app(settings)

        async def _test_session() -> AsyncIterator[AsyncSession]:
            yield session

        other.dependency_overrides[get_session] = _test_session
        async with other.router.lifespan_context(other):
            transport = httpx.ASGITransport(app=other)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as replica:
                _problem_429(await _token(replica, created.client_id, "wrong"))


@pytest.mark.usefixtures("catalog_loaded")
class TestConsoleSignIn:
    async def test_wrong_secrets_are_throttled(
        self, app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        created = await register(session, "register", "data-owner")

        async def sign_in(secret: str) -> httpx.Response:
            form = await client.get("/console/sign-in")
            found = CSRF.search(form.text)
            assert found is not None
            data = {"csrf_token": found.group(1), "client_id": created.client_id, "client_secret": secret}
            return await client.post("/console/sign-in", data=data)

        statuses = [(await sign_in("wrong")).status_code for _ in range(PER_CLIENT)]
        assert statuses == [401] * PER_CLIENT
        # The console shows its own HTML error page for a browser, with the same status and header.
        refused = await sign_in(created.client_secret or "")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= LONGEST_RETRY
        assert "Too many failed sign-in attempts" in refused.text

    async def test_a_client_id_no_client_can_have_is_refused_like_a_wrong_secret(
        self, client: httpx.AsyncClient
    ) -> None:
        # PostgreSQL cannot take a NUL as a query argument: the sign-in page answered a
        # problem+json 400 there (the store's), and the 401 sign-in page on SQLite.
        form = await client.get("/console/sign-in")
        found = CSRF.search(form.text)
        assert found is not None
        data = {"csrf_token": found.group(1), "client_id": "tc_\x00abc", "client_secret": "wrong"}
        response = await client.post("/console/sign-in", data=data)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("text/html")
