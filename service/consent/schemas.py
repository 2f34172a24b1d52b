"""Consents and objections as the API takes and returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from service.catalog.schemas import Identifier

ConsentStatus = Literal["active", "paused", "revoked", "expired"]
# An ISO 8601 duration of days, weeks, months or years, such as P30D or P1Y.
_N = "[0-9]+"  # ASCII digits: \d would take any script's
DataLife = Annotated[
    str,
    StringConstraints(
        pattern=f"^P({_N}Y|{_N}M|{_N}W|{_N}D|{_N}Y{_N}M|{_N}M{_N}D|{_N}Y{_N}M{_N}D)$", max_length=32
    ),
]


class ConsentIn(BaseModel):
    """A citizen's consent to one consent-based agreement."""

    model_config = ConfigDict(extra="forbid")

    agreement: Identifier
    # When the consent lapses by itself; none: until paused or revoked.
    expires_at: datetime | None = None
    # How long the consumer may keep what it reads under the consent (ISO 8601, e.g. P90D).
    data_life: DataLife | None = None


class ConsentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # ``revoked`` is final; ``expired`` comes only with time.
    status: Literal["active", "paused", "revoked"]


class ConsentOut(BaseModel):
    """A consent artefact. ``signature`` is a compact JWS (ES256, ``typ`` ``consent+jwt``)
    over its terms, verifiable with the keys at ``/.well-known/evidence-keys.json``; ``status`` is
    the current one, which the signed terms do not carry."""

    id: str
    citizen_id: str
    agreement: str
    consumer: str
    purpose: str
    fields: list[str]
    # The actions the consent covers: the agreement's when the citizen consented. An owner
    # who later adds an action needs a new consent for it.
    actions: list[str]
    status: ConsentStatus
    created_at: datetime
    expires_at: datetime | None
    data_life: str | None = None
    signature: str


class ConsentPage(BaseModel):
    items: list[ConsentOut]
    next_cursor: str | None = None


class ObjectionOut(BaseModel):
    citizen_id: str
    agreement: str
    consumer: str
    fields: list[str]
    created_at: datetime


class ObjectionPage(BaseModel):
    items: list[ObjectionOut]
    next_cursor: str | None = None
