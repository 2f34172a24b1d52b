"""The ``/v1/clients`` API's bodies: an admin client registers and disables its
department's clients. Secrets appear once, in ``NewClientOut``, and never again."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.auth.models import Client
from service.auth.service import MAX_RATE_BURST, MAX_RATE_PER_SECOND


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    department: str | None = Field(
        default=None,
        max_length=64,
        description="The new client's department; yours if left out (an admin registers only its own).",
    )
    roles: Annotated[list[Annotated[str, Field(max_length=32)]], Field(min_length=1, max_length=8)] = Field(
        description="Its roles: consumer, writer, registrar or data-owner."
    )
    name: str | None = Field(default=None, max_length=200, description="A human name for the client.")
    jwk: dict[str, Any] | None = Field(
        default=None,
        description="A public JWK (EC, OKP or RSA): the client authenticates with private_key_jwt "
        "and gets no secret.",
    )
    rate_per_second: float | None = Field(
        default=None,
        gt=0,
        le=MAX_RATE_PER_SECOND,
        description="Requests per second (default: the service's).",
    )
    rate_burst: int | None = Field(
        default=None, ge=1, le=MAX_RATE_BURST, description="Burst size (default: the service's)."
    )


class NewClientOut(BaseModel):
    client_id: str
    client_secret: str | None = Field(
        default=None, description="Shown in this answer only; only its hash is kept. None for a JWK client."
    )


class ClientOut(BaseModel):
    client_id: str
    name: str
    department: str
    roles: list[str]
    auth_method: Literal["client_secret", "private_key_jwt"]
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, client: Client) -> ClientOut:
        return cls(
            client_id=client.client_id,
            name=client.name,
            department=client.department,
            roles=list(client.roles),
            auth_method="private_key_jwt" if client.public_jwk else "client_secret",
            created_at=client.created_at,
            disabled_at=client.disabled_at,
        )


class ClientList(BaseModel):
    items: list[ClientOut]
