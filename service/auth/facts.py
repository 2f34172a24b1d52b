"""The facts of one request that every domain's rules and audit entries need.

Built once per request by ``facts(...)`` (an endpoint dependency), or directly by a
command that acts as a client (the demo's seeding, an import). Records and events take
it instead of reading the request themselves.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth.dependencies import Principal, demand, get_principal
from service.errors import Loc, ValidationFailed
from service.observability import current_request_id
from service.policy.epoch import EpochKey

# A case reference: 1 to 100 printable ASCII characters, the first not a space.
CASE_REF_PATTERN = r"^[\x21-\x7e][\x20-\x7e]{0,99}$"
_CASE_REF = re.compile(CASE_REF_PATTERN)
# What the OpenAPI document says of a case reference; ``check_case_ref`` enforces it, with
# its own message, so the parameters carry it as documentation only.
CASE_REF_SCHEMA = {"pattern": _CASE_REF.pattern, "minLength": 1, "maxLength": 100}


def check_case_ref(reference: str, loc: list[str | int]) -> str:
    """``reference`` if it is a case reference (1 to 100 printable ASCII characters), else 422."""
    if not _CASE_REF.match(reference):
        raise ValidationFailed(
            "A case reference must be 1 to 100 printable ASCII characters.",
            errors=[{"loc": loc, "msg": "invalid case reference"}],
        )
    return reference


@dataclass(frozen=True)
class RequestFacts:
    """Who asks, why, and what the audit records with every entry about the request."""

    principal: Principal
    request_id: str
    source: str | None = None
    case_ref: str | None = None
    # The purpose the caller states for this access; None where none applies (a
    # registration, an owner's own write, a subscription listing).
    purpose: str | None = None
    # The revocation epoch authentication just read, so the policy need not read it again.
    epoch_key: EpochKey | None = None

    @property
    def department(self) -> str:
        return self.principal.department

    @property
    def on_behalf_of(self) -> str | None:
        return self.principal.on_behalf_of

    def for_purpose(self, purpose: str | None) -> RequestFacts:
        """The same request, stating ``purpose``."""
        return replace(self, purpose=purpose)

    def stated_purpose(self, at: Loc) -> str:
        """The purpose, which an access to citizen data must state (sent at ``at``)."""
        if not self.purpose:
            raise ValidationFailed(
                "A purpose is required.", errors=[{"loc": list(at), "msg": "a purpose is required"}]
            )
        return self.purpose


def request_facts(
    request: Request,
    principal: Principal,
    needed: frozenset[str],
    reference: str | None,
    purpose: str | None = None,
) -> RequestFacts:
    """The facts of an authenticated request: its case reference (422 unless one is valid),
    then the scopes ``needed`` (403 naming the missing ones). ``facts(...)`` and the hot
    routes (``service.hotpath``) both gather them here; a hot route passes the ``purpose``
    its query states, as ``for_purpose`` would add it."""
    if reference is not None:
        headers: list[tuple[bytes, bytes]] = request.scope["headers"]
        if sum(name == b"x-case-ref" for name, _value in headers) > 1:
            # As X-On-Behalf-Of: one case per request, never one of two picked.
            raise ValidationFailed(
                "Send X-Case-Ref once.",
                errors=[{"loc": ["header", "X-Case-Ref"], "msg": "given more than once"}],
            )
        check_case_ref(reference, ["header", "X-Case-Ref"])
    return RequestFacts(
        principal=demand(principal, needed),
        request_id=current_request_id(),
        source=source_address(request),
        case_ref=reference,
        purpose=purpose,
        # ``getattr(request.state, "epoch_key", None)``, from the dict ``request.state`` wraps.
        epoch_key=request.scope.get("state", {}).get("epoch_key"),
    )


def source_address(request: Request) -> str | None:
    """The address a request came from, as the audit records it and the failure throttle
    counts it: the connection's peer, or the ``X-Forwarded-For`` address uvicorn puts in
    its place when that peer is a proxy it trusts (``FORWARDED_ALLOW_IPS``). Read as
    ``request.client.host`` is, without building Starlette's ``Address``."""
    client = request.scope.get("client")
    return client[0] if client is not None else None


def facts(*scopes: str, case_ref: bool = True) -> Callable[..., Awaitable[RequestFacts]]:
    """Authenticate with ``scopes`` and gather the request's facts (no purpose yet: the
    endpoint adds the one its body or query states). With ``case_ref``, the endpoint takes
    the optional ``X-Case-Ref`` header (the citizen endpoints); without, it does not.

    The scopes are checked here rather than through ``require``: one dependency level
    fewer on the citizen routes, where FastAPI's resolution of each level costs more than
    the check (``bench/README.md``)."""
    needed = frozenset(scopes)
    # A default, not an annotation: string annotations cannot see this closure's scopes.
    authenticated = Depends(get_principal)

    async def with_case_ref(
        request: Request,
        principal: Principal = authenticated,
        reference: Annotated[
            str | None,
            Header(
                alias="X-Case-Ref",
                description="The case this access is for: 1 to 100 printable ASCII characters.",
                json_schema_extra=CASE_REF_SCHEMA,
            ),
        ] = None,
    ) -> RequestFacts:
        return request_facts(request, principal, needed, reference)

    async def without_case_ref(request: Request, principal: Principal = authenticated) -> RequestFacts:
        return request_facts(request, principal, needed, None)

    chosen = with_case_ref if case_ref else without_case_ref
    # Read by the OpenAPI document (service/openapi.py) to declare each route's scopes.
    chosen.required_scopes = needed  # type: ignore[attr-defined]
    return chosen
