"""Who may not: every method and path of the OpenAPI document, asked by callers that must be
refused.

Two matrices, both taken from ``app.openapi()`` so a route added later that is in neither
fails ``test_every_route_is_in_the_matrix``:

- **tokens**: every route that needs a token, asked with real bearer tokens from
  ``POST /oauth/token`` (no token, a tampered one, an expired one, a disabled client's, and
  one whose scopes lack the route's), each 401 or 403 as the README's Authentication section
  says;
- **parties**: each route asked by a client of another department (another department's
  subscription, agreement, case, client, audit entries), a citizen portal naming another
  citizen's consent, an auditor writing, a registrar or writer of another department acting on
  a citizen: 403 or 404.

Every refusal is problem+json, names none of the other party's ids, names or values (only
what the caller itself sent), and changes nothing the rightful parties can see.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import Request

from service.auth import service as auth_service
from service.auth.dependencies import Principal, get_principal, optional_principal
from service.auth.scopes import ROLE_SCOPES
from service.auth.tokens import TokenIssuer
from service.db import Database
from tests.records.conftest import RecordsEnv, _principal_from_header, as_
from tests.security.conftest import AUDITOR

OWNER = as_("register", "data-owner")
PORTAL = as_("portal", "citizen-portal")
WELFARE = as_("welfare", "consumer")
WELFARE_OWNER = as_("welfare", "data-owner")
WELFARE_ADMIN = as_("welfare", "admin")
REGISTER_ADMIN = as_("register", "admin")
DVLA = as_("dvla", "consumer")
REVENUE = as_("revenue", "consumer")

GIVEN_NAME = "Quillonbrae"
ADDRESS = "17 Undisclosed Mews"
WEBHOOK = "https://hooks.welfare.example/matrix-canary"

CONSENT_AGREEMENT = "authz-names-for-dvla-with-consent"
OBJECTABLE_AGREEMENT = "authz-birth-dates-for-revenue-unless-objected"
CASE_AGREEMENT = "authz-fraud-names-for-revenue"
SUBSCRIBE_AGREEMENT = "authz-addresses-to-welfare"
AGREEMENTS: list[dict[str, Any]] = [
    {
        "id": CONSENT_AGREEMENT,
        "consumer": "dvla",
        "fields": ["given_name"],
        "actions": ["read"],
        "purposes": ["licence-administration"],
        "legal_basis": "Test Act s.6(1)(a)",
        "basis": "consent",
    },
    {
        "id": OBJECTABLE_AGREEMENT,
        "consumer": "revenue",
        "fields": ["date_of_birth"],
        "actions": ["read"],
        "purposes": ["tax-administration"],
        "legal_basis": "Test Act s.2",
        "basis": "objectable",
    },
    {
        "id": CASE_AGREEMENT,
        "consumer": "revenue",
        "fields": ["given_name"],
        "actions": ["read"],
        "purposes": ["fraud-investigation"],
        "legal_basis": "Test Act s.20",
        "disclosure": "after-case-closed",
        "max_delay": "P30D",
    },
    {
        "id": SUBSCRIBE_AGREEMENT,
        "consumer": "welfare",
        "fields": ["address"],
        "actions": ["subscribe"],
        "purposes": ["benefit-eligibility"],
        "legal_basis": "Test Act s.122",
    },
]

# Routes anyone may call without a token, and why.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "liveness",
    ("GET", "/readyz"): "readiness",
    ("GET", "/.well-known/jwks.json"): "the token verification keys",
    ("GET", "/.well-known/evidence-keys.json"): "the evidence verification keys",
    ("GET", "/.well-known/oauth-authorization-server"): "metadata",
    ("POST", "/oauth/token"): "authenticates the client itself (tests/auth, test_04, test_08)",
}

# Routes whose answer is the same for every department, so there is no other party to ask
# about; each is still in the token matrix.
NO_OTHER_PARTY: dict[tuple[str, str], str] = {
    ("GET", "/v1/catalog"): "the catalog is every department's, as published",
    ("GET", "/v1/audit/checkpoint"): "one signed tree head for everyone with audit:verify",
    ("GET", "/v1/audit/verifier-key"): "one key",
    ("GET", "/v1/audit/consistency"): "hashes of the whole log",
}


@dataclass
class World:
    """What the rightful parties made, and the text none of the refusals may show."""

    citizen: str
    other_citizen: str
    national_id: str
    consent: str
    subscription: str
    notices: str
    case_ref: str
    welfare_client: str
    register_client: str
    welfare_admin: str
    canaries: set[str] = field(default_factory=set)

    def params(self) -> dict[str, str]:
        return {
            "citizen_id": self.citizen,
            "consent_id": self.consent,
            "agreement_id": CONSENT_AGREEMENT,
            "agreement": OBJECTABLE_AGREEMENT,
            "subscription_id": self.subscription,
            "client_id": self.welfare_client,
            "case_ref": self.case_ref,
            "index": "0",
            "field": "address",
            "tile": "0/000",
        }


@dataclass
class Env:
    env: RecordsEnv
    world: World


def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _maybe_principal(request: Request) -> Principal | None:
    return await _principal_from_header(request) if "x-test-as" in request.headers else None


@pytest.fixture(scope="module")
async def matrix(security_env: RecordsEnv) -> Env:
    env = security_env
    http = env.client

    async def resolver(_host: str, _port: int) -> list[str]:
        # A public address, never connected to: no event reaches this subscription.
        return ["93.184.215.14"]

    env.app.state.events.resolver = resolver
    # The checkpoint and tiles ask for a token only when one is sent.
    env.app.dependency_overrides[optional_principal] = _maybe_principal
    for agreement in AGREEMENTS:
        _ok(await http.post("/v1/policies", json={**agreement, "reason": "test"}, headers=OWNER), 201)
    citizen, national_id = await env.register(
        given_name=GIVEN_NAME, address=ADDRESS, date_of_birth="1960-02-03"
    )
    other, _ = await env.register(given_name="Otherbrae", address="2 Elsewhere", date_of_birth="1961-02-03")
    consent = _ok(
        await http.post(
            f"/v1/citizens/{citizen}/consents", json={"agreement": CONSENT_AGREEMENT}, headers=PORTAL
        ),
        201,
    )["id"]
    subscription = _ok(
        await http.post(
            "/v1/subscriptions",
            json={"fields": ["address"], "purpose": "benefit-eligibility", "webhook_url": WEBHOOK},
            headers=WELFARE,
        ),
        201,
    )["id"]
    notices = _ok(
        await http.post("/v1/subscriptions", json={"type": "access.recorded"}, headers=PORTAL), 201
    )["id"]
    case_ref = f"AUTHZ-{uuid.uuid4().hex[:8]}"
    _ok(
        await http.get(
            f"/v1/citizens/{citizen}",
            params={"fields": "given_name", "purpose": "fraud-investigation"},
            headers={**REVENUE, "X-Case-Ref": case_ref},
        )
    )
    welfare_client = _ok(
        await http.post(
            "/v1/clients", json={"roles": ["consumer"], "name": "Welfare matrix"}, headers=WELFARE_ADMIN
        ),
        201,
    )["client_id"]
    register_client = _ok(
        await http.post(
            "/v1/clients", json={"roles": ["writer"], "name": "Register matrix"}, headers=REGISTER_ADMIN
        ),
        201,
    )["client_id"]
    # An admin client only the operator's command makes (and disables).
    database = Database(env.settings)
    try:
        async with database.sessions.begin() as session:
            welfare_admin = (
                await auth_service.create_client(session, department="welfare", roles=["admin"])
            ).client_id
    finally:
        await database.dispose()
    world = World(
        citizen,
        other,
        national_id,
        consent,
        subscription,
        notices,
        case_ref,
        welfare_client,
        register_client,
        welfare_admin,
    )
    world.canaries = {
        citizen,
        national_id,
        GIVEN_NAME,
        ADDRESS,
        WEBHOOK,
        consent,
        subscription,
        notices,
        case_ref,
        welfare_client,
        register_client,
        welfare_admin,
        "Welfare matrix",
        "Register matrix",
    }
    return Env(env, world)


async def _state(env: Env) -> dict[str, Any]:
    """What the rightful parties see of everything the refused callers aimed at."""
    http, w = env.env.client, env.world

    async def get(url: str, headers: dict[str, str], **params: str) -> Any:
        return _ok(await http.get(url, params=params, headers=headers))

    return {
        "subscription": await get(f"/v1/subscriptions/{w.subscription}", WELFARE),
        "notices": await get(f"/v1/subscriptions/{w.notices}", PORTAL),
        "deliveries": await get(f"/v1/subscriptions/{w.subscription}/deliveries", WELFARE),
        "agreements": [await get(f"/v1/policies/{a['id']}/versions", OWNER) for a in AGREEMENTS],
        "consents": await get(f"/v1/citizens/{w.citizen}/consents", PORTAL),
        "objections": await get(f"/v1/citizens/{w.citizen}/objections", PORTAL),
        "welfare clients": await get("/v1/clients", WELFARE_ADMIN),
        "register clients": await get("/v1/clients", REGISTER_ADMIN),
        # The held read is still held (the case is open), and nothing else was let through;
        # the refusals are on it, as every refused access is.
        "access log": [
            (i["action"], i["department"], i["decision"])
            for i in (await get(f"/v1/citizens/{w.citizen}/access-log", PORTAL))["items"]
            # Less this snapshot's own reads of the address, below.
            if i["decision"] != "deny" and (i["action"], i["department"]) != ("read", "dvla")
        ],
        "address": (
            await get(
                f"/v1/citizens/{w.citizen}",
                as_("dvla", "consumer"),
                fields="address",
                purpose="address-update",
            )
        )["fields"],
    }


def _refused(
    response: httpx.Response, statuses: tuple[int, ...], canaries: set[str], sent: str
) -> dict[str, Any]:
    request = response.request
    what = f"{request.method} {request.url}"
    assert response.status_code in statuses, f"{what}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), what
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code, what
    # Nothing of the other party's, except what the caller itself sent.
    leaked = {c for c in canaries if c not in sent and c.lower() in response.text.lower()}
    assert not leaked, f"{what} leaks {leaked}: {response.text}"
    return body


# --- the token matrix --------------------------------------------------------------------


def _routes(app: Any) -> dict[tuple[str, str], frozenset[str] | None]:
    """Each route and the scopes its OpenAPI operation requires (None: no token needed)."""
    routes: dict[tuple[str, str], frozenset[str] | None] = {}
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            security = operation.get("security")
            needs = None
            if security:
                needs = frozenset(s for alt in security for scopes in alt.values() for s in scopes)
            routes[(method.upper(), path)] = needs
    return routes


def _tampered(token: str) -> str:
    """The same signature over claims that now name another department."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["department"] = "register"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@dataclass
