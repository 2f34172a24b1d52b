"""``tellonce_client`` against a real server: tokens, retries, ETags, cursors, errors,
webhooks and audit proofs, as a department's system would use them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from tellonce_client import (
    ApiError,
    ClientSecret,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    PrivateKeyJwt,
    ProofError,
    RateLimited,
    RetryPolicy,
    TellonceClient,
    TokenError,
    WebhookVerificationError,
    WebhookVerifier,
    etag_of,
    open_checkpoint,
    retry_after_seconds,
    verify_checkpoints,
    verify_entry,
)
from tellonce_client import models as m

from service.auth import service as auth_service
from service.auth.models import Client
from service.auth.secrets import hash_secret
from service.catalog import service as catalog_service
from service.db import Database
from tests.client.conftest import ClientSite
from tests.fixtures.webhooks import WebhookReceiver, stamped_at

pytestmark = pytest.mark.e2e

PURPOSE = "benefit-eligibility"


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RevokedFirst(ClientSecret):
    """Hands out first a token the service refuses (as one revoked since it was cached), and
    counts the tokens it fetches."""

    fetches = 0
    refused_once = False

    async def token(self, http: httpx.AsyncClient, token_url: str, *, renew: bool = False) -> str:
        if not self.refused_once:
            self.refused_once = True
            return "revoked-token"
        return await super().token(http, token_url, renew=renew)

    def _form(self, token_url: str) -> tuple[dict[str, str], httpx.Auth | None]:
        self.fetches += 1
        return super()._form(token_url)


async def _register(site: ClientSite, national_id: str) -> str:
    registrar = site.client("registrar")
    created = await registrar.register_citizen(
        national_id, {"given_name": "Ada", "date_of_birth": "1980-02-03", "address": "1 High St"}
    )
    return created.id


# A caller-supplied id that, unencoded, would climb a route, add a query and cut a fragment.
ODD_ID = "a/../b?x=1#f"


def _id_calls(client: TellonceClient, odd: str) -> list[Awaitable[object]]:
    """Every call with a caller-supplied path segment, ``odd`` as that segment."""
    agreement = m.AgreementIn(id="odd", consumer="welfare", fields=["address"], actions=["read"])
    return [
        client.read_citizen(odd, PURPOSE),
        client.write_fields(odd, {"address": "x"}, "moved"),
        client.field_history(odd, "address", PURPOSE),
        client.field_history("c1", odd, PURPOSE),
        client.verify(odd, PURPOSE, {}),
        client.erase_citizen(odd, "request", "art. 17"),  # type: ignore[arg-type]
        client.access_log(odd),
        client.give_consent(odd, "agreement"),
        client.change_consent(odd, "consent", "paused"),
        client.change_consent("c1", odd, "paused"),
        client.list_consents(odd),
        client.object_to(odd, "agreement"),
        client.object_to("c1", odd),
        client.withdraw_objection("c1", odd),
        client.list_objections(odd),
        client.get_agreement(odd),
        client.replace_agreement(odd, agreement, if_match='"1"'),
        client.revoke_agreement(odd),
        client.agreement_versions(odd),
        client.close_case(odd),
        client.disable_client(odd),
        client.get_subscription(odd),
        client.delete_subscription(odd),
        client.disable_subscription(odd),
        client.enable_subscription(odd),
        client.rotate_secret(odd),
        client.deliveries(odd),
        client.redeliver(odd),
        client.tile(odd.replace("/", "_")),
    ]


class TestPaths:
    @pytest.mark.parametrize(("odd", "sent"), [(ODD_ID, "a%2F..%2Fb%3Fx%3D1%23f"), ("..", "%2E%2E")])
    async def test_an_id_reaches_the_server_as_one_segment(
        self, client_site: ClientSite, odd: str, sent: str
    ) -> None:
        """Whatever an id holds, the request line carries it as one percent-encoded segment
        of the route asked for, with no query it did not mean; the server answers that
        route's refusal, never another route's answer."""
        answered: list[httpx.Response] = []
        client_id, secret = client_site.secrets["welfare"]
        async with TellonceClient(
            client_site.url, ClientSecret(client_id, secret), on_response=answered.append
        ) as client:
            calls = _id_calls(client, odd)
            for call in calls:
                with pytest.raises(ApiError):
                    await call
        assert len(answered) == len(calls)
        for response in answered:
            url = response.request.url
            segments = url.raw_path.decode().split("?")[0].split("/")
            assert sent.replace("%2F", "_") in segments or sent in segments, url.raw_path
            assert b"x=1" not in url.query, url.raw_path
            assert response.status_code in {403, 404, 405, 422}, (url.raw_path, response.status_code)


class TestTokens:
    async def test_client_secret_reads_the_catalog(self, client_site: ClientSite) -> None:
        catalog = await client_site.client("welfare").catalog()
        assert "welfare" in {department.id for department in catalog.departments}

    async def test_private_key_jwt_authenticates(
        self, client_site: ClientSite, jwt_auth: PrivateKeyJwt
    ) -> None:
        async with TellonceClient(client_site.url, jwt_auth) as client:
            catalog = await client.catalog()
        assert catalog.version >= 1

    async def test_token_is_reused_then_renewed_before_expiry(self, client_site: ClientSite) -> None:
        clock = FakeClock()
        client_id, secret = client_site.secrets["welfare"]
        auth = ClientSecret(client_id, secret, refresh_margin=30, clock=clock)
        async with httpx.AsyncClient() as http:
            token_url = f"{client_site.url}/oauth/token"
            first = await auth.token(http, token_url)
            # The server's tokens live 300 s: renewed 30 s before that, not at expiry.
            clock.now += 269
            assert await auth.token(http, token_url) == first
            clock.now += 2
            renewed = await auth.token(http, token_url)
        assert renewed != first
        async with TellonceClient(client_site.url, auth) as client:
            assert (await client.catalog()).version >= 1

    async def test_concurrent_callers_share_one_fetch(self, client_site: ClientSite) -> None:
        client_id, secret = client_site.secrets["welfare"]
        auth = ClientSecret(client_id, secret)
        async with httpx.AsyncClient() as http:
            tokens = await asyncio.gather(
                *(auth.token(http, f"{client_site.url}/oauth/token") for _ in range(5))
            )
        assert len(set(tokens)) == 1

    async def test_a_wrong_secret_is_a_token_error(self, client_site: ClientSite) -> None:
        client_id, _secret = client_site.secrets["welfare"]
        async with TellonceClient(client_site.url, ClientSecret(client_id, "not-the-secret")) as client:
            with pytest.raises(TokenError) as refused:
                await client.catalog()
        # RFC 6749 5.2: the server's error and its description are kept, and shown.
        assert refused.value.status == 401
        assert refused.value.error == "invalid_client"
        assert refused.value.error_description
        assert refused.value.error_description in str(refused.value)
        assert "not-the-secret" not in str(refused.value)

    def test_a_token_errors_uri_is_kept_and_odd_members_left_out(self) -> None:
        body = {
            "error": "invalid_client",
            "error_description": "Client authentication failed.",
            "error_uri": "https://docs.example/errors#invalid_client",
        }
        error = TokenError.from_response(httpx.Response(401, json=body), "tc_x")
        assert (error.error, error.error_description, error.error_uri) == tuple(body.values())
        assert str(error) == (
            "the token endpoint answered 401 for tc_x: invalid_client: Client authentication failed."
            " (see https://docs.example/errors#invalid_client)"
        )
        odd = TokenError.from_response(
            httpx.Response(400, json={"error": 5, "error_description": ["x"]}), "tc_x"
        )
        assert (odd.error, odd.error_description, odd.error_uri) == (None, None, None)
        assert str(odd) == "the token endpoint answered 400 for tc_x"
        page = TokenError.from_response(httpx.Response(502, text="<html>bad gateway</html>"), "tc_x")
        assert (page.status, page.error) == (502, None)

    def test_basic_credentials_are_form_encoded(self) -> None:
        """RFC 6749 2.3.1: id and secret are form-encoded before they are Basic's user and
        password, so a ":" in the id is no separator; the server's decoding gives them back."""
        client_id, secret = "id:with+odd%chars é", "s p+a:c%41/?"
        auth = ClientSecret(client_id, secret)._form("http://127.0.0.1/oauth/token")[1]
        assert auth is not None
        header = next(auth.auth_flow(httpx.Request("POST", "http://127.0.0.1/oauth/token")))
        authorization = header.headers["Authorization"]
        sent = base64.b64decode(authorization.removeprefix("Basic ")).decode("ascii")
        assert sent == "id%3Awith%2Bodd%25chars%20%C3%A9:s%20p%2Ba%3Ac%2541%2F%3F"
        assert extract_basic_authorization({"Authorization": authorization}) == (client_id, secret)
        assert unquote_plus(sent.split(":")[0]) == client_id
        assert unquote_plus(sent.split(":")[1]) == secret

    async def test_a_secret_that_form_encoding_changes_authenticates(self, client_site: ClientSite) -> None:
        """The server issues ids and secrets form-encoding leaves alone; a stored secret with
        ":", "+", "%XX" and a space in it, sent by the client, is the secret the server checks."""
        secret = "s p+a:c%41"
        database = Database(client_site.settings)
        try:
            async with database.sessions.begin() as session:
                created = await auth_service.create_client(session, department="welfare", roles=["consumer"])
                stored = await session.get(Client, created.client_id)
                assert stored is not None
                stored.secret_hash = hash_secret(secret)
        finally:
            await database.dispose()
        async with TellonceClient(client_site.url, ClientSecret(created.client_id, secret)) as client:
            assert (await client.catalog()).version >= 1

    def test_secrets_stay_out_of_reprs(self, client_site: ClientSite, jwt_auth: PrivateKeyJwt) -> None:
        client_id, secret = client_site.secrets["welfare"]
        shown = repr(ClientSecret(client_id, secret)) + repr(jwt_auth)
        assert secret not in shown
        assert "PRIVATE" not in shown


