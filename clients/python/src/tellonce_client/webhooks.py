"""Verify a webhook from tellonce, as the Standard Webhooks specification signs it.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature header holds
space-separated ``v1,<base64 HMAC-SHA256>`` values under the secret after its ``whsec_``
prefix (base64). A delivery is accepted if any value matches (secrets can be rotated) and
its timestamp is within the tolerance (replays of old deliveries are refused).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tellonce_client.errors import TellonceError
from tellonce_client.models import EventData

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not one
DEFAULT_TOLERANCE_SECONDS = 300
# Integer seconds written as plain ASCII digits, no sign, space or leading zero: the one
# spelling whose number, written again, is the header's text the signed content holds.
# Eighteen digits are far beyond any tolerance, and the number stays a float's.
_TIMESTAMP = re.compile(r"[1-9][0-9]{0,17}")


class WebhookVerificationError(TellonceError):
    """The delivery is not from the holder of the secret, is too old or too new, or is
    not a JSON object (or, for ``verify_event``, not the event expected)."""


class WebhookVerifier:
    """Holds a subscription's ``whsec_`` secret; its repr never shows it."""

    def __init__(self, secret: str, *, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS) -> None:
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            self._key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret is whsec_ followed by base64") from None
        if not self._key:
            raise ValueError("a webhook secret is whsec_ followed by base64 of the key; it is empty")
        self.tolerance_seconds = tolerance_seconds

    def __repr__(self) -> str:
        return "WebhookVerifier(secret=***)"

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``v1,...`` signature value for this delivery."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> dict[str, Any]:
        """The delivery's JSON payload if its signature and ``webhook-timestamp`` hold; else raise.

        tellonce's payload is ``{"type", "timestamp", "data"}``: ``timestamp`` (RFC 3339) is
        when the event occurred, the same as ``data["occurred_at"]``, on every attempt."""
        lowered = {name.lower(): value for name, value in headers.items()}
        message_id = lowered.get("webhook-id")
        timestamp_text = lowered.get("webhook-timestamp")
        signatures = lowered.get("webhook-signature")
        if not message_id or not timestamp_text or not signatures:
            raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
        # int() alone would also read "+1", " 1 ", "1_0" or other scripts' digits, each a
        # header other than the one whose text was signed.
        if not _TIMESTAMP.fullmatch(timestamp_text):
            raise WebhookVerificationError("webhook-timestamp is not an integer in seconds")
        timestamp = int(timestamp_text)
        current = time.time() if now is None else now
        if abs(current - timestamp) > self.tolerance_seconds:
            raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
        expected = self.sign(message_id, timestamp, body).encode()
        if not any(hmac.compare_digest(candidate.encode(), expected) for candidate in signatures.split(" ")):
            raise WebhookVerificationError("no signature matches")
        # Signed, yet not a payload (a sender's bug): refused as one, the body left unshown.
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise WebhookVerificationError("the signed body is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookVerificationError("the signed body is not a JSON object")
        return payload

    def verify_event(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> EventData:
        """A verified ``citizen.fields_changed`` delivery's ``data``; its ``occurred_at`` is
        the payload's ``timestamp``."""
        payload = self.verify(headers, body, now=now)
        if payload.get("type") != "citizen.fields_changed":
            raise WebhookVerificationError(f"unexpected event type {payload.get('type')!r}")
        try:
            return EventData.model_validate(payload.get("data"))
        except ValidationError:
            raise WebhookVerificationError(
                "the event's data is not a citizen.fields_changed event's"
            ) from None
