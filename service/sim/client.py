"""A department's system, as the demo drives it: the ``tellonce-client`` library
(``clients/python``) with the department's own OAuth2 credentials, calling the REST API.

Every counted call is recorded in the shared ``Tally``: a 2xx is an allowed request, a 403
or a 404 from the access path is a denial (404 is how the service refuses a caller that
may not even know the citizen exists), anything else is an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from tellonce_client import ApiError, ClientSecret, RetryPolicy, TellonceClient
from tellonce_client import models as api

from service.sim.tally import Tally

T = TypeVar("T")
# The demo measures the service: a refusal is counted as it comes, never retried away.
NO_RETRIES = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Credentials:
    """A demo client's sign-in, as written to ``clients.json``."""

    department: str
    roles: tuple[str, ...]
    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return (
            f"Credentials(department={self.department!r}, roles={self.roles!r}, client_id={self.client_id!r})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "department": self.department,
            "roles": list(self.roles),
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Credentials:
        return cls(
            department=str(record["department"]),
            roles=tuple(str(role) for role in record["roles"]),
            client_id=str(record["client_id"]),
            client_secret=str(record["client_secret"]),
        )


class DemoHttpError(Exception):
    """A call the scenario expected to succeed did not; the message names the call only."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a counted call came to: its status, and the typed answer when it succeeded."""

    status: int
    value: T | None
    # The refusal's problem type slug (``consent-required``...), when it was refused.
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


class DepartmentClient:
    """One department system. Shares an ``httpx.AsyncClient`` (and its pool) with the others."""

    def __init__(self, http: httpx.AsyncClient, credentials: Credentials, tally: Tally) -> None:
        self.credentials = credentials
        self.tally = tally
        self.api = TellonceClient(
            str(http.base_url),
            ClientSecret(credentials.client_id, credentials.client_secret),
            http=http,
            retry=NO_RETRIES,
        )

    @property
    def department(self) -> str:
        return self.credentials.department

    def __repr__(self) -> str:
        return f"DepartmentClient({self.department!r}, {self.credentials.client_id!r})"

    async def _counted(self, call: Awaitable[T], success: int = 200) -> Outcome[T]:
        try:
            value = await call
        except ApiError as refused:
            self.tally.record_call(self.department, refused.status)
            return Outcome(refused.status, None, refused.problem.type.rsplit("/", 1)[-1])
        self.tally.record_call(self.department, success)
        return Outcome(success, value)

    async def _expected(self, call: Awaitable[T], what: str) -> T:
        """A call outside the counted traffic that must succeed (set-up, the report)."""
        try:
            return await call
        except ApiError as refused:
            raise DemoHttpError(f"{self.department}: {what} answered {refused.status}") from None

    # --- the citizen API --------------------------------------------------------------

    async def lookup_outcome(
        self, national_id: str, purpose: str, *, case_ref: str | None = None
    ) -> Outcome[api.LookupOut]:
        return await self._counted(self.api.lookup(national_id, purpose, case_ref=case_ref))

    async def lookup(self, national_id: str, purpose: str, *, case_ref: str | None = None) -> str | None:
        found = await self.lookup_outcome(national_id, purpose, case_ref=case_ref)
        return found.value.id if found.value is not None else None

    async def read(
        self, citizen_id: str, fields: Sequence[str], purpose: str, *, case_ref: str | None = None
    ) -> Outcome[api.CitizenOut]:
        return await self._counted(self.api.read_citizen(citizen_id, purpose, fields, case_ref=case_ref))

    async def read_values(
        self, citizen_id: str, fields: Sequence[str], purpose: str
    ) -> dict[str, Any] | None:
        """The released values, or None if the read was refused."""
        read = await self.read(citizen_id, fields, purpose)
        if read.value is None:
            return None
        return {name: item.value for name, item in read.value.fields.items()}

    async def write(
        self, citizen_id: str, fields: Mapping[str, Any], reason: str, *, purpose: str | None = None
    ) -> Outcome[api.WriteOut]:
        return await self._counted(self.api.write_fields(citizen_id, fields, reason, purpose=purpose))

    async def verify(
        self, citizen_id: str, purpose: str, claims: Mapping[str, Mapping[str, Any]]
    ) -> Outcome[api.VerifyOut]:
        return await self._counted(self.api.verify(citizen_id, purpose, claims))

    # --- the citizen portal: a citizen's consents and objections ----------------------

    async def give_consent(self, citizen_id: str, agreement: str) -> Outcome[api.ConsentOut]:
        return await self._counted(self.api.give_consent(citizen_id, agreement), success=201)

    async def change_consent(self, citizen_id: str, consent_id: str, status: str) -> Outcome[api.ConsentOut]:
        return await self._counted(self.api.change_consent(citizen_id, consent_id, status))

    async def object_to(self, citizen_id: str, agreement: str) -> Outcome[api.ObjectionOut]:
        return await self._counted(self.api.object_to(citizen_id, agreement), success=201)

    async def objections(self, citizen_id: str) -> set[str]:
        """The agreements the citizen objects to (set-up, not counted)."""
        page = await self._expected(self.api.list_objections(citizen_id), "listing objections")
        return {item.agreement for item in page.items}

    # --- tell-us-once events ----------------------------------------------------------

    async def subscriptions(self) -> list[api.SubscriptionOut] | None:
        """This department's subscriptions; None if the server has no events service."""
        try:
            return [item async for item in self.api.iter_subscriptions()]
        except ApiError as refused:
            if refused.status in (404, 405):
                return None
            raise DemoHttpError(
                f"{self.department}: listing subscriptions answered {refused.status}"
            ) from None

    async def unsubscribe(self, subscription_id: str) -> None:
        await self._expected(self.api.delete_subscription(subscription_id), "unsubscribing")

    async def subscribe(
        self, fields: Sequence[str], purpose: str, *, url: str | None = None
    ) -> api.SubscriptionCreated:
        """Subscribe to changes of ``fields`` for ``purpose``: by webhook to ``url``, or by the feed."""
        return await self._expected(self.api.subscribe(fields, purpose, webhook_url=url), "subscribing")

    async def subscribe_access_notices(self, url: str) -> api.SubscriptionCreated:
        """The citizen portal: be told of every access to a citizen's record, by webhook."""
        return await self._expected(self.api.subscribe_access_notices(webhook_url=url), "subscribing")

    async def subscribe_consent_changes(self) -> api.SubscriptionCreated:
        """Be told, by the feed, when a citizen's consent to one of this department's
        agreements changes."""
        return await self._expected(self.api.subscribe_consent_changes(), "subscribing")

    async def close_case(self, case_ref: str) -> Outcome[api.CaseOut]:
        return await self._counted(self.api.close_case(case_ref))

    async def events(self, after: str | None, wait: float) -> tuple[list[dict[str, Any]], str | None]:
        page = await self._expected(self.api.events(after, wait=wait), "the event feed")
        return [item.model_dump(mode="json") for item in page.items], page.cursor or after

    # --- policies and audit -----------------------------------------------------------

    async def revoke(self, agreement_id: str) -> Outcome[api.AgreementOut]:
        try:
            return Outcome(200, await self.api.revoke_agreement(agreement_id))
        except ApiError as refused:
            return Outcome(refused.status, None)

    async def usage(self) -> list[dict[str, Any]]:
        """Every row of the usage report, following the cursor."""
        try:
            return [row.model_dump() async for row in self.api.iter_usage()]
        except ApiError as refused:
            raise DemoHttpError(f"{self.department}: the usage report answered {refused.status}") from None

    async def verifier_key(self) -> str:
        return await self._expected(self.api.verifier_key(), "the verifier key")

    async def export(self) -> list[str]:
        """Every audit entry, as the JSON lines of ``/v1/audit/export``."""
        try:
            return [line async for line in self.api.export_audit(format="jsonl")]
        except ApiError as refused:
            raise DemoHttpError(f"{self.department}: the audit export answered {refused.status}") from None

    async def checkpoint(self) -> str | None:
        try:
            return await self.api.checkpoint()
        except ApiError:
            return None
