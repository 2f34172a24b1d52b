"""Subscriptions, the event feed and deliveries, as the API takes and returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

FieldName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
PurposeId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]

EVENT_TYPE: Literal["citizen.fields_changed"] = "citizen.fields_changed"


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fields: list[FieldName] = Field(min_length=1, max_length=100)
    purpose: PurposeId
    # Without a URL the subscription is read through the feed, GET /v1/events.
    webhook_url: str | None = Field(default=None, max_length=2048)


class SubscriptionOut(BaseModel):
    id: str
    department: str
    fields: list[str]
    purpose: str
    webhook_url: str | None
    status: Literal["active", "deleted"]
    created_at: datetime


class SubscriptionCreated(SubscriptionOut):
    # Shown once, when the subscription is made; never again.
    secret: str | None = None


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    next_cursor: str | None = None


class EventData(BaseModel):
    """One change: which citizen, which fields, whose fields, when. Never a value."""

    event_id: str
    citizen_id: str
    fields: list[str]
    owner: str
    occurred_at: datetime


class FeedPage(BaseModel):
    items: list[EventData]
    # Pass as ``after`` next time; it moves past events you were not told of, too.
    cursor: str


class DeliveryOut(BaseModel):
    id: str
    webhook_id: str
    event_id: str
    citizen_id: str
    status: Literal["pending", "delivered", "dead", "withheld", "cancelled"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = None


class RedeliverOut(BaseModel):
    # How many dead deliveries were put back in the queue.
    requeued: int
