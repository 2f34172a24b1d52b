"""Subscriptions, the event feed and webhook deliveries (``/v1/subscriptions``, ``/v1/events``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from service.auth.facts import RequestFacts, facts
from service.events import feed as events_feed
from service.events import service as events_service
from service.events.schemas import (
    DeliveryPage,
    FeedPage,
    RedeliverOut,
    SecretRotated,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPage,
)
from service.events.service import EventsRuntime
from service.records.schemas import CITIZEN_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["events"])

# Events take no case reference: a subscription is not about one case.
Consumer = Annotated[RequestFacts, Depends(facts("events:subscribe", case_ref=False))]


def get_runtime(request: Request) -> EventsRuntime:
    runtime: EventsRuntime = request.app.state.events
    return runtime


Runtime = Annotated[EventsRuntime, Depends(get_runtime)]
# A subscription id in the form the service issues (a lower-case UUID); anything else is
# refused (422) before it reaches the store or, for a refused change, the audit log.
SubscriptionPath = Annotated[
    str,
    Path(pattern=CITIZEN_ID_PATTERN, max_length=36, description="The subscription's id (a lower-case UUID)."),
]


@router.post("/subscriptions", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated)
async def create_subscription(
    body: SubscriptionIn, consumer: Consumer, runtime: Runtime
) -> SubscriptionCreated:
    """Subscribe your department to changes of some fields, for one purpose.

    Refused with 403 unless an agreement of each field's owner lets your department
    `subscribe` to it for that purpose. Without `webhook_url`, read changes from
    `GET /v1/events`. With one, changes are POSTed to it, signed to the Standard Webhooks
    spec with the `secret` in this response: it is shown only now, so keep it. The URL must
    be http or https and resolve only to public addresses.

    A failed delivery is retried with a growing, jittered delay (by default for more than a
    day; a `Retry-After` on a 429 or 503 answer is the least it waits), then marked `dead`.
    A 410 Gone answer disables the subscription: nothing more is sent to it until you
    enable it again (`POST /v1/subscriptions/{id}/enable`), which resumes where it stopped.
    """
    return await events_service.create_subscription(runtime, consumer, body)


@router.get("/subscriptions", response_model=SubscriptionPage)
async def list_subscriptions(
    consumer: Consumer,
    runtime: Runtime,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SubscriptionPage:
    """Your department's subscriptions, oldest first (secrets are never shown again):
    `active` ones, and `disabled` ones, whose receiver answered 410 Gone or which you
    paused (enable them again with `POST /v1/subscriptions/{id}/enable`). Deleted ones are
    not listed."""
    return await events_service.list_subscriptions(runtime, consumer, cursor=cursor, limit=limit)


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut)
async def get_subscription(
    subscription_id: SubscriptionPath, consumer: Consumer, runtime: Runtime
) -> SubscriptionOut:
    """One of your department's subscriptions, active or disabled; 404 for any other."""
    return await events_service.get_subscription(runtime, consumer, subscription_id)