class Tokens:
    consumer: str
    writer: str
    disabled: str
    expired: str
    tampered: str
    # A consumer's token asked for with citizens:read alone.
    narrowed: str


@pytest.fixture(scope="module")
async def tokens(matrix: Env) -> Tokens:
    """Real tokens from ``POST /oauth/token`` (and one signed already expired)."""
    env = matrix.env
    http = env.client
    made: dict[str, tuple[str, str]] = {}
    for name, roles in (
        ("consumer", ["consumer"]),
        ("writer", ["writer"]),
        ("disabled", ["consumer"]),
        ("narrowed", ["consumer"]),
    ):
        created = _ok(await http.post("/v1/clients", json={"roles": roles}, headers=WELFARE_ADMIN), 201)
        made[name] = (created["client_id"], created["client_secret"])
    with real_tokens(env):

        async def token(name: str) -> str:
            answer = await http.post(
                "/oauth/token", data={"grant_type": "client_credentials"}, auth=made[name]
            )
            return str(_ok(answer)["access_token"])

        consumer, writer, disabled = await token("consumer"), await token("writer"), await token("disabled")
        # A client asks for scopes beyond its roles: refused; for fewer: granted only those.
        beyond = await http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "citizens:read admin:clients"},
            auth=made["narrowed"],
        )
        assert beyond.status_code == 400, beyond.text
        assert beyond.json()["error"] == "invalid_scope"
        fewer = await http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "citizens:read"},
            auth=made["narrowed"],
        )
        assert _ok(fewer)["scope"] == "citizens:read"
        narrowed = str(fewer.json()["access_token"])
    _ok(await http.post(f"/v1/clients/{made['disabled'][0]}/disable", headers=WELFARE_ADMIN))
    auth = env.app.state.auth
    expired = TokenIssuer(auth.keys, auth.issuer.issuer, auth.issuer.audience, -600).issue(
        client_id=made["consumer"][0], department="welfare", roles=["consumer"], scope="citizens:read"
    )["access_token"]
    return Tokens(consumer, writer, disabled, str(expired), _tampered(consumer), narrowed)


