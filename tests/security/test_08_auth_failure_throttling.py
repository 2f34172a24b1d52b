"""Finding 8: no throttle on ``/oauth/token`` or the console's sign-in (300 wrong secrets
in 1.7 s, all 401).

Failures are counted per client id at one source address and per source address in the
database (every replica shares the counts), over the current window and the previous one
together; past the limit the answer is 429 problem+json with ``Retry-After``, without
checking the credentials, and crossing the limit is logged and counted.

A client id is not a secret, so failures for it from one address must not lock the client
out at another: counted per client id alone, anyone who learnt the id could stop the
department's system getting tokens. A ceiling per client id across addresses exists only
when the operator sets one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fastapi import FastAPI
from joserfc.jwk import ECKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.app import create_app
from service.auth.models import AuthFailure
from service.config import Settings
from service.db import create_engine, get_session
from service.observability import JsonFormatter, TextFormatter
from tests.fixtures.tokens import register, runtime

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
# Failures allowed for one client id from one address, and from one address in all.
PER_CLIENT, PER_ADDRESS = 4, 7
# Documentation addresses (RFC 5737): someone who learnt the client id, and the department's
# system that holds its secret.
ATTACKER, DEPARTMENT = "203.0.113.9", "198.51.100.7"
WINDOW = 60
# A subject's own failures in the current window keep counting through the next one.
LONGEST_RETRY = 2 * WINDOW + 1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"auth_failures_per_client_address": PER_CLIENT, "auth_failures_per_address": PER_ADDRESS}
    )


@asynccontextmanager
async def from_address(app: Any, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP to ``app`` from a connection whose peer is ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _problem_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(response.headers["retry-after"]) <= LONGEST_RETRY
    # RFC 6749 5.2: the token endpoint's refusals are never cached, as its tokens are not.
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


async def _token(
    client: httpx.AsyncClient, client_id: str, secret: str, *, forwarded_for: str | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    return await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret), headers=headers
    )


def _assertion(app: FastAPI, client_id: str, key: ECKey) -> dict[str, str]:
    signed = private_key_jwt_sign(key, client_id, runtime(app).token_url, alg="ES256", expires_in=60)
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed if isinstance(signed, str) else signed.decode(),
    }


async def _console_sign_in(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    form = await client.get("/console/sign-in")
    found = CSRF.search(form.text)
    assert found is not None
    data = {"csrf_token": found.group(1), "client_id": client_id, "client_secret": secret}
    return await client.post("/console/sign-in", data=data)


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

    async def test_the_log_line_names_the_subject_it_throttles(
        self, app: FastAPI, session: AsyncSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The line is written as the service writes it (JSON lines, or plain text with
        TELLONCE_LOG_JSON=false), and says which client id at which address crossed the
        limit: a record that merely carries it is not a log an operator can read."""
        created = await register(session, "welfare", "consumer")
        logging.getLogger("tellonce.auth.throttle").addHandler(caplog.handler)
        try:
            async with from_address(app, ATTACKER) as attacker:
                for _ in range(PER_CLIENT):
                    await _token(attacker, created.client_id, "wrong")
        finally:
            logging.getLogger("tellonce.auth.throttle").removeHandler(caplog.handler)
        record = next(r for r in caplog.records if "repeated authentication failures" in r.getMessage())

        subject = f"client-address:{created.client_id} {ATTACKER}"
        line = json.loads(JsonFormatter().format(record))
        assert line["message"] == "repeated authentication failures: throttling"
        assert (line["subject"], line["endpoint"], line["failures"]) == (subject, "token", PER_CLIENT)
        assert f"subject={subject}" in TextFormatter().format(record)

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
        assert created.client_secret is not None
        statuses = [
            (await _console_sign_in(client, created.client_id, "wrong")).status_code
            for _ in range(PER_CLIENT)
        ]
        assert statuses == [401] * PER_CLIENT
        # The console shows its own HTML error page for a browser, with the same status and header.
        refused = await _console_sign_in(client, created.client_id, created.client_secret)
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


