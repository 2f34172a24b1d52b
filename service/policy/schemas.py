"""Agreements as written in policy files and sent to the API, and the API's answers."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.auth.facts import CASE_REF_PATTERN
from service.catalog.schemas import KEYED_BY_FIELD, FieldName, Identifier
from service.policy.engine import Action, Agreement, Basis, Effect
from service.policy.terms import Disclosure, parse_duration

Status = Literal["active", "revoked"]
# The operators a ``verify`` agreement may fix thresholds for ('in' is asked as several 'eq').
AllowedOperator = Literal["eq", "lte", "gte"]
Threshold = Annotated[str, StringConstraints(min_length=1, max_length=100)] | int | bool


class AgreementSpec(BaseModel):
    """One entry of ``agreements:`` in ``policies/<owner>.yaml`` (the file format is a contract)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    consumer: Identifier
    fields: list[FieldName] = Field(min_length=1)
    actions: list[Action] = Field(min_length=1)
    purposes: list[Identifier] = Field(default_factory=list)
    legal_basis: str | None = Field(default=None, max_length=500)
    valid_from: date | None = None
    valid_until: date | None = None
    when: str | None = Field(default=None, max_length=2000)
    require_case_ref: bool = False
    # ``after-case-closed``: accesses under it are kept from the citizen until the consumer
    # closes the case (each access must carry one) or ``max_delay`` (ISO 8601, e.g. P365D)
    # passes. Auditors see them at once.
    disclosure: Disclosure = "immediate"
    max_delay: str | None = Field(default=None, max_length=40)
    effect: Effect = "permit"
    # ``consent``: releases only while the citizen holds an active consent to this
    # agreement; ``objectable``: unless the citizen has objected. The default is left out
    # of the stored and signed form, so agreements signed before ``basis`` existed verify.
    basis: Basis = "statutory"
    # The owner's base64 Ed25519 signature over the agreement's signing text
    # (``service/policy/signing.py``); required when the owner's department has a key.
    signature: str | None = Field(default=None, max_length=200)
    # ``verify`` agreements: per field, the claims a consumer may ask, e.g.
    # ``{date_of_birth: {lte: [today-18y]}}``. A field left out may be asked anything.
    verify: Annotated[dict[FieldName, dict[AllowedOperator, list[Threshold]]], KEYED_BY_FIELD] | None = Field(
        default=None, max_length=50
    )

    def content(self) -> dict[str, Any]:
        """The stored form: JSON-compatible, defaults left out so files stay short."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def to_engine(self, owner: str, version: int, digest: str = "") -> Agreement:
        return Agreement(
            id=self.id,
            owner=owner,
            consumer=self.consumer,
            fields=tuple(self.fields),
            actions=tuple(self.actions),
            purposes=tuple(self.purposes),
            legal_basis=self.legal_basis,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            when=self.when,
            require_case_ref=self.require_case_ref,
            disclosure_delay=self.disclosure_delay(),
            effect=self.effect,
            basis=self.basis,
            version=version,
            digest=digest,
            verify=(
                {
                    name: {op: tuple(operands) for op, operands in claims.items()}
                    for name, claims in self.verify.items()
                }
                if self.verify is not None
                else None
            ),
        )

    def disclosure_delay(self) -> timedelta | None:
        """``max_delay`` for an ``after-case-closed`` agreement (the loader has checked it)."""
        if self.disclosure != "after-case-closed" or self.max_delay is None:
            return None
        try:
            return parse_duration(self.max_delay)
        except ValueError:
            return None


class PolicyFile(BaseModel):
    """``policies/<owner>.yaml``: one owner and the agreements it grants."""

    model_config = ConfigDict(extra="forbid")

    owner: Identifier
    agreements: list[dict[str, Any]] = Field(default_factory=list)


class AgreementIn(AgreementSpec):
    """An agreement sent to ``POST`` or ``PUT /v1/policies``; ``reason`` is kept with the version."""

    reason: str = Field(default="", max_length=1000)

    def spec(self) -> AgreementSpec:
        return AgreementSpec.model_validate(self.model_dump(exclude={"reason"}))


class AgreementOut(AgreementSpec):
    """An agreement version: the file entry plus its owner, version and status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: str
    version: int
    status: Status
    author: str
    reason: str
    created_at: datetime


class AgreementPage(BaseModel):
    items: list[AgreementOut]
    next_cursor: str | None = None


class ExplainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consumer: Identifier
    action: Action
    fields: list[FieldName] = Field(min_length=1, max_length=200)
    purpose: Identifier
    # As a request's X-Case-Ref must be: a reference the citizen endpoints would refuse
    # (422) is never explained as one that permits.
    case_ref: str | None = Field(default=None, pattern=CASE_REF_PATTERN)
    citizen_status: Literal["active", "deceased"] | None = None
    # Decide with this citizen's consents and objections; without it, as for a citizen
    # who has given no consent and made no objection.
    citizen_id: str | None = Field(default=None, max_length=36)


class NearMissOut(BaseModel):
    agreement: str
    version: int
    effect: Effect
    reason: str


class DecisionOut(BaseModel):
    effect: Literal["permit", "deny"]
    agreement: str | None = None
    version: int | None = None
    reason: str
    legal_basis: str | None = None
    # For ``verify``: the claims the deciding agreement allows on this field (null: any,
    # limited per consumer, citizen and day).
    allowed_claims: dict[str, list[Any]] | None = None
    # A refusal under a case held from the citizen's access log without citing an
    # agreement (the field's owner gave the consumer no delayed-disclosure agreement): the
    # longest it is held, as an ISO 8601 duration (``P30D``), as the audit reason's
    # ``held_for``; null otherwise.
    held_for: str | None = None
    near_misses: list[NearMissOut] = Field(default_factory=list)


class ExplainOut(BaseModel):
    decisions: dict[str, DecisionOut]


class SimulateIn(BaseModel):
    """A ``POST /v1/policies/simulate`` body as /openapi.json documents it. The endpoint
    reads the body as sent and ``service.policy.checks`` judges it in one round."""

    model_config = ConfigDict(extra="forbid")

    upsert: list[AgreementSpec] = Field(default_factory=list, max_length=1000)
    remove: list[Identifier] = Field(default_factory=list, max_length=1000)
    since: datetime | None = None


class ChangeOut(BaseModel):
    consumer: str
    field: str
    action: str
    purpose: str
    before: Literal["permit", "deny"]
    after: Literal["permit", "deny"]
    count: int


class SimulateOut(BaseModel):
    evaluated: int
    changed: int
    changes: list[ChangeOut]
    # Field decisions the draft would withhold for a citizen's choice, by reason:
    # ``consent-required`` (no active consent) and ``objected``.
    withheld_by_choice: dict[str, int] = Field(default_factory=dict)