@contextmanager
def real_tokens(env: RecordsEnv) -> Iterator[None]:
    """Authenticate with bearer tokens, the ``X-Test-As`` stand-in set aside meanwhile."""
    overrides = env.app.dependency_overrides
    stand_ins = {dependency: overrides.pop(dependency) for dependency in (get_principal, optional_principal)}
    try:
        yield
    finally:
        overrides.update(stand_ins)


def _url(path: str, world: World) -> str:
    return path.format(**world.params())


def _body(method: str) -> dict[str, Any]:
    return {"json": {}} if method in {"POST", "PUT", "PATCH"} else {}


async def test_token_matrix(matrix: Env, tokens: Tokens) -> None:
    http, world = matrix.env.client, matrix.world
    routes = _routes(matrix.env.app)
    before = await _state(matrix)
    with real_tokens(matrix.env):
        await _ask_with_tokens(http, world, tokens, routes)
    assert await _state(matrix) == before


async def _ask_with_tokens(
    http: httpx.AsyncClient,
    world: World,
    tokens: Tokens,
    routes: dict[tuple[str, str], frozenset[str] | None],
) -> None:
    asked = 0
    for (method, path), needs in sorted(routes.items()):
        if (method, path) in PUBLIC:
            assert needs is None or not any(needs), (method, path)
            continue
        assert needs is not None, f"{method} {path} declares no security and is not listed as public"
        url = _url(path, world)
        bad: list[tuple[str, dict[str, str], int]] = [
            ("no token", {}, 401),
            ("tampered", {"Authorization": f"Bearer {tokens.tampered}"}, 401),
            ("expired", {"Authorization": f"Bearer {tokens.expired}"}, 401),
            ("disabled client", {"Authorization": f"Bearer {tokens.disabled}"}, 401),
            ("not a bearer token", {"Authorization": "Basic d2VsZmFyZTp4"}, 401),
        ]
        # A token whose scopes lack the route's: 403 insufficient_scope.
        if needs and needs <= ROLE_SCOPES["consumer"] and needs != {"citizens:read"}:
            bad.append(("narrowed token", {"Authorization": f"Bearer {tokens.narrowed}"}, 403))
        if needs and needs <= ROLE_SCOPES["consumer"]:
            bad.append(("writer token", {"Authorization": f"Bearer {tokens.writer}"}, 403))
        elif needs or path.startswith("/v1/audit/"):
            bad.append(("consumer token", {"Authorization": f"Bearer {tokens.consumer}"}, 403))
        for what, headers, status in bad:
            response = await http.request(method, url, headers=headers, **_body(method))
            body = _refused(response, (status,), world.canaries, url)
            challenge = response.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer"), f"{what} {method} {url}: {challenge!r}"
            if status == 401 and what not in {"no token", "not a bearer token"}:
                assert 'error="invalid_token"' in challenge, (what, method, url, challenge)
            if status == 403:
                assert 'error="insufficient_scope"' in challenge, (what, method, url, challenge, body)
            asked += 1
    assert asked > 200