class TestRetries:
    async def test_a_429_is_retried_after_retry_after(self, client_site: ClientSite) -> None:
        seen: list[int] = []
        client_id, secret = client_site.secrets["throttled"]
        client = TellonceClient(
            client_site.url, ClientSecret(client_id, secret), on_response=lambda r: seen.append(r.status_code)
        )
        client_site.open_clients.append(client)
        started = time.monotonic()
        # A burst of one: the second call is refused with Retry-After, waited for, then served.
        await client.catalog()
        await client.catalog()
        assert seen == [200, 200]
        assert time.monotonic() - started >= 1.0

    async def test_retries_run_out_into_rate_limited(self, client_site: ClientSite) -> None:
        client = client_site.client("throttled-no-retry", retry=RetryPolicy(attempts=1))
        await client.catalog()  # the burst of one
        with pytest.raises(RateLimited) as refused:
            await client.catalog()
        assert refused.value.status == 429
        assert refused.value.problem.status == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1

    def test_retry_after_as_seconds_or_http_date(self) -> None:
        now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        assert retry_after_seconds("7") == 7.0
        assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
        assert retry_after_seconds("soon") is None
        assert retry_after_seconds(None) is None
        # A date with the zone "-0000" parses as a naive time: read as GMT, not a crash.
        minus_zero = format_datetime(now + timedelta(seconds=30), usegmt=True).replace("GMT", "-0000")
        assert retry_after_seconds(minus_zero, now=now) == 30.0
        assert retry_after_seconds("Wed, 32 Oct 2015 07:28:00 GMT") is None
        # Digits other than ASCII's are no delay (float("\u00b2") raised out of the retry loop).
        assert retry_after_seconds("\u00b2") is None

    async def test_a_renewed_token_serves_the_retries_after_it(self, client_site: ClientSite) -> None:
        """A refused token is replaced once; a 429 after that is retried with the new token,
        not with one more fetched for every retry."""
        client_id, secret = client_site.secrets["throttled-renewal"]
        await client_site.client("throttled-renewal").catalog()  # the burst of one
        auth = RevokedFirst(client_id, secret)
        seen: list[int] = []
        async with TellonceClient(
            client_site.url, auth, on_response=lambda r: seen.append(r.status_code)
        ) as client:
            await client.catalog()  # 401, a new token, 429, then served with that token
        assert seen == [200]
        assert auth.fetches == 1

    def test_backoff_is_capped(self) -> None:
        policy = RetryPolicy(base_seconds=1, cap_seconds=3)
        assert all(0 <= policy.backoff(attempt) <= 3 for attempt in range(10))


