"""Subscriptions, the event feed and deliveries, as the API takes and returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from service.catalog.schemas import FieldName, PurposeId

EVENT_TYPE: Literal["citizen.fields_changed"] = "citizen.fields_changed"


ACCESS_RECORDED: Literal["access.recorded"] = "access.recorded"
CONSENT_CHANGED: Literal["consent.changed"] = "consent.changed"
EventType = Literal["citizen.fields_changed", "access.recorded", "consent.changed"]


class SubscriptionIn(BaseModel):
    """Field changes (``fields`` and ``purpose``), access notices (neither: every access
    to any citizen's record, for the citizen portal), or consent changes (neither: every
    change to a citizen's consent to an agreement the caller's department is consumer of)."""

    model_config = ConfigDict(extra="forbid")

    type: EventType = EVENT_TYPE
    fields: list[FieldName] = Field(default_factory=list, max_length=100, validate_default=True)
    purpose: PurposeId | None = Field(default=None, validate_default=True)
    # Without a URL the subscription is read through the feed, GET /v1/events.
    webhook_url: str | None = Field(default=None, max_length=2048)

    @field_validator("fields")
    @classmethod
    def _fields_fit_type(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("type", EVENT_TYPE) == EVENT_TYPE:
            if not value:
                raise ValueError("a subscription to field changes names at least one field")
        elif value:
            raise ValueError(f"a subscription to {info.data.get('type')} events names no fields")
        return value

    @field_validator("purpose")
    @classmethod
    def _purpose_fits_type(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("type", EVENT_TYPE) == EVENT_TYPE:
            if value is None:
                raise ValueError("a subscription to field changes states its purpose")
        elif value is not None:
            raise ValueError(f"a subscription to {info.data.get('type')} events states no purpose")
        return value


class SubscriptionOut(BaseModel):
    id: str
    type: EventType
    department: str
    fields: list[str]
    purpose: str | None
    webhook_url: str | None
    # ``disabled``: its receiver answered 410 Gone, so nothing more is sent to it; its
    # deliveries say when. Enabling it again resumes delivery where it stopped.
    status: Literal["active", "disabled", "deleted"]
    created_at: datetime
    # After a rotation of the signing secret, until when deliveries carry the old secret's
    # signature too; null when only the current secret signs.
    previous_secret_expires_at: datetime | None = None


class SubscriptionCreated(SubscriptionOut):
    # Shown once, when the subscription is made; never again.
    secret: str | None = None


class SecretRotated(SubscriptionOut):
    """The subscription after its signing secret was rotated, with the new secret: shown
    only now, never again."""

    secret: str


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


class AccessNotice(BaseModel):
    """One access that released a citizen's data: which department, what it did, which
    fields, for what purpose, on what basis, when. Never a value, never an officer.

    An access under delayed disclosure is told only once its case is closed or its
    maximum delay has passed: ``occurred_at`` is still the access's own time, and
    ``disclosed_at`` and ``disclosed_by`` (``case-closed`` or ``max-delay``) say when and why."""

    type: Literal["access.recorded"] = ACCESS_RECORDED
    event_id: str
    citizen_id: str
    department: str
    action: str
    fields: list[str]
    purpose: str | None
    basis: str
    legal_basis: list[str]
    occurred_at: datetime
    disclosed_at: datetime | None = None
    disclosed_by: Literal["case-closed", "max-delay"] | None = None


class ConsentChanged(BaseModel):
    """A citizen's consent to an agreement the receiving department is consumer of was
    given or changed: the consent, the agreement and its new status. Never a value."""

    type: Literal["consent.changed"] = CONSENT_CHANGED
    event_id: str
    citizen_id: str
    consent_id: str
    agreement: str
    purpose: str
    fields: list[str]
    status: Literal["active", "paused", "revoked"]
    occurred_at: datetime


class FeedPage(BaseModel):
    items: list[EventData | AccessNotice | ConsentChanged]
    # Pass as ``after`` next time; it moves past events you were not told of, too.
    cursor: str


class DeliveryOut(BaseModel):
    id: str
    webhook_id: str
    # Null until the event was released to the department (audited and sent), and for a
    # delivery withheld by the policy: the list tells no more than the feed would.
    event_id: str | None
    citizen_id: str | None
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