# --- the parties matrix ------------------------------------------------------------------


@dataclass
class Probe:
    """One refused request: who asks, what, and the statuses the README documents."""

    who: dict[str, str]
    method: str
    url: str
    statuses: tuple[int, ...]
    json: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _probes(w: World) -> dict[tuple[str, str], list[Probe]]:
    c, sub, ref = w.citizen, w.subscription, w.case_ref
    subs = f"/v1/subscriptions/{sub}"
    erase = {"reason": "duplicate-record", "legal_basis": "Test Act s.29", "purpose": "civil-registration"}
    agreement = AGREEMENTS[0]
    policy = f"/v1/policies/{CONSENT_AGREEMENT}"
    # Another department's subscription is 404 to every other subscriber, the portal included.
    others = [DVLA, REVENUE, PORTAL]

    def each(method: str, url: str, statuses: tuple[int, ...] = (404,), **kw: Any) -> list[Probe]:
        # ... and the portal's access notices to any other client of the portal's department.
        notices = url.replace(sub, w.notices)
        return [Probe(who, method, url, statuses, **kw) for who in others] + [
            Probe(as_("portal", "consumer"), method, notices, statuses, **kw),
            Probe(WELFARE, method, notices, statuses, **kw),
        ]

    change = {**agreement, "purposes": ["licence-administration", "tax-administration"], "reason": "x"}
    return {
        # Subscriptions, deliveries and webhooks of another department.
        ("GET", "/v1/subscriptions/{subscription_id}"): each("GET", subs),
        ("DELETE", "/v1/subscriptions/{subscription_id}"): each("DELETE", subs),
        ("POST", "/v1/subscriptions/{subscription_id}/disable"): each("POST", f"{subs}/disable"),
        ("POST", "/v1/subscriptions/{subscription_id}/enable"): each("POST", f"{subs}/enable"),
        ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): each("POST", f"{subs}/rotate-secret"),
        ("GET", "/v1/subscriptions/{subscription_id}/deliveries"): each("GET", f"{subs}/deliveries"),
        ("POST", "/v1/subscriptions/{subscription_id}/redeliver"): each("POST", f"{subs}/redeliver"),
        ("POST", "/v1/subscriptions"): [
            # Fields no agreement lets DVLA subscribe to; a registrar has no events:subscribe.
            Probe(
                DVLA,
                "POST",
                "/v1/subscriptions",
                (403,),
                json={"fields": ["address"], "purpose": "benefit-eligibility"},
            ),
            Probe(
                AUDITOR,
                "POST",
                "/v1/subscriptions",
                (403,),
                json={"fields": ["address"], "purpose": "benefit-eligibility"},
            ),
            # Access notices (every access to every citizen) are the portal role's alone.
            Probe(DVLA, "POST", "/v1/subscriptions", (403,), json={"type": "access.recorded"}),
            Probe(
                as_("portal", "consumer"),
                "POST",
                "/v1/subscriptions",
                (403,),
                json={"type": "access.recorded"},
            ),
        ],
        ("GET", "/v1/subscriptions"): [Probe(AUDITOR, "GET", "/v1/subscriptions", (403,))],
        ("GET", "/v1/events"): [Probe(as_("welfare", "data-owner"), "GET", "/v1/events", (403,))],
        # Agreements of another department: unseen (404) by another data owner, unchangeable
        # by an auditor (no policies:write), and not grantable over another's fields.
        ("GET", "/v1/policies/{agreement_id}"): [Probe(WELFARE_OWNER, "GET", policy, (404,))],
        ("GET", "/v1/policies/{agreement_id}/versions"): [
            Probe(WELFARE_OWNER, "GET", f"{policy}/versions", (404,))
        ],
        ("PUT", "/v1/policies/{agreement_id}"): [
            Probe(WELFARE_OWNER, "PUT", policy, (404,), json=change),
            # Neither the current version nor a stale one tells it the agreement exists.
            Probe(WELFARE_OWNER, "PUT", policy, (404,), json=change, headers={"If-Match": '"1"'}),
            Probe(WELFARE_OWNER, "PUT", policy, (404,), json=change, headers={"If-Match": '"99"'}),
            Probe(AUDITOR, "PUT", policy, (403,), json=change),
        ],
        ("DELETE", "/v1/policies/{agreement_id}"): [
            Probe(WELFARE_OWNER, "DELETE", policy, (404,), params={"reason": "x"}),
            Probe(
                WELFARE_OWNER, "DELETE", policy, (404,), params={"reason": "x"}, headers={"If-Match": '"99"'}
            ),
            Probe(AUDITOR, "DELETE", policy, (403,), params={"reason": "x"}),
        ],
        ("POST", "/v1/policies"): [
            Probe(
                WELFARE_OWNER,
                "POST",
                "/v1/policies",
                (403,),
                json={**agreement, "id": "authz-stolen", "reason": "x"},
            ),
            Probe(
                AUDITOR,
                "POST",
                "/v1/policies",
                (403,),
                json={**agreement, "id": "authz-stolen", "reason": "x"},
            ),
        ],
        ("GET", "/v1/policies"): [Probe(WELFARE, "GET", "/v1/policies", (403,))],
        ("POST", "/v1/policies/simulate"): [
            Probe(
                WELFARE_OWNER, "POST", "/v1/policies/simulate", (404,), json={"remove": [CONSENT_AGREEMENT]}
            ),
            Probe(
                WELFARE_OWNER,
                "POST",
                "/v1/policies/simulate",
                (403,),
                json={"upsert": [{**agreement, "id": "authz-sim", "consumer": "welfare"}]},
            ),
        ],
        ("POST", "/v1/decisions/explain"): [
            Probe(
                WELFARE_OWNER,
                "POST",
                "/v1/decisions/explain",
                (403,),
                json={
                    "consumer": "dvla",
                    "action": "read",
                    "fields": ["given_name"],
                    "purpose": "licence-administration",
                    "citizen_id": c,
                },
            )
        ],
        # Clients of another department, and roles only the operator grants.
        ("GET", "/v1/clients"): [Probe(WELFARE_OWNER, "GET", "/v1/clients", (403,))],
        ("POST", "/v1/clients"): [
            Probe(
                WELFARE_ADMIN,
                "POST",
                "/v1/clients",
                (403,),
                json={"roles": ["consumer"], "department": "register"},
            ),
            Probe(WELFARE_ADMIN, "POST", "/v1/clients", (403,), json={"roles": ["auditor"]}),
            Probe(WELFARE_OWNER, "POST", "/v1/clients", (403,), json={"roles": ["consumer"]}),
            Probe(AUDITOR, "POST", "/v1/clients", (403,), json={"roles": ["consumer"]}),
        ],
        ("POST", "/v1/clients/{client_id}/disable"): [
            Probe(WELFARE_ADMIN, "POST", f"/v1/clients/{w.register_client}/disable", (404,)),
            Probe(REGISTER_ADMIN, "POST", f"/v1/clients/{w.welfare_client}/disable", (404,)),
            # Its own department's admin, which only the operator's command disables.
            Probe(WELFARE_ADMIN, "POST", f"/v1/clients/{w.welfare_admin}/disable", (403,)),
            Probe(WELFARE, "POST", f"/v1/clients/{w.welfare_client}/disable", (403,)),
            Probe(AUDITOR, "POST", f"/v1/clients/{w.welfare_client}/disable", (403,)),
        ],
        # Another department's case.
        ("POST", "/v1/cases/{case_ref}/close"): [
            Probe(WELFARE, "POST", f"/v1/cases/{ref}/close", (404,)),
            Probe(DVLA, "POST", f"/v1/cases/{ref}/close", (404,)),
            Probe(AUDITOR, "POST", f"/v1/cases/{ref}/close", (403,)),
        ],
        # The audit: writes to nobody but the auditor's scopes; a consumer reads none of it.
        ("GET", "/v1/audit/entries"): [
            Probe(REVENUE, "GET", "/v1/audit/entries", (403,), params={"citizen_id": c})
        ],
        ("GET", "/v1/audit/export"): [
            Probe(WELFARE_OWNER, "GET", "/v1/audit/export", (403,), params={"citizen_id": c})
        ],
        ("GET", "/v1/audit/reports/usage"): [
            Probe(REVENUE, "GET", "/v1/audit/reports/usage", (403,)),
            Probe(WELFARE_OWNER, "GET", "/v1/audit/reports/usage", (403,), params={"owner": "register"}),
        ],
        ("GET", "/v1/audit/entries/{index}/proof"): [
            Probe(WELFARE_OWNER, "GET", "/v1/audit/entries/0/proof", (403,))
        ],
        ("GET", "/v1/audit/tile/{tile}"): [Probe(WELFARE_OWNER, "GET", "/v1/audit/tile/entries/000", (403,))],
        ("GET", "/v1/citizens/{citizen_id}/access-log"): [
            Probe(REVENUE, "GET", f"/v1/citizens/{c}/access-log", (403,)),
            Probe(AUDITOR, "GET", f"/v1/citizens/{c}/access-log", (403,)),
        ],
        # Consents and objections: the portal's alone, and a consent only under its citizen.
        ("GET", "/v1/citizens/{citizen_id}/consents"): [
            Probe(DVLA, "GET", f"/v1/citizens/{c}/consents", (403,))
        ],
        ("POST", "/v1/citizens/{citizen_id}/consents"): [
            # The consumer the consent is for, or an auditor, never gives it for the citizen.
            Probe(DVLA, "POST", f"/v1/citizens/{c}/consents", (403,), json={"agreement": CONSENT_AGREEMENT}),
            Probe(
                AUDITOR, "POST", f"/v1/citizens/{c}/consents", (403,), json={"agreement": CONSENT_AGREEMENT}
            ),
        ],
        ("PATCH", "/v1/citizens/{citizen_id}/consents/{consent_id}"): [
            Probe(
                PORTAL,
                "PATCH",
                f"/v1/citizens/{w.other_citizen}/consents/{w.consent}",
                (404,),
                json={"status": "revoked"},
            ),
            Probe(
                DVLA, "PATCH", f"/v1/citizens/{c}/consents/{w.consent}", (403,), json={"status": "revoked"}
            ),
        ],
        ("GET", "/v1/citizens/{citizen_id}/objections"): [
            Probe(REVENUE, "GET", f"/v1/citizens/{c}/objections", (403,))
        ],
        ("POST", "/v1/citizens/{citizen_id}/objections/{agreement}"): [
            Probe(REVENUE, "POST", f"/v1/citizens/{c}/objections/{OBJECTABLE_AGREEMENT}", (403,)),
        ],
        ("DELETE", "/v1/citizens/{citizen_id}/objections/{agreement}"): [
            Probe(REVENUE, "DELETE", f"/v1/citizens/{c}/objections/{OBJECTABLE_AGREEMENT}", (403,)),
            Probe(AUDITOR, "DELETE", f"/v1/citizens/{c}/objections/{OBJECTABLE_AGREEMENT}", (403,)),
        ],
        # Citizens: another department's fields, and roles acting beyond their reach.
        ("GET", "/v1/citizens/{citizen_id}"): [
            Probe(
                DVLA,
                "GET",
                f"/v1/citizens/{c}",
                (403,),
                params={"fields": "address", "purpose": "licence-administration"},
            ),
            Probe(
                AUDITOR,
                "GET",
                f"/v1/citizens/{c}",
                (403,),
                params={"fields": "address", "purpose": "tax-administration"},
            ),
        ],
        ("POST", "/v1/citizens/batch-get"): [
            Probe(
                AUDITOR,
                "POST",
                "/v1/citizens/batch-get",
                (403,),
                json={"ids": [c], "fields": ["address"], "purpose": "tax-administration"},
            ),
        ],
        # Revenue is party to no lookup agreement: it may not learn the citizen exists (404).
        ("POST", "/v1/citizens/lookup"): [
            Probe(
                REVENUE,
                "POST",
                "/v1/citizens/lookup",
                (404,),
                json={"national_id": w.national_id, "purpose": "tax-administration"},
            ),
        ],
        ("POST", "/v1/citizens/{citizen_id}/verify"): [
            Probe(
                DVLA,
                "POST",
                f"/v1/citizens/{c}/verify",
                (403,),
                json={"purpose": "licence-administration", "claims": {"address": {"eq": ADDRESS}}},
            ),
        ],
        ("GET", "/v1/citizens/{citizen_id}/fields/{field}/history"): [
            Probe(
                REVENUE,
                "GET",
                f"/v1/citizens/{c}/fields/address/history",
                (404,),
                params={"purpose": "tax-administration"},
            ),
        ],
        ("PATCH", "/v1/citizens/{citizen_id}/fields"): [
            Probe(
                as_("welfare", "writer"),
                "PATCH",
                f"/v1/citizens/{c}/fields",
                (403,),
                json={
                    "fields": {"address": "9 Hijack Row"},
                    "reason": "moved",
                    "purpose": "benefit-eligibility",
                },
            ),
            Probe(
                AUDITOR,
                "PATCH",
                f"/v1/citizens/{c}/fields",
                (403,),
                json={"fields": {"address": "9 Hijack Row"}, "reason": "moved"},
            ),
            Probe(
                as_("welfare", "registrar"),
                "PATCH",
                f"/v1/citizens/{c}/fields",
                (403,),
                json={"fields": {"address": "9 Hijack Row"}, "reason": "moved"},
            ),
        ],
        ("DELETE", "/v1/citizens/{citizen_id}"): [
            Probe(as_("welfare", "registrar"), "DELETE", f"/v1/citizens/{c}", (403,), params=erase),
            Probe(AUDITOR, "DELETE", f"/v1/citizens/{c}", (403,), params=erase),
            Probe(
                as_("dvla", "registrar"),
                "DELETE",
                f"/v1/citizens/{c}",
                (403,),
                params={**erase, "purpose": "licence-administration"},
            ),
        ],
        ("POST", "/v1/citizens"): [
            Probe(
                AUDITOR,
                "POST",
                "/v1/citizens",
                (403,),
                json={"national_id": "NIAUTHZ0001", "fields": {"given_name": "X"}},
            ),
            Probe(
                WELFARE,
                "POST",
                "/v1/citizens",
                (403,),
                json={"national_id": "NIAUTHZ0002", "fields": {"given_name": "X"}},
            ),
            # A registrar of a department that does not own the national id.
            Probe(
                as_("welfare", "registrar"),
                "POST",
                "/v1/citizens",
                (403,),
                json={"national_id": "NIAUTHZ0003", "fields": {"benefit_status": "none"}},
            ),
        ],
    }


