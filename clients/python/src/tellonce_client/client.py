"""``TellonceClient``: typed async methods for every v1 endpoint.

Every call carries a bearer token (fetched again once if the service answers 401), is
retried with exponential backoff on 429 and 503 (waiting what ``Retry-After`` says, when it
says), and raises an ``ApiError`` subclass carrying the problem body on any other error.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from tellonce_client import models as m
from tellonce_client._http import (
    DEFAULT_MAX_LINE_CHARS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    exchange,
    lines,
    transport_error,
)
from tellonce_client.auth import TokenSource
from tellonce_client.errors import (
    InvalidResponse,
    PreconditionFailed,
    ResponseTimeout,
    raise_for_problem,
)

ModelT = TypeVar("ModelT", bound=m.Response)

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a 429 or 503 before raising it."""

    attempts: int = 4
    base_seconds: float = 0.25
    cap_seconds: float = 10.0
    # A Retry-After longer than this is not waited for: the error is raised instead.
    max_retry_after_seconds: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: a random wait up to base * 2**attempt, capped."""
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))  # noqa: S311


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: a delay in seconds, or an HTTP date (RFC 9110 section 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # "-0000" parses as a naive time; an HTTP date is always in GMT.
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def etag_of(version: int) -> str:
    """The ETag the service gives a record or agreement at ``version``."""
    return f'"{version}"'


IfMatch = str | m.Tagged | None


def _if_match(value: IfMatch) -> dict[str, str]:
    if value is None:
        return {}
    etag = value if isinstance(value, str) else value.etag
    if etag is None:
        raise ValueError("this object carries no ETag; read it from the service first")
    return {"If-Match": etag}


def _segment(value: object) -> str:
    """One caller-supplied path segment, percent-encoded whole: a ``/``, ``?`` or ``#`` in
    it cannot reach another route or add a query, and a segment of dots (which a URL
    resolves as "here" or "up") is sent with its dots encoded, as the value it is."""
    text = str(value)
    if not text:
        raise ValueError("a path segment cannot be empty")
    encoded = quote(text, safe="")
    return encoded.replace(".", "%2E") if text in {".", ".."} else encoded


def _path(template: str, *values: object) -> str:
    """``template`` with each ``{}`` replaced by a value as one ``_segment``."""
    return template.format(*(_segment(value) for value in values))


def _params(**values: Any) -> dict[str, str]:
    """Query parameters, leaving out the ones not given."""
    return {name: str(value) for name, value in values.items() if value is not None}


class TellonceClient:
    """One department system's connection to tellonce.

    ``auth`` is a ``ClientSecret`` or ``PrivateKeyJwt``. ``on_behalf_of`` (the officer) is
    sent as ``X-On-Behalf-Of`` (UTF-8) on every call; ``case_ref`` arguments as ``X-Case-Ref``.
    ``on_response`` sees the final response of every API call (after retries), for counting.
    ``timeout`` bounds each exchange in all (connect, send, the answer's headers and body:
    ``ResponseTimeout``), ``max_response_bytes`` the body read (``ResponseTooLarge``). An
    exchange that fails below HTTP (a refused connection, one that breaks) is a
    ``TransportError``, with httpx's error as its ``__cause__``.
    """

    def __init__(
        self,
        base_url: str,
        auth: TokenSource | None,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        on_behalf_of: str | None = None,
        on_response: Callable[[httpx.Response], None] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self.on_behalf_of = on_behalf_of
        self.on_response = on_response
        # Each exchange (token fetches too) in all, not only each read as httpx's timeout.
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.max_line_chars = max_line_chars
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"TellonceClient({self.base_url!r}, {self.auth!r})"

    async def __aenter__(self) -> TellonceClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth/token"

    # --- one call -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> httpx.Response:
        """Send one API call with retries; raise ``ApiError`` unless the answer is 2xx or 3xx."""
        return await self._send(
            method, path, params=params, json=json, headers=headers, authenticated=authenticated
        )

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        stream: bool = False,
        extra_seconds: float = 0.0,
    ) -> httpx.Response:
        """``request``; with ``stream`` the successful response's body is left unread, for
        the caller to iterate and close (an error's body is read for its problem)."""
        sent = dict(headers or {})
        if self.on_behalf_of:
            sent.setdefault("X-On-Behalf-Of", self.on_behalf_of)
        # A token the service refused is replaced once; the one fetched then serves every
        # later attempt (a retried 429 or 503 fetches no further token).
        renew = renewed = False
        attempt = 0
        while True:
            if authenticated and self.auth is not None:
                token = await self.auth.token(self.http, self.token_url, renew=renew)
                renew = False
                sent["Authorization"] = f"Bearer {token}"
            # As bytes, UTF-8: httpx would encode a text header as ASCII and refuse an
            # officer's name such as "Zoë"; tellonce reads X-On-Behalf-Of as UTF-8.
            raw = {name.encode("ascii"): value.encode() for name, value in sent.items()}
            sending = self.http.build_request(
                method,
                f"{self.base_url}{path}",
                params=params,
                json=json,
                headers=raw,
                timeout=_longer(self.http.timeout, extra_seconds),
            )
            response = await exchange(
                self.http,
                sending,
                timeout=None if self.timeout is None else self.timeout + extra_seconds,
                max_bytes=self.max_response_bytes,
                stream=stream,
            )
            if response.status_code == 401 and authenticated and self.auth is not None and not renewed:
                await response.aclose()
                renew = renewed = True  # the token was revoked or the signing key rotated: one fresh try
                continue
            if response.status_code in RETRY_STATUSES and attempt + 1 < self.retry.attempts:
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                if wait is None:
                    wait = self.retry.backoff(attempt)
                if wait <= self.retry.max_retry_after_seconds:
                    await response.aclose()
                    attempt += 1
                    await asyncio.sleep(wait)
                    continue
            break
        if self.on_response is not None:
            self.on_response(response)
        raise_for_problem(response)
        return response

    async def _call(
        self,
        model: type[ModelT],
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: BaseModel | None = None,
        headers: Mapping[str, str] | None = None,
        extra_seconds: float = 0.0,
    ) -> ModelT:
        response = await self._send(
            method,
            path,
            params=params,
            json=body.model_dump(mode="json", exclude_unset=True) if body is not None else None,
            headers=headers,
            extra_seconds=extra_seconds,
        )
        parsed = _parsed(model, response)
        if isinstance(parsed, m.Tagged):
            parsed._etag = response.headers.get("ETag")
        return parsed

    @staticmethod
    def _case(case_ref: str | None) -> dict[str, str]:
        return {"X-Case-Ref": case_ref} if case_ref else {}

    # --- health and catalog -----------------------------------------------------------------

    async def healthz(self) -> dict[str, Any]:
        response = await self.request("GET", "/healthz", authenticated=False)
        result = _json(response)
        if not isinstance(result, dict):
            raise InvalidResponse(f"the answer to {_where(response)} is not a JSON object")
        return result

    async def readyz(self) -> dict[str, Any]:
        response = await self.request("GET", "/readyz", authenticated=False)
        result = _json(response)
        if not isinstance(result, dict):
            raise InvalidResponse(f"the answer to {_where(response)} is not a JSON object")
        return result

    async def catalog(self) -> m.CatalogOut:
        return await self._call(m.CatalogOut, "GET", "/v1/catalog")

    # --- citizens -----------------------------------------------------------------------

    async def register_citizen(
        self, national_id: str, fields: Mapping[str, Any], *, case_ref: str | None = None
    ) -> m.Registered:
        body = m.RegisterCitizen(national_id=national_id, fields=dict(fields))
        return await self._call(m.Registered, "POST", "/v1/citizens", body=body, headers=self._case(case_ref))

    async def lookup(self, national_id: str, purpose: str, *, case_ref: str | None = None) -> m.LookupOut:
        body = m.LookupCitizen(national_id=national_id, purpose=purpose)
        return await self._call(
            m.LookupOut, "POST", "/v1/citizens/lookup", body=body, headers=self._case(case_ref)
        )

    async def read_citizen(
        self,
        citizen_id: str,
        purpose: str,
        fields: Sequence[str] | None = None,
        *,
        case_ref: str | None = None,
    ) -> m.CitizenOut:
        """The allowed fields; ``withheld`` names the others. ``etag`` is the record's version."""
        params = _params(purpose=purpose, fields=",".join(fields) if fields else None)
        return await self._call(
            m.CitizenOut,
            "GET",
            _path("/v1/citizens/{}", citizen_id),
            params=params,
            headers=self._case(case_ref),
        )

    async def batch_get(
        self,
        ids: Sequence[str],
        purpose: str,
        fields: Sequence[str] | None = None,
        *,
        case_ref: str | None = None,
    ) -> m.BatchPage:
        body = m.BatchGet(ids=list(ids), purpose=purpose, fields=list(fields) if fields else None)
        return await self._call(
            m.BatchPage, "POST", "/v1/citizens/batch-get", body=body, headers=self._case(case_ref)
        )

    async def write_fields(
        self,
        citizen_id: str,
        fields: Mapping[str, Any],
        reason: str,
        *,
        purpose: str | None = None,
        if_match: IfMatch = None,
        case_ref: str | None = None,
    ) -> m.WriteOut:
        """Write fields; with ``if_match`` (an ETag, or a read citizen) a stale write is a 412."""
        body = m.WriteFields(fields=dict(fields), reason=reason)
        if purpose is not None:
            body.purpose = purpose
        headers = {**_if_match(if_match), **self._case(case_ref)}
        return await self._call(
            m.WriteOut, "PATCH", _path("/v1/citizens/{}/fields", citizen_id), body=body, headers=headers
        )

    async def field_history(
        self,
        citizen_id: str,
        field: str,
        purpose: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        case_ref: str | None = None,
    ) -> m.HistoryPage:
        params = _params(purpose=purpose, cursor=cursor, limit=limit)
        return await self._call(
            m.HistoryPage,
            "GET",
            _path("/v1/citizens/{}/fields/{}/history", citizen_id, field),
            params=params,
            headers=self._case(case_ref),
        )

    def iter_field_history(
        self,
        citizen_id: str,
        field: str,
        purpose: str,
        *,
        case_ref: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[m.HistoryItem]:
        return _follow(
            lambda cursor: self.field_history(
                citizen_id, field, purpose, cursor=cursor, limit=page_size, case_ref=case_ref
            )
        )

    async def verify(
        self,
        citizen_id: str,
        purpose: str,
        claims: Mapping[str, Mapping[str, Any]],
        *,
        case_ref: str | None = None,
    ) -> m.VerifyOut:
        body = m.VerifyClaims(purpose=purpose, claims=dict(claims))
        return await self._call(
            m.VerifyOut,
            "POST",
            _path("/v1/citizens/{}/verify", citizen_id),
            body=body,
            headers=self._case(case_ref),
        )

    async def erase_citizen(
        self,
        citizen_id: str,
        reason: m.ErasureReason,
        legal_basis: str,
        *,
        purpose: str | None = None,
        case_ref: str | None = None,
        if_match: IfMatch = None,
    ) -> None:
        """Crypto-shred a citizen: the owner of ``national_id``, or a department with an
        ``erase`` agreement (naming its ``purpose``). Reason and legal basis are audited.
        With ``if_match`` (an ETag, or a read citizen) a record changed since is a 412."""
        await self.request(
            "DELETE",
            _path("/v1/citizens/{}", citizen_id),
            params=_params(reason=reason, legal_basis=legal_basis, purpose=purpose),
            headers={**_if_match(if_match), **self._case(case_ref)},
        )

    async def access_log(
        self,
        citizen_id: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        proofs: bool | None = None,
    ) -> m.AccessLogPage:
        """One page of a citizen's access log. With ``proofs=True`` each item carries its
        inclusion proof and the page the witnessed checkpoint they are against."""
        return await self._call(
            m.AccessLogPage,
            "GET",
            _path("/v1/citizens/{}/access-log", citizen_id),
            params=_params(cursor=cursor, limit=limit, proofs="true" if proofs else None),
        )

    def iter_access_log(
        self, citizen_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[m.AccessLogItem]:
        return _follow(lambda cursor: self.access_log(citizen_id, cursor=cursor, limit=page_size))

    # --- a citizen's consents and objections (the citizen portal) --------------------------

    async def give_consent(
        self,
        citizen_id: str,
        agreement: str,
        *,
        expires_at: datetime | None = None,
        data_life: str | None = None,
    ) -> m.ConsentOut:
        """The citizen consents to a consent-based agreement; keep ``signature`` as evidence."""
        body = m.ConsentIn(agreement=agreement, expires_at=expires_at, data_life=data_life)
        return await self._call(
            m.ConsentOut, "POST", _path("/v1/citizens/{}/consents", citizen_id), body=body
        )

    async def change_consent(self, citizen_id: str, consent_id: str, status: str) -> m.ConsentOut:
        """Pause (``paused``), resume (``active``) or revoke (``revoked``, final) a consent."""
        body = m.ConsentChange.model_validate({"status": status})
        return await self._call(
            m.ConsentOut, "PATCH", _path("/v1/citizens/{}/consents/{}", citizen_id, consent_id), body=body
        )

    async def list_consents(
        self, citizen_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> m.ConsentPage:
        return await self._call(
            m.ConsentPage,
            "GET",
            _path("/v1/citizens/{}/consents", citizen_id),
            params=_params(cursor=cursor, limit=limit),
        )

    def iter_consents(self, citizen_id: str, *, page_size: int | None = None) -> AsyncIterator[m.ConsentOut]:
        return _follow(lambda cursor: self.list_consents(citizen_id, cursor=cursor, limit=page_size))

    async def object_to(self, citizen_id: str, agreement: str) -> m.ObjectionOut:
        """The citizen objects to an objectable agreement."""
        return await self._call(
            m.ObjectionOut, "POST", _path("/v1/citizens/{}/objections/{}", citizen_id, agreement)
        )

    async def withdraw_objection(self, citizen_id: str, agreement: str) -> None:
        await self.request("DELETE", _path("/v1/citizens/{}/objections/{}", citizen_id, agreement))

    async def list_objections(self, citizen_id: str) -> m.ObjectionPage:
        return await self._call(m.ObjectionPage, "GET", _path("/v1/citizens/{}/objections", citizen_id))

    # --- policies -----------------------------------------------------------------------

    async def list_agreements(
        self, *, cursor: str | None = None, limit: int | None = None
    ) -> m.AgreementPage:
        return await self._call(
            m.AgreementPage, "GET", "/v1/policies", params=_params(cursor=cursor, limit=limit)
        )

    def iter_agreements(self, *, page_size: int | None = None) -> AsyncIterator[m.AgreementOut]:
        return _follow(lambda cursor: self.list_agreements(cursor=cursor, limit=page_size))

    async def get_agreement(self, agreement_id: str) -> m.AgreementOut:
        return await self._call(m.AgreementOut, "GET", _path("/v1/policies/{}", agreement_id))

    async def create_agreement(self, agreement: m.AgreementIn) -> m.AgreementOut:
        return await self._call(m.AgreementOut, "POST", "/v1/policies", body=agreement)

    async def replace_agreement(
        self, agreement_id: str, agreement: m.AgreementIn, *, if_match: IfMatch
    ) -> m.AgreementOut:
        """A new version; ``if_match`` is the ETag (or the agreement) read: 412 if stale."""
        return await self._call(
            m.AgreementOut,
            "PUT",
            _path("/v1/policies/{}", agreement_id),
            body=agreement,
            headers=_if_match(if_match),
        )

    async def update_agreement(
        self,
        agreement_id: str,
        change: Callable[[m.AgreementOut], m.AgreementIn],
        *,
        attempts: int = 3,
    ) -> m.AgreementOut:
        """Read, change and replace an agreement under ``If-Match``; on a 412 (someone else
        wrote a version in between) read again and re-apply ``change``."""
        for attempt in range(attempts):
            current = await self.get_agreement(agreement_id)
            try:
                return await self.replace_agreement(agreement_id, change(current), if_match=current)
            except PreconditionFailed:
                if attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable: the loop returns or raises")

    async def revoke_agreement(
        self, agreement_id: str, *, reason: str | None = None, if_match: IfMatch = None
    ) -> m.AgreementOut:
        return await self._call(
            m.AgreementOut,
            "DELETE",
            _path("/v1/policies/{}", agreement_id),
            params=_params(reason=reason),
            headers=_if_match(if_match),
        )

    async def agreement_versions(
        self, agreement_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> m.AgreementPage:
        return await self._call(
            m.AgreementPage,
            "GET",
            _path("/v1/policies/{}/versions", agreement_id),
            params=_params(cursor=cursor, limit=limit),
        )

    def iter_agreement_versions(
        self, agreement_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[m.AgreementOut]:
        return _follow(lambda cursor: self.agreement_versions(agreement_id, cursor=cursor, limit=page_size))

    async def explain(self, question: m.ExplainIn) -> m.ExplainOut:
        return await self._call(m.ExplainOut, "POST", "/v1/decisions/explain", body=question)

    async def simulate(self, change: m.SimulateIn) -> m.SimulateOut:
        return await self._call(m.SimulateOut, "POST", "/v1/policies/simulate", body=change)

    # --- events ---------------------------------------------------------------------------

    async def subscribe(
        self, fields: Sequence[str], purpose: str, *, webhook_url: str | None = None
    ) -> m.SubscriptionCreated:
        """Subscribe to changes: by webhook (keep the returned ``secret``) or by the feed."""
        body = m.SubscriptionIn(fields=list(fields), purpose=purpose)
        if webhook_url is not None:
            body.webhook_url = webhook_url
        return await self._call(m.SubscriptionCreated, "POST", "/v1/subscriptions", body=body)

    async def subscribe_access_notices(self, *, webhook_url: str | None = None) -> m.SubscriptionCreated:
        """The citizen portal: be told of every access that releases a citizen's data."""
        body = m.SubscriptionIn(type="access.recorded", webhook_url=webhook_url)
        return await self._call(m.SubscriptionCreated, "POST", "/v1/subscriptions", body=body)

    async def subscribe_consent_changes(self, *, webhook_url: str | None = None) -> m.SubscriptionCreated:
        """A consumer: be told when a citizen's consent to one of your agreements changes."""
        body = m.SubscriptionIn(type="consent.changed", webhook_url=webhook_url)
        return await self._call(m.SubscriptionCreated, "POST", "/v1/subscriptions", body=body)

    async def close_case(self, case_ref: str) -> m.CaseOut:
        """Close one of your department's cases: the citizen now sees its accesses."""
        return await self._call(m.CaseOut, "POST", _path("/v1/cases/{}/close", case_ref))

    async def list_clients(self) -> m.ClientList:
        """An admin client: every client of its department (never a secret)."""
        return await self._call(m.ClientList, "GET", "/v1/clients")

    async def create_client(
        self,
        roles: Sequence[str],
        *,
        name: str | None = None,
        department: str | None = None,
        jwk: dict[str, Any] | None = None,
        rate_per_second: float | None = None,
        rate_burst: int | None = None,
    ) -> m.NewClientOut:
        """An admin client: register a client of its department; keep the returned secret,
        which is shown this once."""
        options: dict[str, Any] = {
            "name": name,
            "department": department,
            "jwk": jwk,
            "rate_per_second": rate_per_second,
            "rate_burst": rate_burst,
        }
        # Only what was given is sent (the service fills in the rest).
        body = m.ClientIn.model_validate(
            {"roles": list(roles), **{k: v for k, v in options.items() if v is not None}}
        )
        return await self._call(m.NewClientOut, "POST", "/v1/clients", body=body)

    async def disable_client(self, client_id: str) -> m.ClientOut:
        """An admin client: disable one of its department's clients, from its next request."""
        return await self._call(m.ClientOut, "POST", _path("/v1/clients/{}/disable", client_id))

    async def list_subscriptions(
        self, *, cursor: str | None = None, limit: int | None = None
    ) -> m.SubscriptionPage:
        return await self._call(
            m.SubscriptionPage, "GET", "/v1/subscriptions", params=_params(cursor=cursor, limit=limit)
        )

    def iter_subscriptions(self, *, page_size: int | None = None) -> AsyncIterator[m.SubscriptionOut]:
        return _follow(lambda cursor: self.list_subscriptions(cursor=cursor, limit=page_size))

    async def get_subscription(self, subscription_id: str) -> m.SubscriptionOut:
        return await self._call(m.SubscriptionOut, "GET", _path("/v1/subscriptions/{}", subscription_id))

    async def delete_subscription(self, subscription_id: str) -> None:
        await self.request("DELETE", _path("/v1/subscriptions/{}", subscription_id))

    async def disable_subscription(self, subscription_id: str) -> m.SubscriptionOut:
        """Pause a subscription: nothing is delivered for it until ``enable_subscription``,
        which resumes where it stopped."""
        return await self._call(
            m.SubscriptionOut, "POST", _path("/v1/subscriptions/{}/disable", subscription_id)
        )

    async def enable_subscription(self, subscription_id: str) -> m.SubscriptionOut:
        """Enable again a subscription the service disabled (its receiver answered 410 Gone)
        or you paused: delivery resumes where it stopped, with nothing that came meanwhile
        lost."""
        return await self._call(
            m.SubscriptionOut, "POST", _path("/v1/subscriptions/{}/enable", subscription_id)
        )

    async def rotate_secret(self, subscription_id: str) -> m.SecretRotated:
        """A new signing secret for a webhook subscription (keep it: it is shown once). Until
        ``previous_secret_expires_at`` deliveries are signed with the old secret too, so
        switch your ``WebhookVerifier`` to the new one before then."""
        return await self._call(
            m.SecretRotated, "POST", _path("/v1/subscriptions/{}/rotate-secret", subscription_id)
        )

    async def deliveries(
        self, subscription_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> m.DeliveryPage:
        return await self._call(
            m.DeliveryPage,
            "GET",
            _path("/v1/subscriptions/{}/deliveries", subscription_id),
            params=_params(cursor=cursor, limit=limit),
        )

    def iter_deliveries(
        self, subscription_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[m.DeliveryOut]:
        return _follow(lambda cursor: self.deliveries(subscription_id, cursor=cursor, limit=page_size))

    async def redeliver(self, subscription_id: str) -> m.RedeliverOut:
        return await self._call(
            m.RedeliverOut, "POST", _path("/v1/subscriptions/{}/redeliver", subscription_id)
        )

    async def events(
        self, after: str | None = None, *, wait: float | None = None, limit: int | None = None
    ) -> m.FeedPage:
        """One page of the event feed; pass its ``cursor`` as ``after`` next time."""
        params = _params(after=after, limit=limit, wait=f"{wait:g}" if wait is not None else None)
        # The service may hold a long poll open for ``wait`` seconds before it answers.
        return await self._call(m.FeedPage, "GET", "/v1/events", params=params, extra_seconds=wait or 0.0)

    # --- audit ----------------------------------------------------------------------------

    async def checkpoint(self) -> str:
        """The latest signed checkpoint note (check it with ``proofs.open_checkpoint``)."""
        return (await self.request("GET", "/v1/audit/checkpoint")).text

    async def verifier_key(self) -> str:
        """The log's note verifier key. Pin it out of band rather than trusting this call."""
        return (await self.request("GET", "/v1/audit/verifier-key")).text.strip()

    async def inclusion_proof(self, index: int, *, tree_size: int | None = None) -> m.InclusionProof:
        return await self._call(
            m.InclusionProof,
            "GET",
            _path("/v1/audit/entries/{}/proof", index),
            params=_params(tree_size=tree_size),
        )

    async def tile(self, tile: str) -> bytes:
        """A C2SP tlog-tiles resource, e.g. ``"0/x001/234"`` or ``"entries/000.p/17"``: its
        ``/`` separate segments, each of which is sent as one ``_segment``."""
        path = "/".join(_segment(part) for part in tile.split("/"))
        return (await self.request("GET", f"/v1/audit/tile/{path}")).content

    async def consistency_proof(self, first: int, second: int) -> m.ConsistencyProof:
        return await self._call(
            m.ConsistencyProof, "GET", "/v1/audit/consistency", params=_params(first=first, second=second)
        )

    async def audit_entries(
        self, *, cursor: str | None = None, limit: int | None = None, **filters: str | None
    ) -> m.AuditEntryPage:
        """Filters: citizen_id, consumer, owner, field, purpose, decision, action, since, until."""
        return await self._call(
            m.AuditEntryPage,
            "GET",
            "/v1/audit/entries",
            params=_params(cursor=cursor, limit=limit, **filters),
        )

    def iter_audit_entries(
        self, *, page_size: int | None = None, **filters: str | None
    ) -> AsyncIterator[m.AuditEntryItem]:
        return _follow(lambda cursor: self.audit_entries(cursor=cursor, limit=page_size, **filters))

    async def export_audit(self, *, format: str = "jsonl", **filters: str | None) -> AsyncIterator[str]:
        """The export, streamed line by line (JSON lines, or CSV with its header first). Sent
        as every other call is: with the officer, a token renewed once if refused, and 429
        and 503 retried before the first line. The export as a whole may take long, but each
        line comes within the client's ``timeout`` (``ResponseTimeout``) and is at most
        ``max_line_chars`` long (``ResponseTooLarge``); a connection that breaks between
        lines is a ``TransportError``."""
        params = _params(format=format, **filters)
        response = await self._send("GET", "/v1/audit/export", params=params, stream=True)
        try:
            read = lines(response, self.max_line_chars)
            while True:
                try:
                    async with asyncio.timeout(self.timeout):
                        line = await anext(read)
                        while not line:  # an empty line is no line, nor a reason to wait longer
                            line = await anext(read)
                except StopAsyncIteration:
                    return
                except httpx.TransportError as error:  # the connection broke between lines
                    raise transport_error(response.request, error) from error
                except TimeoutError:
                    raise ResponseTimeout(
                        f"a line of the answer to {_where(response)} took more than {self.timeout:g} seconds",
                        request=response.request,
                    ) from None
                yield line
        finally:
            await response.aclose()

    async def usage_report(
        self,
        *,
        period: str | None = None,
        consumer: str | None = None,
        owner: str | None = None,
        since: str | None = None,
        until: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> m.UsagePage:
        params = _params(
            period=period,
            consumer=consumer,
            owner=owner,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
        return await self._call(m.UsagePage, "GET", "/v1/audit/reports/usage", params=params)

    def iter_usage(self, *, page_size: int | None = 1000, **filters: str | None) -> AsyncIterator[m.UsageRow]:
        return _follow(lambda cursor: self.usage_report(cursor=cursor, limit=page_size, **filters))


async def _follow(fetch: Callable[[str | None], Awaitable[Any]]) -> AsyncIterator[Any]:
    """Every item of a cursor-paged list, fetching the next page as the last is used up."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = await fetch(cursor)
        for item in page.items:
            yield item
        cursor = page.next_cursor
        if not cursor:
            return
        # The service gives a cursor only after a page of items, and never the same one twice:
        # a server that does either would keep this loop going for ever.
        if not page.items:
            raise InvalidResponse("the service gave an empty page with a next_cursor")
        if cursor in seen:
            raise InvalidResponse("the service gave a next_cursor it had given before")
        seen.add(cursor)


def _longer(timeout: httpx.Timeout, extra_seconds: float) -> httpx.Timeout:
    """``timeout`` with ``extra_seconds`` more to read (a long poll's wait)."""
    if not extra_seconds or timeout.read is None:
        return timeout
    return httpx.Timeout(
        connect=timeout.connect, read=timeout.read + extra_seconds, write=timeout.write, pool=timeout.pool
    )


def _where(response: httpx.Response) -> str:
    # The method and path only: a query may hold a national id or a citizen id.
    return f"{response.request.method} {response.request.url.path}"


def _json(response: httpx.Response) -> Any:
    """The answer's JSON; ``InvalidResponse`` (never showing the body) if it is not JSON."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
        raise InvalidResponse(f"the answer to {_where(response)} is not JSON") from None


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "the body"


def _parsed(model: type[ModelT], response: httpx.Response) -> ModelT:
    """The answer as ``model``; ``InvalidResponse`` naming where the body is not of its
    shape (locations and what was expected, never the values: they may be personal data)."""
    try:
        return model.model_validate(_json(response))
    except ValidationError as invalid:
        wrong = invalid.errors(include_url=False, include_input=False, include_context=False)
        said = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'the body'}: {error['msg']}"
            for error in wrong[:3]
        )
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise InvalidResponse(
            f"the answer to {_where(response)} is not a {model.__name__}: {said}{more}"
        ) from None
