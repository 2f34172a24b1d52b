"""The DNS-rebinding gap (noted in the events work): the dispatcher checked a webhook's
host, then let the HTTP client resolve it again to connect, so a name could pass the check
on a public address and then point somewhere private. The connection now goes to the
address that passed the check, with the original Host header (and, for https, the name as
SNI and for certificate verification).
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.events.dispatcher import Dispatcher
from service.events.service import EventsRuntime
from service.events.targets import pinned
from tests.events.conftest import (  # noqa: F401 - fixtures used by name
    _empty_events,
    add_citizen,
    api,
    audit_sink,
    dispatcher,
    emit,
    events_app,
    events_database_url,
    events_engine,
    events_settings,
    policy,
    receiver,
    running,
    runtime,
)
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import WebhookReceiver

# A name no resolver outside this test knows (.test is reserved, RFC 2606).
REBINDING_HOST = "hooks.rebind.test"


async def test_the_delivery_connects_to_the_checked_address(
    events_app: FastAPI,  # noqa: F811 - the imported fixture
    api: httpx.AsyncClient,  # noqa: F811 - the imported fixture
    receiver: WebhookReceiver,  # noqa: F811 - the imported fixture
    runtime: EventsRuntime,  # noqa: F811 - the imported fixture
    dispatcher: Dispatcher,  # noqa: F811 - the imported fixture
    events_engine: AsyncEngine,  # noqa: F811 - the imported fixture
) -> None:
    checked: list[str] = []

    async def resolver(host: str, _port: int) -> list[str]:
        # What the check sees. Any later resolution of the name by anyone else fails,
        # as a rebinding name would then answer something else.
        checked.append(host)
        return ["127.0.0.1"]

    runtime.resolver = resolver
    port = int(receiver.url.rsplit(":", 1)[1].split("/", 1)[0])
    act_as(events_app, "dvla", "consumer")
    created = await api.post(
        "/v1/subscriptions",
        json={
            "fields": ["date_of_death"],
            "purpose": "licence-administration",
            "webhook_url": f"http://{REBINDING_HOST}:{port}/hooks/tellonce",
        },
    )
    assert created.status_code == 201, created.text

    citizen = await add_citizen(events_engine)
    await emit(runtime, citizen, ["date_of_death"], "register")
    async with running(dispatcher):
        [request] = await receiver.until(1)

    assert request.headers["host"] == f"{REBINDING_HOST}:{port}"
    assert checked.count(REBINDING_HOST) >= 2  # at subscription, and again before the attempt


def test_https_keeps_the_name_for_sni_and_the_certificate() -> None:
    import ipaddress

    target = pinned("https://hooks.example:8443/in?x=1", ipaddress.ip_address("2606:4700::1111"))
    assert target.url == "https://[2606:4700::1111]:8443/in?x=1"
    assert target.headers == {"host": "hooks.example:8443"}
    extensions: dict[str, Any] = target.extensions
    assert extensions == {"sni_hostname": "hooks.example"}
