"""Request and response bodies of the citizen endpoints (shapes fixed by DESIGN.md)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.catalog.schemas import KEYED_BY_FIELD, FieldName, PurposeId

MAX_BATCH = 1000

# A citizen id as the service issues it (``str(uuid.uuid4())``: registration, seeding and
# the import). Anything else names no citizen, and text such as a NUL character would
# reach the database as a query argument PostgreSQL refuses: it is a 422, like any other
# malformed parameter, before anything is read.
CITIZEN_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_CITIZEN_ID = re.compile(CITIZEN_ID_PATTERN)


def is_citizen_id(text: str) -> bool:
    """Whether ``text`` has the form of a citizen id (whether or not one is registered)."""
    return _CITIZEN_ID.fullmatch(text) is not None


# A batch-get's ids carry the same pattern, so the OpenAPI document states the form too.
CitizenId = Annotated[str, Field(pattern=CITIZEN_ID_PATTERN)]


# Why a citizen is erased: a fixed code rather than free text, because the audit entry
# keeps it and free text may hold personal data.
ErasureReason = Literal[
    "registered-in-error", "duplicate-record", "court-order", "retention-expired", "data-subject-request"
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterCitizen(_In):
    national_id: str = Field(min_length=1, max_length=64)
    fields: Annotated[dict[FieldName, Any], KEYED_BY_FIELD] = Field(default_factory=dict, max_length=100)


class LookupCitizen(_In):
    national_id: str = Field(min_length=1, max_length=64)
    purpose: PurposeId


class WriteFields(_In):
    fields: Annotated[dict[FieldName, Any], KEYED_BY_FIELD] = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=500)
    purpose: PurposeId | None = None


# A claim: an object of operators. Its shape is checked by the records layer
# (``validation.validate_claims``), once its field is known to the catalog: checked here,
# an error would be located under the key the caller sent, which may be a value.
Claim = Annotated[Any, WithJsonSchema({"type": "object", "additionalProperties": True})]


class VerifyClaims(_In):
    purpose: PurposeId
    claims: Annotated[dict[FieldName, Claim], KEYED_BY_FIELD] = Field(min_length=1, max_length=50)


class BatchGet(_In):
    ids: list[CitizenId] = Field(
        min_length=1, max_length=MAX_BATCH, description="Citizen ids, as registration returns them."
    )
    fields: list[FieldName] | None = Field(default=None, max_length=100)
    purpose: PurposeId


class FieldOut(BaseModel):
    value: Any
    version: int | None
    updated_at: datetime | None
    owner: str


class Withheld(BaseModel):
    field: str
    reason: str


class CitizenOut(BaseModel):
    id: str
    status: str
    version: int
    fields: dict[str, FieldOut]
    withheld: list[Withheld]


class Registered(BaseModel):
    id: str
    status: str
    version: int
    fields: list[str]


class LookupOut(BaseModel):
    id: str


class WriteOut(BaseModel):
    id: str
    status: str
    version: int
    fields: dict[str, int]


class VerifyOut(BaseModel):
    results: dict[str, bool]
    withheld: list[Withheld] = Field(default_factory=list)


class HistoryItem(BaseModel):
    value: Any
    version: int
    updated_at: datetime
    written_by: str


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None = None


class BatchItem(BaseModel):
    id: str
    fields: dict[str, FieldOut]
    withheld: list[Withheld]


class BatchPage(BaseModel):
    items: list[BatchItem]
    next_cursor: str | None = None
