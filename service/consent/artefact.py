"""The signed form of a consent: a compact JWS a department can keep as evidence.

Signed with the service's active access-token key (ES256), so the keys at
``/.well-known/evidence-keys.json`` (every key ever used, retired ones included) verify
it, under ``typ: consent+jwt`` so that an artefact can
never pass for an access token (which must be ``at+jwt``). The payload is the consent's
terms, which never change; its status does, and is not signed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from joserfc import jwt

from service.auth.keys import ALGORITHM, SigningKeys

CONSENT_TYPE = "consent+jwt"


def terms(
    *,
    issuer: str,
    consent_id: str,
    citizen_id: str,
    agreement: str,
    owner: str,
    consumer: str,
    purpose: str,
    fields: list[str],
    actions: list[str],
    created_at: datetime,
    expires_at: datetime | None,
    data_life: str | None,
) -> dict[str, Any]:
    """The signed claims: standard ``iss``, ``sub`` (the citizen), ``jti`` (the consent)
    and ``iat``, and the consent's terms. No field value and no national id."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": citizen_id,
        "jti": consent_id,
        "iat": int(created_at.timestamp()),
        "agreement": agreement,
        "owner": owner,
        "consumer": consumer,
        "purpose": purpose,
        "fields": fields,
        "actions": actions,
        "created_at": created_at.isoformat(),
        "expires_at": expires_at.isoformat() if expires_at is not None else None,
    }
    if data_life is not None:
        claims["data_life"] = data_life
    return claims


def sign(claims: dict[str, Any], keys: SigningKeys) -> str:
    key = keys.active
    header = {"alg": ALGORITHM, "typ": CONSENT_TYPE, "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])