def test_every_route_is_in_the_matrix(matrix: Env) -> None:
    routes = set(_routes(matrix.env.app))
    listed = set(_probes(matrix.world)) | set(PUBLIC) | set(NO_OTHER_PARTY)
    assert routes - listed == set(), f"routes with no refusal and no reason: {sorted(routes - listed)}"
    assert listed - routes == set(), f"listed routes the app no longer has: {sorted(listed - routes)}"
    assert not (set(_probes(matrix.world)) & (set(PUBLIC) | set(NO_OTHER_PARTY)))


async def test_parties_matrix(matrix: Env) -> None:
    http, world = matrix.env.client, matrix.world
    before = await _state(matrix)
    asked = 0
    for (method, path), probes in _probes(world).items():
        assert probes, (method, path)
        for probe in probes:
            response = await http.request(
                probe.method,
                probe.url,
                headers={**probe.who, **probe.headers},
                json=probe.json,
                params=probe.params,
            )
            sent = probe.url + json.dumps(probe.json) + json.dumps(probe.params)
            _refused(response, probe.statuses, world.canaries, sent)
            asked += 1
    assert await _state(matrix) == before
    assert asked >= 60


async def test_other_departments_lists_hold_nothing_of_theirs(matrix: Env) -> None:
    """Lists and searches answer 200 with the caller's own only."""
    http, w = matrix.env.client, matrix.world
    mine_only: list[tuple[dict[str, str], str, dict[str, str]]] = [
        (DVLA, "/v1/subscriptions", {}),
        (PORTAL, "/v1/subscriptions", {}),
        (DVLA, "/v1/events", {}),
        (WELFARE_OWNER, "/v1/policies", {}),
        (WELFARE_ADMIN, "/v1/clients", {}),
        (WELFARE_OWNER, "/v1/audit/entries", {"citizen_id": w.citizen}),
        (WELFARE_OWNER, "/v1/audit/entries", {"owner": "register"}),
        (WELFARE_OWNER, "/v1/audit/reports/usage", {}),
    ]
    register_only = {w.register_client, w.subscription, CONSENT_AGREEMENT, w.citizen, w.case_ref, WEBHOOK}
    for who, url, params in mine_only:
        response = await http.get(url, params=params, headers=who)
        assert response.status_code == 200, response.text
        sent = json.dumps(params)
        leaked = {c for c in register_only if c not in sent and c in response.text}
        assert not leaked, f"{who} GET {url} {params} shows {leaked}: {response.text}"
        if params:
            assert response.json()["items"] == [], response.text