class TestCitizens:
    async def test_register_lookup_read_with_etag(self, client_site: ClientSite) -> None:
        citizen_id = await _register(client_site, "NI200001")
        welfare = client_site.client("welfare")
        assert (await welfare.lookup("NI200001", PURPOSE)).id == citizen_id
        citizen = await welfare.read_citizen(citizen_id, PURPOSE, ["given_name", "address", "tax_code"])
        assert citizen.fields["given_name"].value == "Ada"
        assert [item.field for item in citizen.withheld] == ["tax_code"]
        assert citizen.etag == etag_of(citizen.version)

    async def test_an_officers_name_is_sent_and_recorded_as_written(self, client_site: ClientSite) -> None:
        """X-On-Behalf-Of travels as UTF-8, so a name outside ASCII reaches the audit whole."""
        citizen_id = await _register(client_site, "NI200009")
        client_id, secret = client_site.secrets["welfare"]
        async with TellonceClient(
            client_site.url, ClientSecret(client_id, secret), on_behalf_of="Zoë Ødegård"
        ) as officer:
            await officer.read_citizen(citizen_id, PURPOSE, ["given_name"])
        page = await client_site.client("auditor").audit_entries(citizen_id=citizen_id, action="read")
        assert [item.entry["on_behalf_of"] for item in page.items] == ["Zoë Ødegård"]

    async def test_if_match_write_and_stale_write(self, client_site: ClientSite) -> None:
        citizen_id = await _register(client_site, "NI200002")
        registrar = client_site.client("registrar")
        welfare = client_site.client("welfare")
        before = await welfare.read_citizen(citizen_id, PURPOSE, ["address"])
        written = await registrar.write_fields(citizen_id, {"address": "2 Low Rd"}, "moved", if_match=before)
        assert written.version == before.version + 1
        assert written.etag == etag_of(written.version)
        with pytest.raises(PreconditionFailed) as stale:
            await registrar.write_fields(citizen_id, {"address": "3 Mid Way"}, "moved again", if_match=before)
        assert stale.value.problem.status == 412
        after = await welfare.read_citizen(citizen_id, PURPOSE, ["address"])
        assert after.fields["address"].value == "2 Low Rd"

    async def test_verify_and_batch_get(self, client_site: ClientSite) -> None:
        first, second = await _register(client_site, "NI200003"), await _register(client_site, "NI200004")
        welfare = client_site.client("welfare")
        verified = await welfare.verify(first, PURPOSE, {"date_of_birth": {"lte": "2000-01-01"}})
        assert verified.results == {"date_of_birth": True}
        batch = await welfare.batch_get([first, second], PURPOSE, ["given_name"])
        assert {item.id for item in batch.items} == {first, second}

    async def test_refusals_are_typed_with_their_problem(self, client_site: ClientSite) -> None:
        citizen_id = await _register(client_site, "NI200005")
        welfare = client_site.client("welfare")
        with pytest.raises(Forbidden) as refused:
            await welfare.read_citizen(citizen_id, "fraud-investigation", ["address"])
        assert refused.value.problem.status == 403
        assert refused.value.response.headers["content-type"].startswith("application/problem+json")
        with pytest.raises(NotFound):
            await welfare.lookup("NI999999", PURPOSE)

    async def test_history_follows_its_cursor(self, client_site: ClientSite) -> None:
        citizen_id = await _register(client_site, "NI200006")
        registrar, owner = client_site.client("registrar"), client_site.client("owner")
        for n in range(3):
            await registrar.write_fields(citizen_id, {"address": f"{n} New St"}, "moved")
        await owner.create_agreement(
            m.AgreementIn(
                id="address-history-for-welfare",
                consumer="welfare",
                fields=["address"],
                actions=["history"],
                purposes=[PURPOSE],
                legal_basis="client tests",
                reason="history for the client tests",
            )
        )
        history = [
            item.value
            async for item in client_site.client("welfare").iter_field_history(
                citizen_id, "address", PURPOSE, page_size=2
            )
        ]
        # Newest first, across two pages.
        assert history == ["2 New St", "1 New St", "0 New St", "1 High St"]

    async def test_erase_then_the_citizen_is_gone(self, client_site: ClientSite) -> None:
        citizen_id = await _register(client_site, "NI200007")
        await client_site.client("registrar").erase_citizen(
            citizen_id, "registered-in-error", "Data Protection Act 2018, s.46"
        )
        with pytest.raises(Gone) as gone:
            await client_site.client("welfare").read_citizen(citizen_id, PURPOSE, ["address"])
        assert gone.value.problem.status == 410


