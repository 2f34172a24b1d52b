"""Real deliveries to a real receiver on 127.0.0.1, checked by a receiver written only from
the Standard Webhooks spec (not the service's code, nor the ``standardwebhooks`` library),
through a retry and a secret rotation; and the client library's verifier judged against it
on the same deliveries, altered."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from tellonce_client import WebhookVerificationError, WebhookVerifier

from service.events.dispatcher import Dispatcher
from service.events.service import EventsRuntime
from tests.events.conftest import add_citizen, emit, running
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import Received, WebhookReceiver

TOLERANCE = 300


def spec_matches(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> bool:
    """Whether a receiver holding ``secret`` accepts the delivery, by the spec: the three
    headers present; ``webhook-timestamp`` integer seconds within the tolerance either way;
    the key the base64-decoded bytes after ``whsec_``; HMAC-SHA256 over the raw bytes
    ``id.timestamp.body``; ``webhook-signature`` a space-delimited list of ``version,base64``
    where only ``v1`` values are compared (in constant time) and any one may match."""
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (message_id and timestamp and signatures):
        return False
    if not re.fullmatch(r"[0-9]{1,18}", timestamp):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > TOLERANCE:
        return False
    content = message_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = hmac.new(key, content, hashlib.sha256).digest()
    for value in signatures.split(" "):
        version, comma, encoded = value.partition(",")
        if version != "v1" or not comma:
            continue
        try:
            offered = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(offered, expected):
            return True
    return False


def _client_accepts(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        WebhookVerifier(secret).verify(headers, body)
    except WebhookVerificationError:
        return False
    return True


def _alterations(request: Received) -> list[tuple[str, dict[str, str], bytes]]:
    headers, body = request.headers, request.body
    first, *rest = headers["webhook-signature"].split(" ")
    value = first.removeprefix("v1,")
    stamp = headers["webhook-timestamp"]
    altered: list[tuple[str, dict[str, str], bytes]] = [
        ("as received", headers, body),
        ("body re-serialised", headers, body.replace(b",", b", ")),
        ("body with a trailing newline", headers, body + b"\n"),
        ("another id", {**headers, "webhook-id": headers["webhook-id"] + "x"}, body),
        ("a second later", {**headers, "webhook-timestamp": str(int(stamp) + 1)}, body),
        ("timestamp with a plus", {**headers, "webhook-timestamp": "+" + stamp}, body),
        ("timestamp with a leading zero", {**headers, "webhook-timestamp": "0" + stamp}, body),
        ("timestamp in milliseconds", {**headers, "webhook-timestamp": stamp + "000"}, body),
        ("no signature", {**headers, "webhook-signature": ""}, body),
        ("no comma", {**headers, "webhook-signature": "v1" + value}, body),
        ("version v1a", {**headers, "webhook-signature": "v1a," + value}, body),
        ("version v2", {**headers, "webhook-signature": "v2," + value}, body),
        ("bad base64", {**headers, "webhook-signature": "v1,!" + value}, body),
        ("only the first value", {**headers, "webhook-signature": first}, body),
        (
            "a bad value before",
            {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]},
            body,
        ),
        ("only the others", {**headers, "webhook-signature": " ".join(rest) or "v1,AAAA"}, body),
    ]
    without_id = {k: v for k, v in headers.items() if k != "webhook-id"}
    altered.append(("no webhook-id", without_id, body))
    return altered


class TestRealDeliveriesByTheSpec:
    async def test_retry_and_rotation_verify_by_the_spec_and_the_client_agrees(
        self,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        dispatcher: Dispatcher,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        created = await api.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death"],
                "purpose": "licence-administration",
                "webhook_url": receiver.url,
            },
        )
        assert created.status_code == 201, created.text
        hook: dict[str, Any] = created.json()
        old = hook["secret"]
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]+={0,2}", old)
        assert 24 <= len(base64.b64decode(old.removeprefix("whsec_"))) <= 64
        citizen = await add_citizen(events_engine)

        # A failed attempt and its retry: one id, one body, each signed when it left.
        receiver.fail_next(1, status=500)
        await emit(runtime, citizen, ["date_of_death"], "register")
        async with running(dispatcher):
            await receiver.until(1)
        failed, retried = receiver.received
        assert (failed.answered, retried.answered) == (500, 204)
        assert failed.headers["webhook-id"] == retried.headers["webhook-id"]
        assert failed.body == retried.body
        for request in (failed, retried):
            assert request.headers["content-type"] == "application/json"
            assert re.fullmatch(r"[1-9][0-9]*", request.headers["webhook-timestamp"])
            assert abs(time.time() - int(request.headers["webhook-timestamp"])) < 60
            assert spec_matches(old, request.headers, request.body)

        # A rotation: both secrets sign, each value verifying under exactly one of them.
        rotated = await api.post(f"/v1/subscriptions/{hook['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        await emit(runtime, citizen, ["date_of_death"], "register")
        await dispatcher.run_once()
        during = receiver.accepted()[-1]
        values = during.headers["webhook-signature"].split(" ")
        assert len(values) == 2
        assert all(re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", value) for value in values)
        for secret in (new, old):
            assert spec_matches(secret, during.headers, during.body)
        for value, signer, other in ((values[0], new, old), (values[1], old, new)):
            alone = {**during.headers, "webhook-signature": value}
            assert spec_matches(signer, alone, during.body)
            assert not spec_matches(other, alone, during.body)
        stranger = "whsec_" + base64.b64encode(bytes(range(32))).decode()
        assert not spec_matches(stranger, during.headers, during.body)

        # The client library's verifier accepts exactly what the spec's receiver accepts.
        for request in (retried, during):
            for secret in (old, new, stranger):
                for name, headers, body in _alterations(request):
                    expected = spec_matches(secret, headers, body)
                    assert _client_accepts(secret, headers, body) == expected, name
        assert _client_accepts(old, during.headers, during.body)
        for name, headers, body in _alterations(during):
            # The old secret's value is the second: alone, or after a bad one, it still verifies.
            accepted = name in {"as received", "a bad value before", "only the others"}
            assert spec_matches(old, headers, body) == accepted, name
        # Too old and too far ahead, on a real delivery.
        sent = int(during.headers["webhook-timestamp"])
        for now in (sent - TOLERANCE - 1, sent + TOLERANCE + 1):
            assert not spec_matches(new, during.headers, during.body, now=now)
            with pytest.raises(WebhookVerificationError):
                WebhookVerifier(new).verify(during.headers, during.body, now=now)
