"""A department may have at most TELLONCE_MAX_SUBSCRIPTIONS_PER_DEPARTMENT subscriptions:
each is a delivery of every change it is told of, so without a bound one department could
multiply the dispatcher's work (and its requests to a webhook URL) without end."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from service.events.service import EventsRuntime
from tests.fixtures.auth import act_as

PULL = {"fields": ["address"], "purpose": "benefit-eligibility"}


async def test_one_past_the_limit_is_409_until_one_is_deleted(
    events_app: FastAPI, api: httpx.AsyncClient, runtime: EventsRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        runtime, "settings", runtime.settings.model_copy(update={"max_subscriptions_per_department": 3})
    )
    act_as(events_app, "welfare", "consumer")
    made = []
    for _ in range(3):
        response = await api.post("/v1/subscriptions", json=PULL)
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    refused = await api.post("/v1/subscriptions", json=PULL)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "3 subscriptions" in refused.json()["detail"]
    listed = await api.get("/v1/subscriptions")
    assert len(listed.json()["items"]) == 3
    # A deleted one no longer counts.
    assert (await api.delete(f"/v1/subscriptions/{made[0]}")).status_code == 204
    assert (await api.post("/v1/subscriptions", json=PULL)).status_code == 201