class TestClients:
    async def test_an_admin_registers_lists_and_disables_its_departments_client(
        self, client_site: ClientSite
    ) -> None:
        admin = client_site.client("welfare-admin")
        created = await admin.create_client(["consumer"], name="casework", rate_per_second=5)
        assert created.client_secret is not None
        newcomer = TellonceClient(client_site.url, ClientSecret(created.client_id, created.client_secret))
        try:
            assert "welfare" in {d.id for d in (await newcomer.catalog()).departments}
            listed = {c.client_id: c for c in (await admin.list_clients()).items}
            assert listed[created.client_id].roles == ["consumer"]
            assert listed[created.client_id].auth_method == "client_secret"
            disabled = await admin.disable_client(created.client_id)
            assert disabled.disabled_at is not None
            with pytest.raises(TokenError):
                # Its cached token is refused; a new one is refused too (the client is disabled).
                await newcomer.catalog()
        finally:
            await newcomer.aclose()
        with pytest.raises(Forbidden):
            await admin.create_client(["auditor"])
        with pytest.raises(NotFound):
            await admin.disable_client("tc_nobody")


class TestPolicies:
    async def test_cursor_iteration_sees_every_agreement(self, client_site: ClientSite) -> None:
        auditor = client_site.client("auditor")
        paged = [agreement.id async for agreement in auditor.iter_agreements(page_size=2)]
        whole = (await auditor.list_agreements(limit=200)).items
        assert paged == [agreement.id for agreement in whole]
        assert len(paged) > 2

    async def test_update_agreement_rereads_after_a_412(self, client_site: ClientSite) -> None:
        owner = client_site.client("owner")
        agreement_id = "identity-for-welfare"
        read = await owner.get_agreement(agreement_id)
        assert read.etag == etag_of(read.version)
        calls = 0

        def change(current: m.AgreementOut) -> m.AgreementIn:
            nonlocal calls
            calls += 1
            return current.as_input(reason=f"change {calls}")

        # Someone else writes a version between our read and our write, once.
        interloper = client_site.client("owner")
        original_replace = owner.replace_agreement

        async def racing_replace(agreement: str, body: m.AgreementIn, *, if_match: Any) -> m.AgreementOut:
            if calls == 1:
                latest = await interloper.get_agreement(agreement)
                await interloper.replace_agreement(agreement, latest.as_input("interloper"), if_match=latest)
            return await original_replace(agreement, body, if_match=if_match)

        owner.replace_agreement = racing_replace  # type: ignore[method-assign,assignment]
        updated = await owner.update_agreement(agreement_id, change)
        assert calls == 2
        assert updated.version == read.version + 2
        assert updated.reason == "change 2"
        with pytest.raises(PreconditionFailed):
            await original_replace(agreement_id, read.as_input("stale"), if_match=read)
        versions = [v.version async for v in owner.iter_agreement_versions(agreement_id, page_size=1)]
        assert updated.version in versions

    async def test_explain_simulate_revoke(self, client_site: ClientSite) -> None:
        owner = client_site.client("owner")
        explained = await owner.explain(
            m.ExplainIn(consumer="welfare", action="read", fields=["address"], purpose=PURPOSE)
        )
        assert explained.decisions["address"].effect == "permit"
        simulated = await owner.simulate(m.SimulateIn(remove=["identity-for-welfare"]))
        assert simulated.evaluated >= simulated.changed >= 0
        created = await owner.create_agreement(
            m.AgreementIn(
                id="to-be-revoked",
                consumer="welfare",
                fields=["given_name"],
                actions=["read"],
                purposes=["fraud-investigation"],
                legal_basis="client tests",
            )
        )
        revoked = await owner.revoke_agreement(created.id, reason="done", if_match=created)
        assert revoked.status == "revoked"


