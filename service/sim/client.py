"""A department's system, as the demo drives it: a real HTTP client with its own OAuth2
credentials (client credentials grant against ``/oauth/token``), calling the REST API.

Every call is counted in the shared ``Tally``: a 2xx is an allowed request, a 403 or a
404 from the access path is a denial (404 is how the service refuses a caller that may not
even know the citizen exists), anything else is an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from service.sim.tally import Tally

# Renew a token this long before it expires, so no request races its expiry.
TOKEN_MARGIN_SECONDS = 20.0


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


class DepartmentClient:
    """One department system. Shares an ``httpx.AsyncClient`` (and its pool) with the others."""

    def __init__(self, http: httpx.AsyncClient, credentials: Credentials, tally: Tally) -> None:
        self.http = http
        self.credentials = credentials
        self.tally = tally
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    @property
    def department(self) -> str:
        return self.credentials.department

    def __repr__(self) -> str:
        return f"DepartmentClient({self.department!r}, {self.credentials.client_id!r})"

    # --- tokens -----------------------------------------------------------------------

    async def token(self, *, renew: bool = False) -> str:
        async with self._token_lock:
            if not renew and self._token is not None and time.monotonic() < self._token_expires:
                return self._token
            response = await self.http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(self.credentials.client_id, self.credentials.client_secret),
            )
            if response.status_code != 200:
                raise DemoHttpError(f"{self.department}: token request answered {response.status_code}")
            body = response.json()
            self._token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 300))
            self._token_expires = time.monotonic() + max(1.0, lifetime - TOKEN_MARGIN_SECONDS)
            return self._token

    # --- one counted call -------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        count: bool = True,
    ) -> httpx.Response:
        """Send a request with a bearer token; renew the token once on a 401."""
        response: httpx.Response | None = None
        for attempt in range(2):
            token = await self.token(renew=attempt > 0)
            sent_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
            response = await self.http.request(method, path, json=json, params=params, headers=sent_headers)
            if response.status_code != 401:
                break
        assert response is not None  # noqa: S101 - the loop runs at least once
        if count:
            self.tally.record_call(self.department, response.status_code)
        return response

    # --- the citizen API --------------------------------------------------------------

    async def lookup(self, national_id: str, purpose: str, *, case_ref: str | None = None) -> str | None:
        response = await self.call(
            "POST",
            "/v1/citizens/lookup",
            json={"national_id": national_id, "purpose": purpose},
            headers=_case_ref(case_ref),
        )
        if response.status_code == 200:
            return str(response.json()["id"])
        return None

    async def read(
        self, citizen_id: str, fields: Sequence[str], purpose: str, *, case_ref: str | None = None
    ) -> httpx.Response:
        return await self.call(
            "GET",
            f"/v1/citizens/{citizen_id}",
            params={"fields": ",".join(fields), "purpose": purpose},
            headers=_case_ref(case_ref),
        )

    async def read_values(
        self, citizen_id: str, fields: Sequence[str], purpose: str
    ) -> dict[str, Any] | None:
        """The released values, or None if the read was refused."""
        response = await self.read(citizen_id, fields, purpose)
        if response.status_code != 200:
            return None
        released: dict[str, Any] = response.json().get("fields", {})
        return {name: item.get("value") for name, item in released.items()}

    async def write(
        self, citizen_id: str, fields: Mapping[str, Any], reason: str, *, purpose: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"fields": dict(fields), "reason": reason}
        if purpose is not None:
            body["purpose"] = purpose
        return await self.call("PATCH", f"/v1/citizens/{citizen_id}/fields", json=body)

    async def verify(
        self, citizen_id: str, purpose: str, claims: Mapping[str, Mapping[str, Any]]
    ) -> httpx.Response:
        return await self.call(
            "POST", f"/v1/citizens/{citizen_id}/verify", json={"purpose": purpose, "claims": dict(claims)}
        )

    # --- tell-us-once events ----------------------------------------------------------

    async def subscribe(
        self, fields: Sequence[str], purpose: str, *, url: str | None = None
    ) -> dict[str, Any]:
        """Subscribe to changes of ``fields`` for ``purpose``: by webhook to ``url``, or by the feed."""
        body: dict[str, Any] = {"fields": list(fields), "purpose": purpose}
        if url is not None:
            body["webhook_url"] = url
        response = await self.call("POST", "/v1/subscriptions", json=body, count=False)
        if response.status_code not in (200, 201):
            raise DemoHttpError(f"{self.department}: subscribing answered {response.status_code}")
        result: dict[str, Any] = response.json()
        return result

    async def events(self, after: str | None, wait: float) -> tuple[list[dict[str, Any]], str | None]:
        params = {"wait": f"{wait:g}"}
        if after is not None:
            params["after"] = after
        response = await self.call("GET", "/v1/events", params=params, count=False)
        if response.status_code != 200:
            raise DemoHttpError(f"{self.department}: the event feed answered {response.status_code}")
        body = response.json()
        cursor = body.get("cursor")
        return list(body.get("items", [])), (str(cursor) if cursor is not None else after)

    # --- policies and audit -----------------------------------------------------------

    async def revoke(self, agreement_id: str) -> httpx.Response:
        return await self.call("DELETE", f"/v1/policies/{agreement_id}", count=False)

    async def usage(self) -> list[dict[str, Any]]:
        """Every row of the usage report, following the cursor."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "1000"}
            if cursor is not None:
                params["cursor"] = cursor
            response = await self.call("GET", "/v1/audit/reports/usage", params=params, count=False)
            if response.status_code != 200:
                raise DemoHttpError(f"{self.department}: the usage report answered {response.status_code}")
            body = response.json()
            items.extend(body.get("items", []))
            cursor = body.get("next_cursor")
            if not cursor:
                return items

    async def checkpoint(self) -> str | None:
        response = await self.call("GET", "/v1/audit/checkpoint", count=False)
        return response.text if response.status_code == 200 else None


def _case_ref(case_ref: str | None) -> dict[str, str]:
    return {"X-Case-Ref": case_ref} if case_ref else {}
