"""The shapes of the tellonce v1 API, as pydantic models.

Responses allow fields this version does not know yet (a newer server may add some); the
package's own test compares every model here with the server's ``/openapi.json``, so a
change on either side fails CI until the two agree again.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticUseDefault

AgreementAction = Literal["read", "lookup", "verify", "history", "subscribe", "write", "erase"]
# A ``verify`` agreement's fixed claims: field -> operator -> the allowed operands.
ClaimOperator = Literal["eq", "lte", "gte"]
FieldName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
AllowedClaims = dict[FieldName, dict[ClaimOperator, list[str | int | bool]]]
# Why a citizen is erased: a fixed code, kept in the audit.
ErasureReason = Literal[
    "registered-in-error", "duplicate-record", "court-order", "retention-expired", "data-subject-request"
]
Effect = Literal["permit", "forbid"]
Decision = Literal["permit", "deny"]
# An agreement's legal basis: by law, with the citizen's consent, or unless the citizen objects.
Basis = Literal["statutory", "consent", "objectable"]


class Response(BaseModel):
    """A body the service returned."""

    model_config = ConfigDict(extra="allow")


class Request(BaseModel):
    """A body sent to the service: unknown fields are a mistake, refused before sending."""

    model_config = ConfigDict(extra="forbid")


class Tagged(Response):
    """A resource the service versions with an ``ETag``; pass it as ``if_match`` to write."""

    _etag: str | None = PrivateAttr(default=None)

    @property
    def etag(self) -> str | None:
        return self._etag


class ProblemError(Response):
    """One invalid input of a 422: where it is and what is wrong with it."""

    loc: list[str | int]
    msg: str


def _ignored_if_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """RFC 9457 section 3.1: a member whose value has the wrong type is ignored."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticUseDefault() from None


class Problem(Response):
    """An RFC 9457 problem detail, as every error of the service is. Every member is
    optional there (``type`` is ``about:blank`` when absent), so a problem from a proxy or
    gateway reads too; its extension members are in ``extensions``."""

    type: Annotated[str, WrapValidator(_ignored_if_invalid)] = "about:blank"
    title: Annotated[str | None, WrapValidator(_ignored_if_invalid)] = None
    status: Annotated[int | None, WrapValidator(_ignored_if_invalid)] = None
    detail: Annotated[str | None, WrapValidator(_ignored_if_invalid)] = None
    errors: list[ProblemError] = Field(default_factory=list)

    @property
    def extensions(self) -> dict[str, Any]:
        """The members RFC 9457 does not define and this model does not name."""
        return dict(self.model_extra or {})


# --- catalog ------------------------------------------------------------------------


class Department(Response):
    id: str
    name: str
    description: str = ""
    # The department's owner signing key (a C2SP vkey), if its agreements must be signed.
    signing_key: str | None = None


class Purpose(Response):
    id: str
    name: str
    description: str = ""


class FieldSpec(Response):
    name: str
    owner: str
    type: Literal["string", "date", "integer", "boolean", "enum"]
    classification: Literal["public", "personal", "sensitive", "special-category"] = "personal"
    searchable: bool = False
    max_length: int | None = None
    values: list[str] | None = None
    marks_death: bool = False
    description: str = ""


class CatalogOut(Response):
    version: int
    departments: list[Department]
    purposes: list[Purpose]
    fields: list[FieldSpec]


# --- citizens -------------------------------------------------------------------------


class RegisterCitizen(Request):
    national_id: str
    fields: dict[str, Any] = Field(default_factory=dict)


class Registered(Tagged):
    id: str
    status: str
    version: int
    fields: list[str]


class LookupCitizen(Request):
    national_id: str
    purpose: str


class LookupOut(Response):
    id: str


class FieldOut(Response):
    value: Any
    version: int | None
    updated_at: datetime | None
    owner: str


class Withheld(Response):
    field: str
    reason: str


class CitizenOut(Tagged):
    id: str
    status: str
    version: int
    fields: dict[str, FieldOut]
    withheld: list[Withheld]


class BatchGet(Request):
    ids: list[str]
    fields: list[str] | None = None
    purpose: str


class BatchItem(Response):
    id: str
    fields: dict[str, FieldOut]
    withheld: list[Withheld]


class BatchPage(Response):
    items: list[BatchItem]
    next_cursor: str | None = None


class WriteFields(Request):
    fields: dict[str, Any]
    reason: str
    purpose: str | None = None


class WriteOut(Tagged):
    id: str
    status: str
    version: int
    fields: dict[str, int]


class HistoryItem(Response):
    value: Any
    version: int
    updated_at: datetime
    written_by: str


class HistoryPage(Response):
    items: list[HistoryItem]
    next_cursor: str | None = None


class VerifyClaims(Request):
    purpose: str
    claims: dict[str, Any]