class TestEvents:
    async def test_webhook_is_verified_and_a_forgery_refused(
        self, client_site: ClientSite, receiver: WebhookReceiver
    ) -> None:
        welfare = client_site.client("welfare")
        subscription = await welfare.subscribe(["address"], "address-update", webhook_url=receiver.url)
        assert subscription.secret is not None
        citizen_id = await _register(client_site, "NI200010")
        await client_site.client("registrar").write_fields(citizen_id, {"address": "9 Elm Rd"}, "moved")
        delivered = (await receiver.until(1))[0]
        verifier = WebhookVerifier(subscription.secret)
        event = verifier.verify_event(delivered.headers, delivered.body)
        assert event.citizen_id == citizen_id
        assert event.fields == ["address"]
        # The payload's timestamp (Standard Webhooks) is the event's time, as ``occurred_at``.
        assert stamped_at(verifier.verify(delivered.headers, delivered.body)) == event.occurred_at
        with pytest.raises(WebhookVerificationError):
            verifier.verify(delivered.headers, delivered.body.replace(b"address", b"addresx"))
        with pytest.raises(WebhookVerificationError):
            verifier.verify(delivered.headers, delivered.body, now=time.time() + 3600)
        assert subscription.secret not in repr(verifier)

        async def delivered_once() -> bool:
            return any([d.status == "delivered" async for d in welfare.iter_deliveries(subscription.id)])

        await poll(delivered_once)
        assert (await welfare.redeliver(subscription.id)).requeued >= 0
        assert subscription.id in {s.id async for s in welfare.iter_subscriptions()}
        await welfare.delete_subscription(subscription.id)
        with pytest.raises(NotFound):
            await welfare.get_subscription(subscription.id)

    async def test_a_subscription_disabled_by_a_410_is_enabled_again_and_catches_up(
        self, client_site: ClientSite, receiver: WebhookReceiver
    ) -> None:
        welfare = client_site.client("welfare")
        subscription = await welfare.subscribe(["address"], "address-update", webhook_url=receiver.url)
        assert subscription.secret is not None
        registrar = client_site.client("registrar")
        citizen_id = await _register(client_site, "NI200012")
        receiver.fail_next(1, status=410)
        await registrar.write_fields(citizen_id, {"address": "1 Gone St"}, "moved")

        async def disabled() -> bool:
            return (await welfare.get_subscription(subscription.id)).status == "disabled"

        await poll(disabled)
        await registrar.write_fields(citizen_id, {"address": "2 Meanwhile Rd"}, "moved again")
        enabled = await welfare.enable_subscription(subscription.id)
        assert (enabled.id, enabled.status) == (subscription.id, "active")
        # The change answered 410 and the one made while disabled: both arrive now, verified.
        verifier = WebhookVerifier(subscription.secret)
        accepted = await receiver.until(2)
        events = [verifier.verify_event(r.headers, r.body) for r in accepted]
        assert [event.citizen_id for event in events] == [citizen_id, citizen_id]
        assert len({event.event_id for event in events}) == 2
        with pytest.raises(NotFound):
            await client_site.client("portal").enable_subscription(subscription.id)
        await welfare.delete_subscription(subscription.id)

    async def test_a_rotated_secret_signs_beside_the_old_one_through_the_overlap(
        self, client_site: ClientSite, receiver: WebhookReceiver
    ) -> None:
        welfare = client_site.client("welfare")
        subscription = await welfare.subscribe(["address"], "address-update", webhook_url=receiver.url)
        assert subscription.secret is not None
        rotated = await welfare.rotate_secret(subscription.id)
        assert rotated.secret.startswith("whsec_")
        assert rotated.secret != subscription.secret
        assert rotated.previous_secret_expires_at is not None
        shown = await welfare.get_subscription(subscription.id)
        assert shown.previous_secret_expires_at == rotated.previous_secret_expires_at
        citizen_id = await _register(client_site, "NI200013")
        await client_site.client("registrar").write_fields(citizen_id, {"address": "3 New Key Ln"}, "moved")
        [delivered] = await receiver.until(1)
        # A receiver holding either secret accepts it.
        for secret in (rotated.secret, subscription.secret):
            assert (
                WebhookVerifier(secret).verify_event(delivered.headers, delivered.body).citizen_id
                == citizen_id
            )
        with pytest.raises(NotFound):
            await client_site.client("portal").rotate_secret(subscription.id)
        await welfare.delete_subscription(subscription.id)

    async def test_feed_cursor(self, client_site: ClientSite) -> None:
        welfare = client_site.client("welfare")
        subscription = await welfare.subscribe(["date_of_death"], "civil-registration")
        start = await welfare.events()
        citizen_id = await _register(client_site, "NI200011")
        await client_site.client("registrar").write_fields(
            citizen_id, {"date_of_death": "2026-11-30"}, "died"
        )
        page = await welfare.events(after=start.cursor, wait=10)
        assert [item.citizen_id for item in page.items if "date_of_death" in item.fields] == [citizen_id]
        await welfare.delete_subscription(subscription.id)


