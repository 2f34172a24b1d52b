"""Webhook URLs: the service never calls into a private network unless told it may."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from fastapi import FastAPI

from service.events.service import EventsRuntime
from service.events.targets import UnsafeWebhookTarget, check_target, refusal
from tests.fixtures.auth import act_as


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


async def unresolvable(host: str, port: int) -> list[str]:
    raise OSError("no such host")


class TestCheckTarget:
    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("ftp://example.org/hook", "only http and https"),
            ("file:///etc/passwd", "only http and https"),
            ("gopher://example.org/", "only http and https"),
            ("https:///nohost", "names no host"),
            ("https://user:pw@example.org/hook", "may not carry credentials"),
            ("https://example.org:99999/hook", "not well formed"),
            ("https://127.0.0.1/hook", "loopback"),
            ("http://[::1]:8080/hook", "loopback"),
            ("https://10.1.2.3/hook", "private"),
            ("https://192.168.0.10/hook", "private"),
            ("https://172.16.5.4/hook", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://[fe80::1]/hook", "link-local"),
            # Deprecated (RFC 3879) but still routed inside the sites that use it.
            ("https://[fec0::1]/hook", "site-local"),
            ("https://[feff:ffff::1]/hook", "site-local"),
            ("https://224.0.0.1/hook", "multicast"),
            ("https://0.0.0.0/hook", "unspecified"),
            ("https://[::ffff:127.0.0.1]/hook", "loopback"),
            ("https://100.64.0.1/hook", "not a public address"),
            ("https://240.0.0.1/hook", "private"),
            ("https://a..b/x", "not a valid host name"),
            ("https://.example.com/", "not a valid host name"),
            ("https://" + "a" * 64 + ".example/", "not a valid host name"),
            # The resolver would stop reading the name at the NUL: 127.0.0.1 would be checked.
            ("http://127.0.0.1\x00.evil.example:8080/", "only printable ASCII"),
            ("https://example.org/a b", "only printable ASCII"),
            ("https://example.org/\u200ehook", "only printable ASCII"),
            ("https://bücher.example/hook", "only printable ASCII"),
        ],
    )
    async def test_refuses(self, url: str, why: str) -> None:
        with pytest.raises(UnsafeWebhookTarget, match=why):
            await check_target(url, allow_private=False, resolver=unresolvable)

    async def test_every_resolved_address_must_be_public(self) -> None:
        resolver = resolving_to("93.184.215.14", "10.0.0.7")
        with pytest.raises(
            UnsafeWebhookTarget, match=r"hooks\.example resolves to 10\.0\.0\.7, which is a private"
        ):
            await check_target("https://hooks.example/in", allow_private=False, resolver=resolver)

    async def test_public_host_is_accepted_once_resolved(self) -> None:
        asked: list[tuple[str, int]] = []

        async def public(host: str, port: int) -> list[str]:
            asked.append((host, port))
            return ["93.184.215.14"]

        # Accepted only after its addresses were looked up, on the URL's port (443 by default)...
        await check_target("https://hooks.example/in", allow_private=False, resolver=public)
        assert asked == [("hooks.example", 443)]
        # ...while a literal public address needs no lookup at all.
        await check_target("http://93.184.215.14:8443/in", allow_private=False, resolver=public)
        assert asked == [("hooks.example", 443)]

    async def test_unresolvable_host_is_refused(self) -> None:
        with pytest.raises(UnsafeWebhookTarget, match="could not be resolved"):
            await check_target("https://nowhere.example/in", allow_private=False, resolver=unresolvable)
        with pytest.raises(UnsafeWebhookTarget, match="could not be resolved"):
            await check_target("https://nowhere.example/in", allow_private=False, resolver=resolving_to())

    async def test_localhost_name_is_resolved_and_refused(self) -> None:
        with pytest.raises(UnsafeWebhookTarget, match="loopback"):
            await check_target("http://localhost:8080/hook", allow_private=False)

    async def test_development_setting_allows_loopback_and_private_only(self) -> None:
        await check_target("http://127.0.0.1:8080/hook", allow_private=True)
        await check_target("http://10.0.0.1/hook", allow_private=True)
        for url in ("http://0.0.0.0/hook", "http://224.0.0.1/hook"):
            with pytest.raises(UnsafeWebhookTarget):
                await check_target(url, allow_private=True)

    def test_refusal_names_the_kind(self) -> None:
        assert refusal(ipaddress.ip_address("93.184.215.14"), allow_private=False) is None
        assert refusal(ipaddress.ip_address("::1"), allow_private=False) == "is a loopback address"


class TestSubscribeRefusesUnsafeUrls:
    @pytest.fixture(autouse=True)
    def _no_private(self, runtime: EventsRuntime) -> None:
        runtime.settings = runtime.settings.model_copy(update={"webhook_allow_private": False})

    @pytest.mark.parametrize(
        ("url", "msg"),
        [
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://localhost/hook", "loopback"),
            ("ftp://example.org/", "only http and https"),
            ("https://169.254.169.254/", "link-local"),
            ("https://a..b/", "not a valid host name"),
            ("https://.example.com/", "not a valid host name"),
        ],
    )
    async def test_refused_with_422(
        self, events_app: FastAPI, api: httpx.AsyncClient, url: str, msg: str
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={"fields": ["date_of_death"], "purpose": "licence-administration", "webhook_url": url},
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["type"].endswith("/webhook-url-refused")
        assert msg in body["detail"]
        [error] = body["errors"]
        assert error["loc"] == ["body", "webhook_url"]
        assert msg in error["msg"]
        assert (await api.get("/v1/subscriptions")).json()["items"] == []

    async def test_consent_subscription_with_a_malformed_host_is_422(
        self, events_app: FastAPI, api: httpx.AsyncClient
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions", json={"type": "consent.changed", "webhook_url": "https://a..b/"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["type"].endswith("/webhook-url-refused")
        assert "not a valid host name" in response.json()["detail"]