async def test_a_stranger_cannot_tell_a_citizen_from_a_made_up_id(matrix: Env) -> None:
    """A department party to no agreement over a citizen's fields may not learn the citizen
    exists: every citizen route answers it for a real id exactly as for a made-up one."""
    http, w = matrix.env.client, matrix.world
    made_up = str(uuid.uuid4())
    erase = {"reason": "duplicate-record", "legal_basis": "Test Act s.29", "purpose": "civil-registration"}
    asks: list[tuple[dict[str, str], str, str, dict[str, Any]]] = [
        (
            as_("audit-office", "consumer"),
            "GET",
            "/v1/citizens/{}",
            {"params": {"fields": "given_name,address", "purpose": "benefit-eligibility"}},
        ),
        (
            as_("audit-office", "consumer"),
            "GET",
            "/v1/citizens/{}/fields/address/history",
            {"params": {"purpose": "fraud-investigation"}},
        ),
        (
            as_("audit-office", "consumer"),
            "POST",
            "/v1/citizens/{}/verify",
            {"json": {"purpose": "benefit-eligibility", "claims": {"date_of_birth": {"lte": "2000-01-01"}}}},
        ),
        (
            as_("audit-office", "writer"),
            "PATCH",
            "/v1/citizens/{}/fields",
            {"json": {"fields": {"address": "9 Hijack Row"}, "reason": "moved", "purpose": "address-update"}},
        ),
        (
            as_("audit-office", "writer"),
            "PATCH",
            "/v1/citizens/{}/fields",
            {
                "json": {
                    "fields": {"address": "9 Hijack Row"},
                    "reason": "moved",
                    "purpose": "address-update",
                },
                "headers": {"If-Match": '"99"'},
            },
        ),
        (as_("welfare", "registrar"), "DELETE", "/v1/citizens/{}", {"params": erase}),
        (
            as_("welfare", "registrar"),
            "DELETE",
            "/v1/citizens/{}",
            {"params": erase, "headers": {"If-Match": '"99"'}},
        ),
    ]
    for who, method, path, kwargs in asks:
        answers = []
        for citizen in (w.citizen, made_up):
            extra = kwargs.get("headers", {})
            rest = {k: v for k, v in kwargs.items() if k != "headers"}
            response = await http.request(method, path.format(citizen), headers={**who, **extra}, **rest)
            _refused(response, (403, 404), w.canaries, citizen)
            answers.append((response.status_code, response.text.replace(citizen, "<id>")))
        assert answers[0] == answers[1], f"{who} {method} {path}: {answers}"