class VerifyOut(Response):
    results: dict[str, bool]
    withheld: list[Withheld] = Field(default_factory=list)


# --- policies -------------------------------------------------------------------------


class AgreementSpec(Request):
    id: str
    consumer: str
    fields: list[str]
    actions: list[AgreementAction]
    purposes: list[str] = Field(default_factory=list)
    legal_basis: str | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    when: str | None = None
    require_case_ref: bool = False
    # ``after-case-closed``: accesses under it are shown to the citizen only once the case
    # is closed or ``max_delay`` (ISO 8601, e.g. ``P365D``) has passed.
    disclosure: Literal["immediate", "after-case-closed"] = "immediate"
    max_delay: str | None = None
    effect: Effect = "permit"
    basis: Basis = "statutory"
    # The owner's base64 Ed25519 signature, for a department whose catalog entry has a signing key.
    signature: str | None = None
    verify: AllowedClaims | None = None


class AgreementIn(AgreementSpec):
    reason: str = ""


class AgreementOut(Tagged):
    id: str
    consumer: str
    fields: list[str]
    actions: list[AgreementAction]
    purposes: list[str] = Field(default_factory=list)
    legal_basis: str | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    when: str | None = None
    require_case_ref: bool = False
    # ``after-case-closed``: accesses under it are shown to the citizen only once the case
    # is closed or ``max_delay`` (ISO 8601, e.g. ``P365D``) has passed.
    disclosure: Literal["immediate", "after-case-closed"] = "immediate"
    max_delay: str | None = None
    effect: Effect = "permit"
    basis: Basis = "statutory"
    # The owner's base64 Ed25519 signature, for a department whose catalog entry has a signing key.
    signature: str | None = None
    verify: AllowedClaims | None = None
    owner: str
    version: int
    status: Literal["active", "revoked"]
    author: str
    reason: str
    created_at: datetime

    def as_input(self, reason: str = "") -> AgreementIn:
        """This agreement as the body of a replace, to change and send back."""
        spec = {name: getattr(self, name) for name in AgreementSpec.model_fields}
        return AgreementIn(**spec, reason=reason)


class AgreementPage(Response):
    items: list[AgreementOut]
    next_cursor: str | None = None


class ExplainIn(Request):
    consumer: str
    action: AgreementAction
    fields: list[str]
    purpose: str
    case_ref: str | None = None
    citizen_status: Literal["active", "deceased"] | None = None
    # Decide with this citizen's consents and objections.
    citizen_id: str | None = None


class NearMissOut(Response):
    agreement: str
    version: int
    effect: Effect
    reason: str


class DecisionOut(Response):
    effect: Decision
    agreement: str | None = None
    version: int | None = None
    reason: str
    legal_basis: str | None = None
    allowed_claims: dict[str, list[Any]] | None = None
    # A refusal under a case held from the citizen without citing an agreement: the
    # longest it is held (ISO 8601, e.g. ``P30D``); null otherwise.
    held_for: str | None = None
    near_misses: list[NearMissOut] = Field(default_factory=list)


class ExplainOut(Response):
    decisions: dict[str, DecisionOut]


class SimulateIn(Request):
    upsert: list[AgreementSpec] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    since: datetime | None = None


class ChangeOut(Response):
    consumer: str
    field: str
    action: str
    purpose: str
    before: Decision
    after: Decision
    count: int


class SimulateOut(Response):
    evaluated: int
    changed: int
    changes: list[ChangeOut]
    # consent-required / objected -> field decisions the draft withholds for that reason
    withheld_by_choice: dict[str, int] = Field(default_factory=dict)


# --- consents and objections ------------------------------------------------------------


class ConsentIn(Request):
    agreement: str
    expires_at: datetime | None = None
    # ISO 8601 duration: how long the consumer may keep what it reads, e.g. "P90D".
    data_life: str | None = None


class ConsentChange(Request):
    status: Literal["active", "paused", "revoked"]


class ConsentOut(Response):
    id: str
    citizen_id: str
    agreement: str
    consumer: str
    purpose: str
    fields: list[str]
    # The actions the consent covers: the agreement's when the citizen consented. Actions
    # the owner added to the agreement later need a new consent.
    actions: list[str]
    status: Literal["active", "paused", "revoked", "expired"]
    created_at: datetime
    expires_at: datetime | None
    data_life: str | None = None
    # A compact JWS (ES256, typ consent+jwt) of the consent's terms; verify with the JWKS.
    signature: str


class ConsentPage(Response):
    items: list[ConsentOut]
    next_cursor: str | None = None


class ObjectionOut(Response):
    citizen_id: str
    agreement: str
    consumer: str
    fields: list[str]
    created_at: datetime


class ObjectionPage(Response):
    items: list[ObjectionOut]
    next_cursor: str | None = None