class TestAudit:
    async def _sealed(self, client: TellonceClient, at_least: int) -> str:
        vkey = await client.verifier_key()
        notes: list[str] = []

        async def covered() -> bool:
            notes.append(await client.checkpoint())
            return open_checkpoint(notes[-1], vkey).size >= at_least

        await poll(covered)
        return notes[-1]

    async def test_inclusion_and_consistency_verify_offline(self, client_site: ClientSite) -> None:
        auditor = client_site.client("auditor")
        await _register(client_site, "NI200020")
        vkey = await auditor.verifier_key()
        older_note = await self._sealed(auditor, 1)
        older = open_checkpoint(older_note, vkey)
        await _register(client_site, "NI200021")
        newer_note = await self._sealed(auditor, older.size + 1)
        newer = open_checkpoint(newer_note, vkey)
        proof = await auditor.inclusion_proof(older.size - 1, tree_size=newer.size)
        assert verify_entry(proof, newer_note, vkey) == newer
        consistency = await auditor.consistency_proof(older.size, newer.size)
        assert verify_checkpoints(older_note, newer_note, consistency, vkey) == (older, newer)
        # A changed entry, a proof for another tree or a forged root is refused.
        tampered = proof.model_copy(update={"entry": {**proof.entry, "purpose": "something-else"}})
        with pytest.raises(ProofError):
            verify_entry(tampered, newer_note, vkey)
        with pytest.raises(ProofError):
            verify_entry(proof, older_note, vkey)
        with pytest.raises(ProofError):
            verify_checkpoints(newer_note, older_note, consistency, vkey)
        forged = newer_note.replace(newer_note.split("\n")[2], older_note.split("\n")[2], 1)
        with pytest.raises(ProofError):
            open_checkpoint(forged, vkey)

    async def test_an_export_is_sent_as_every_call_is(self, client_site: ClientSite) -> None:
        """The export carries the officer (recorded in the audit of the export itself) and
        renews a refused token, like every other call."""
        citizen_id = await _register(client_site, "NI200024")
        client_id, secret = client_site.secrets["auditor"]
        officer = "Åse Eksportør"
        auth = RevokedFirst(client_id, secret)
        async with TellonceClient(client_site.url, auth, on_behalf_of=officer) as client:
            exported = [json.loads(line) async for line in client.export_audit(citizen_id=citizen_id)]
        assert [line["entry"]["action"] for line in exported] == ["register"]
        queries = [
            item.entry
            async for item in client_site.client("auditor").iter_audit_entries(
                page_size=1000, action="audit-query", consumer="audit-office"
            )
        ]
        assert [entry["client_id"] for entry in queries if entry["on_behalf_of"] == officer] == [client_id]

    async def test_usage_of_a_field_the_catalog_no_longer_has(self, client_site: ClientSite) -> None:
        """A field released before a catalog change dropped it has no owner now: its usage
        row says so (null), and the client reads the report instead of failing on it."""
        citizen_id = await _register(client_site, "NI200025")
        await client_site.client("welfare").read_citizen(citizen_id, PURPOSE, ["address"])
        database = Database(client_site.settings)
        try:
            async with database.sessions.begin() as session:
                _version, catalog = await catalog_service.current(session)
                content = catalog.model_dump()
                content["fields"] = [spec for spec in content["fields"] if spec["name"] != "address"]
                dropped = type(catalog).model_validate(content)
                await catalog_service.store(session, dropped, author="tests", reason="drop address")
            try:
                usage = [row async for row in client_site.client("auditor").iter_usage(consumer="welfare")]
            finally:
                async with database.sessions.begin() as session:
                    await catalog_service.store(session, catalog, author="tests", reason="restore address")
        finally:
            await database.dispose()
        assert {row.owner for row in usage if row.field == "address"} == {None}

    async def test_entries_export_usage_and_access_log(self, client_site: ClientSite) -> None:
        citizen_id = await _register(client_site, "NI200022")
        await client_site.client("welfare").read_citizen(citizen_id, PURPOSE, ["address"])
        auditor = client_site.client("auditor")
        entries = [item async for item in auditor.iter_audit_entries(page_size=2, citizen_id=citizen_id)]
        assert [item.entry["action"] for item in entries] == ["register", "read"]
        assert all(item.model_extra == {} for item in entries)
        exported = [json.loads(line) async for line in auditor.export_audit(citizen_id=citizen_id)]
        # The search above is itself an entry naming the citizen (audit-query).
        assert [line["entry"]["action"] for line in exported] == ["register", "read", "audit-query"]
        usage = [row async for row in auditor.iter_usage(consumer="welfare")]
        assert usage
        assert all(row.model_extra == {} for row in usage)
        log = [item async for item in client_site.client("portal").iter_access_log(citizen_id)]
        assert [item.department for item in log] == ["register", "welfare"]
        assert all(item.model_extra == {} for item in log)
        # The proof is of the register entry's leaf, once the sequencer has added it and
        # signed a checkpoint over it (it may add leaves a round before it signs).
        leaf: list[int] = []

        async def sequenced() -> bool:
            items = [item async for item in auditor.iter_audit_entries(page_size=2, citizen_id=citizen_id)]
            if items[0].leaf_index is None:
                return False
            try:
                checkpoint_size = int((await auditor.checkpoint()).split("\n")[1])
            except NotFound:  # no checkpoint signed yet
                return False
            if items[0].leaf_index >= checkpoint_size:
                return False
            leaf.append(items[0].leaf_index)
            return True

        await poll(sequenced)
        proof = await auditor.inclusion_proof(leaf[0])
        assert proof.model_extra == {}