class TestOneAddressCannotLockAClientOut:
    async def test_failures_from_one_address_refuse_that_address_not_the_client_elsewhere(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        async with from_address(app, ATTACKER) as attacker, from_address(app, DEPARTMENT) as department:
            statuses = [
                (await _token(attacker, created.client_id, "wrong")).status_code for _ in range(PER_CLIENT)
            ]
            assert statuses == [401] * PER_CLIENT
            # The attacker's address is refused for this client, even with the right secret.
            _problem_429(await _token(attacker, created.client_id, created.client_secret))
            # The department's system, at its own address, still gets its token...
            granted = await _token(department, created.client_id, created.client_secret)
            assert granted.status_code == 200, granted.text
            # ...and a wrong secret of its own is counted there, not refused for the attacker's.
            assert (await _token(department, created.client_id, "wrong")).status_code == 401

    async def test_many_addresses_failing_for_one_client_do_not_lock_it_out(
        self, app: FastAPI, session: AsyncSession, settings: Settings
    ) -> None:
        # No ceiling per client id unless the operator sets one (see TestCeilingPerClient).
        assert settings.auth_failures_per_client is None
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        guessers = [f"203.0.113.{10 + n}" for n in range(3)]
        for address in guessers:
            async with from_address(app, address) as attacker:
                statuses = [
                    (await _token(attacker, created.client_id, "wrong")).status_code
                    for _ in range(PER_CLIENT)
                ]
                assert statuses == [401] * PER_CLIENT, address
                _problem_429(await _token(attacker, created.client_id, "wrong"))
        async with from_address(app, DEPARTMENT) as department:
            granted = await _token(department, created.client_id, created.client_secret)
            assert granted.status_code == 200, granted.text

    async def test_bad_assertions_for_a_key_client_refuse_only_their_address(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        key = ECKey.generate_key("P-256", private=True)
        created = await register(session, "welfare", "consumer", public_jwk=key.as_dict(private=False))
        stranger = ECKey.generate_key("P-256", private=True)
        async with from_address(app, ATTACKER) as attacker, from_address(app, DEPARTMENT) as department:
            statuses = [
                (
                    await attacker.post("/oauth/token", data=_assertion(app, created.client_id, stranger))
                ).status_code
                for _ in range(PER_CLIENT)
            ]
            assert statuses == [401] * PER_CLIENT
            _problem_429(await attacker.post("/oauth/token", data=_assertion(app, created.client_id, key)))
            granted = await department.post("/oauth/token", data=_assertion(app, created.client_id, key))
            assert granted.status_code == 200, granted.text

    async def test_failures_are_kept_per_client_at_an_address_and_per_address(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer")
        async with from_address(app, ATTACKER) as attacker:
            assert (await _token(attacker, created.client_id, "wrong")).status_code == 401
        subjects = set((await session.execute(select(AuthFailure.subject))).scalars())
        assert subjects == {f"client-address:{created.client_id} {ATTACKER}", f"address:{ATTACKER}"}


class TestIpv6:
    """A host or site is given a whole IPv6 /64 and could step through it, one address
    after another, past any limit per address: its failures are counted by the /64."""

    async def test_addresses_of_one_64_are_counted_together_and_another_64_is_served(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        for n in range(PER_CLIENT):
            async with from_address(app, f"2001:db8:1:2::{n + 1:x}") as attacker:
                assert (await _token(attacker, created.client_id, "wrong")).status_code == 401
        async with from_address(app, "2001:db8:1:2:ffff:ffff:ffff:fffe") as attacker:
            _problem_429(await _token(attacker, created.client_id, created.client_secret))
        async with from_address(app, "2001:db8:1:3::1") as department:
            granted = await _token(department, created.client_id, created.client_secret)
            assert granted.status_code == 200, granted.text
        subjects = set((await session.execute(select(AuthFailure.subject))).scalars())
        assert subjects == {
            f"client-address:{created.client_id} 2001:db8:1:2::/64",
            "address:2001:db8:1:2::/64",
        }

    async def test_an_ipv4_address_mapped_into_ipv6_is_counted_as_itself(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        created = await register(session, "welfare", "consumer")
        async with from_address(app, f"::ffff:{ATTACKER}") as mapped:
            assert (await _token(mapped, created.client_id, "wrong")).status_code == 401
        subjects = set((await session.execute(select(AuthFailure.subject))).scalars())
        assert subjects == {f"client-address:{created.client_id} {ATTACKER}", f"address:{ATTACKER}"}


class TestProxies:
    async def test_the_address_is_the_one_a_trusted_proxy_names_and_no_other(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        """The throttle reads the source address the audit records: the connection's peer,
        or what ``X-Forwarded-For`` says when that peer is a proxy uvicorn trusts
        (``FORWARDED_ALLOW_IPS``). So an attacker who names the department's address
        itself, from an address no one trusts, is counted at its own address."""
        # What `tellonce serve` puts in front of the app (uvicorn's own middleware), trusting
        # a proxy on 127.0.0.1; uvicorn types an ASGI app more narrowly than FastAPI does.
        proxied = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")  # type: ignore[arg-type]
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        async with from_address(proxied, ATTACKER) as direct, from_address(proxied, "127.0.0.1") as proxy:
            for _ in range(PER_CLIENT):
                response = await _token(direct, created.client_id, "wrong", forwarded_for=DEPARTMENT)
                assert response.status_code == 401
            _problem_429(
                await _token(direct, created.client_id, created.client_secret, forwarded_for=DEPARTMENT)
            )
            granted = await _token(proxy, created.client_id, created.client_secret, forwarded_for=DEPARTMENT)
            assert granted.status_code == 200, granted.text
            _problem_429(
                await _token(proxy, created.client_id, created.client_secret, forwarded_for=ATTACKER)
            )


CEILING = 6


class TestCeilingPerClient:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"auth_failures_per_client": CEILING})

    async def test_a_ceiling_the_operator_sets_refuses_the_client_at_every_address(
        self, app: FastAPI, session: AsyncSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        created = await register(session, "welfare", "consumer")
        assert created.client_secret is not None
        per_address = CEILING // 2  # below PER_CLIENT: no address reaches its own limit
        logging.getLogger("tellonce.auth.throttle").addHandler(caplog.handler)
        try:
            for address in ("203.0.113.10", "203.0.113.11"):
                async with from_address(app, address) as attacker:
                    statuses = [
                        (await _token(attacker, created.client_id, "wrong")).status_code
                        for _ in range(per_address)
                    ]
                    assert statuses == [401] * per_address
        finally:
            logging.getLogger("tellonce.auth.throttle").removeHandler(caplog.handler)
        async with from_address(app, DEPARTMENT) as department:
            _problem_429(await _token(department, created.client_id, created.client_secret))
        # Crossing the ceiling is logged under the client id; no address crossed its own limit.
        crossed = {
            getattr(record, "subject", None)
            for record in caplog.records
            if "repeated authentication failures" in record.getMessage()
        }
        assert crossed == {f"client:{created.client_id}"}


class TestAcrossReplicas:
    async def test_one_replica_refuses_the_attacker_another_serves_the_department(
        self, settings: Settings, scratch_database: str
    ) -> None:
        """Two apps, each with its own engine on one database, as two replicas: the counts
        they commit are the ones the other reads (SQLite file or PostgreSQL)."""
        engine = create_engine(scratch_database)
        try:
            async with AsyncSession(engine) as setup:
                created = await register(setup, "welfare", "consumer")
                await setup.commit()
        finally:
            await engine.dispose()
        assert created.client_secret is not None
        replica = settings.model_copy(update={"database_url": scratch_database, "run_workers": False})
        first, second = create_app(replica), create_app(replica)
        async with first.router.lifespan_context(first), second.router.lifespan_context(second):
            async with from_address(first, ATTACKER) as attacker:
                for _ in range(PER_CLIENT):
                    assert (await _token(attacker, created.client_id, "wrong")).status_code == 401
            async with from_address(second, ATTACKER) as attacker:
                _problem_429(await _token(attacker, created.client_id, created.client_secret))
            for app in (first, second):
                async with from_address(app, DEPARTMENT) as department:
                    granted = await _token(department, created.client_id, created.client_secret)
                    assert granted.status_code == 200, granted.text


@pytest.mark.usefixtures("catalog_loaded")
class TestConsoleSignInAtAnotherAddress:
    async def test_failures_from_one_address_do_not_stop_the_owner_signing_in_at_another(
        self, app: FastAPI, session: AsyncSession
    ) -> None:
        created = await register(session, "register", "data-owner")
        assert created.client_secret is not None
        async with from_address(app, ATTACKER) as attacker, from_address(app, DEPARTMENT) as owner:
            for _ in range(PER_CLIENT):
                assert (await _console_sign_in(attacker, created.client_id, "wrong")).status_code == 401
            refused = await _console_sign_in(attacker, created.client_id, created.client_secret)
            assert refused.status_code == 429
            signed_in = await _console_sign_in(owner, created.client_id, created.client_secret)
            assert signed_in.status_code == 303, signed_in.text