# --- events ---------------------------------------------------------------------------


EventType = Literal["citizen.fields_changed", "access.recorded", "consent.changed"]


class SubscriptionIn(Request):
    """Field changes (``fields`` and ``purpose``), access notices (``type`` ``access.recorded``,
    for the citizen portal: neither), or consent changes to your department's agreements
    (``type`` ``consent.changed``: neither)."""

    type: EventType = "citizen.fields_changed"
    fields: list[str] = Field(default_factory=list)
    purpose: str | None = None
    webhook_url: str | None = None


class SubscriptionOut(Response):
    id: str
    type: EventType
    department: str
    fields: list[str]
    purpose: str | None
    webhook_url: str | None
    status: Literal["active", "disabled", "deleted"]
    created_at: datetime
    # After a rotation, until when deliveries carry the old secret's signature too.
    previous_secret_expires_at: datetime | None = None


class SubscriptionCreated(SubscriptionOut):
    """A new subscription; ``secret`` (for webhooks) is shown here and never again."""

    secret: str | None = None


class SecretRotated(SubscriptionOut):
    """A subscription with its new signing secret, shown here and never again; the old one
    signs too until ``previous_secret_expires_at``."""

    secret: str


class SubscriptionPage(Response):
    items: list[SubscriptionOut]
    next_cursor: str | None = None


class DeliveryOut(Response):
    id: str
    webhook_id: str
    # None until the event was released to your department, and when it was withheld.
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


class DeliveryPage(Response):
    items: list[DeliveryOut]
    next_cursor: str | None = None


class RedeliverOut(Response):
    requeued: int


class EventData(Response):
    event_id: str
    citizen_id: str
    fields: list[str]
    owner: str
    occurred_at: datetime


class AccessNotice(Response):
    """One access that released a citizen's data (never a value); ``disclosed_at`` and
    ``disclosed_by`` for one kept from the citizen until its case closed or its delay passed."""

    type: Literal["access.recorded"] = "access.recorded"
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


class ConsentChanged(Response):
    """A citizen's consent to one of your department's agreements was given or changed."""

    type: Literal["consent.changed"] = "consent.changed"
    event_id: str
    citizen_id: str
    consent_id: str
    agreement: str
    purpose: str
    fields: list[str]
    status: Literal["active", "paused", "revoked"]
    occurred_at: datetime


class FeedPage(Response):
    items: list[EventData | AccessNotice | ConsentChanged]
    cursor: str


class CaseOut(Response):
    department: str
    case_ref: str
    opened_at: datetime
    closed_at: datetime | None


# --- clients (an admin client's own department) ------------------------------------------


class ClientIn(Request):
    """A client to register: ``roles`` from consumer, writer, registrar and data-owner; with
    ``jwk`` (a public key) it authenticates with private_key_jwt and gets no secret."""

    roles: list[str]
    department: str | None = None
    name: str | None = None
    jwk: dict[str, Any] | None = None
    rate_per_second: float | None = None
    rate_burst: int | None = None


class NewClientOut(Response):
    client_id: str
    # In this answer only: the service keeps its hash. None for a private_key_jwt client.
    client_secret: str | None = None


class ClientOut(Response):
    client_id: str
    name: str
    department: str
    roles: list[str]
    auth_method: Literal["client_secret", "private_key_jwt"]
    created_at: datetime
    disabled_at: datetime | None


class ClientList(Response):
    items: list[ClientOut]


# --- audit (shapes fixed by DESIGN.md; the server declares them as plain objects) ---------


class AuditEntryItem(Response):
    """One stored entry: ``entry`` is the canonical record whose bytes the leaf hashes."""

    id: int
    leaf_index: int | None
    entry: dict[str, Any]


class AuditEntryPage(Response):
    items: list[AuditEntryItem]
    next_cursor: str | None = None


class UsageRow(Response):
    consumer: str
    # None for a field the catalog in force no longer has (its owner is not known).
    owner: str | None
    field: str
    purpose: str | None
    period: str
    count: int


class UsagePage(Response):
    items: list[UsageRow]
    next_cursor: str | None = None


class InclusionProof(Response):
    leaf_index: int
    tree_size: int
    leaf_hash: str
    hashes: list[str]
    entry: dict[str, Any]


class AccessLogItem(Response):
    time: str
    department: str
    action: str
    fields: list[str]
    purpose: str | None
    decision: str
    # With proofs=true: the line's inclusion proof (None until a witnessed checkpoint covers it).
    proof: InclusionProof | None = None


class AccessLogPage(Response):
    items: list[AccessLogItem]
    next_cursor: str | None = None
    # With proofs=true: the witnessed checkpoint note the proofs are against.
    checkpoint: str | None = None


class ConsistencyProof(Response):
    first: int
    second: int
    hashes: list[str]
