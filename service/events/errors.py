"""Typed refusals of the events domain."""

from __future__ import annotations

from service.errors import Forbidden, NotFound, ValidationFailed


class SubscriptionNotFound(NotFound):
    title, slug = "No such subscription", "subscription-not-found"


class SubscribeNotPermitted(Forbidden):
    title, slug = "Subscription not permitted", "subscribe-not-permitted"


class InvalidSubscription(ValidationFailed):
    title, slug = "Invalid subscription", "invalid-subscription"


class UnsafeWebhookUrl(ValidationFailed):
    title, slug = "Webhook URL refused", "webhook-url-refused"
