from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from service.sim.webhooks import WebhookReceivers

# As tellonce sends it: the event's time at the top as well (Standard Webhooks' payload).
EVENT = {
    "type": "citizen.fields_changed",
    "timestamp": "2026-11-29T08:00:00Z",
    "data": {
        "event_id": "evt-1",
        "citizen_id": "c-1",
        "fields": ["address"],
        "owner": "register",
        "occurred_at": "2026-11-29T08:00:00Z",
    },
}


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _signed(secret: str, body: str, message_id: str = "msg-1") -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
        "content-type": "application/json",
    }


class TestWebhookReceivers:
    async def test_accepts_a_signed_delivery_and_queues_its_data(self) -> None:
        secret = _secret()
        body = json.dumps(EVENT)
        async with WebhookReceivers().running() as receivers, httpx.AsyncClient() as http:
            receivers.trust("dvla", secret)
            response = await http.post(receivers.url_for("dvla"), content=body, headers=_signed(secret, body))
            assert response.status_code == 204
            delivery = receivers.deliveries.get_nowait()
        assert delivery.department == "dvla"
        assert delivery.channel == "webhook"
        assert delivery.data == EVENT["data"]

    async def test_refuses_a_forged_or_unsigned_delivery(self) -> None:
        secret = _secret()
        body = json.dumps(EVENT)
        async with WebhookReceivers().running() as receivers, httpx.AsyncClient() as http:
            receivers.trust("dvla", secret)
            forged = await http.post(
                receivers.url_for("dvla"), content=body, headers=_signed(_secret(), body)
            )
            tampered = await http.post(
                receivers.url_for("dvla"),
                content=body.replace("address", "postcode"),
                headers=_signed(secret, body),
            )
            unsigned = await http.post(receivers.url_for("dvla"), content=body)
            assert [forged.status_code, tampered.status_code, unsigned.status_code] == [401, 401, 401]
            assert receivers.refused == 3
            assert receivers.deliveries.empty()

    async def test_refuses_a_department_it_does_not_serve(self) -> None:
        secret = _secret()
        body = json.dumps(EVENT)
        async with WebhookReceivers().running() as receivers, httpx.AsyncClient() as http:
            receivers.trust("dvla", secret)
            response = await http.post(receivers.url_for("hmrc"), content=body, headers=_signed(secret, body))
            assert response.status_code == 404
            assert receivers.deliveries.empty()