@router.delete("/subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_subscription(
    subscription_id: SubscriptionPath, consumer: Consumer, runtime: Runtime
) -> Response:
    """End a subscription, active or disabled. Deliveries still queued for it are cancelled.

    The deletion is audited (action `subscription-change`) in the transaction that makes it:
    while the audit cannot be written the answer is 503 and the subscription stays. A refused one
    (404: another department's, an unknown or an already deleted subscription, answered
    alike) is audited too, as refused."""
    await events_service.delete_subscription(runtime, consumer, subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/subscriptions/{subscription_id}/disable", response_model=SubscriptionOut)
async def disable_subscription(
    subscription_id: SubscriptionPath, consumer: Consumer, runtime: Runtime
) -> SubscriptionOut:
    """Pause an active subscription, while its receiver is down for maintenance say: nothing
    more is delivered (or read from the feed) for it, and deliveries still queued are
    cancelled, as after a 410 Gone answer. Enable it again (`POST
    /v1/subscriptions/{id}/enable`) to resume where it stopped: the cancelled deliveries are
    sent again under their same `webhook-id`, then every change that came meanwhile.

    Audited (action `subscription-change`) in the transaction that disables it: while the
    audit cannot be written the answer is 503 and it stays active. A disabled subscription
    is answered as it is. 404, audited as refused, for another department's, an unknown or
    a deleted subscription."""
    return await events_service.disable_subscription(runtime, consumer, subscription_id)


@router.post("/subscriptions/{subscription_id}/enable", response_model=SubscriptionOut)
async def enable_subscription(
    subscription_id: SubscriptionPath, consumer: Consumer, runtime: Runtime
) -> SubscriptionOut:
    """Enable again a subscription the service disabled because its receiver answered 410
    Gone, once the receiver takes webhooks again, or one you paused (`.../disable`).
    Delivery resumes where it stopped: the deliveries the disabling cancelled are sent
    again (fresh attempts, the same `webhook-id`, so a receiver de-duplicates), and so is
    every change that came while it was disabled; nothing is lost, since events are kept.
    Each is checked against the agreements when it is sent. Deliveries that were `dead`
    before stay so until you redeliver them.

    Audited (action `subscription-change`) in the transaction that enables it: while the
    audit cannot be written the answer is 503 and it stays disabled. An active
    subscription is answered as it is. 404, audited as refused, for another department's,
    an unknown or a deleted subscription (a deleted one cannot come back: subscribe
    again)."""
    return await events_service.enable_subscription(runtime, consumer, subscription_id)


@router.post("/subscriptions/{subscription_id}/rotate-secret", response_model=SecretRotated)
async def rotate_secret(
    subscription_id: SubscriptionPath, consumer: Consumer, runtime: Runtime
) -> SecretRotated:
    """Give a webhook subscription a new signing secret, returned in `secret` only now:
    keep it. The service stores it only encrypted.

    For an overlap (24 hours unless the operator set `TELLONCE_WEBHOOK_SECRET_OVERLAP_SECONDS`)
    every delivery is signed with both secrets: `webhook-signature` carries two `v1,...`
    values, the new secret's first, as Standard Webhooks allows, and a receiver accepts the
    delivery if any value matches its secret. Switch your receiver to the new secret within
    the overlap; `previous_secret_expires_at` says when the old one stops signing. A second
    rotation within the overlap keeps only the secret it replaces: the older one stops at once.

    Audited (action `subscription-change`) in the transaction that stores the new secret:
    while the audit cannot be written the answer is 503 and the secret is unchanged. 409 for
    a subscription that reads the feed (it has no secret), and for a rotation that lost to
    another made at the same moment (nothing changed; audited as refused). 404, audited as
    refused, for another department's, an unknown or a deleted subscription."""
    return await events_service.rotate_secret(runtime, consumer, subscription_id)


@router.get("/subscriptions/{subscription_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    subscription_id: SubscriptionPath,
    consumer: Consumer,
    runtime: Runtime,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryPage:
    """The webhook deliveries of a subscription: status, attempts, and the last error.

    `event_id` and `citizen_id` are null until the event was released to your department
    (audited and sent), and for a delivery the policy withheld: the list tells no more than
    the feed would."""
    return await events_service.list_deliveries(
        runtime, consumer, subscription_id, cursor=cursor, limit=limit
    )


@router.post("/subscriptions/{subscription_id}/redeliver", response_model=RedeliverOut)
async def redeliver(subscription_id: SubscriptionPath, consumer: Consumer, runtime: Runtime) -> RedeliverOut:
    """Queue every `dead` delivery of the subscription again, with fresh attempts.

    409 if the subscription is disabled (its receiver answered 410 Gone): enable it first
    (`POST /v1/subscriptions/{id}/enable`).
    """
    return await events_service.redeliver(runtime, consumer, subscription_id)


@router.get("/events", response_model=FeedPage)
async def read_feed(
    consumer: Consumer,
    runtime: Runtime,
    after: Annotated[
        str | None, Query(max_length=500, description="The `cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    wait: Annotated[float, Query(ge=0, le=events_feed.MAX_WAIT_SECONDS)] = 0,
) -> FeedPage:
    """The events of your department's subscriptions, oldest first: changes to fields it
    subscribed to and may still subscribe to now, changes to citizens' consents to its own
    agreements (`consent.changed`), and, for the citizen portal, access notices
    (`access.recorded`).

    Never a value. A field change names a citizen, the fields that changed and their
    owner: read values with `GET /v1/citizens/{id}` and a purpose. A consent change names
    the consent, the agreement, its fields and purpose and the new status; an access notice
    names the department, what it did, the fields and the purpose. With `wait` (at most
    30 s) the call holds until an event arrives. Pass the returned `cursor` as `after` next
    time.
    """
    return await events_feed.read_feed(runtime, consumer, after=after, limit=limit, wait=wait)
