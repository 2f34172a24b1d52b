"""The OpenAPI document at ``/openapi.json``, as department developers read it in ``/docs``.

FastAPI's generated document knows the success response and its own 422 shape. This adds
what the service really does:

- the OAuth2 client-credentials security scheme (the Authorize button), and on each route
  the scopes it requires;
- an ``application/problem+json`` response (RFC 9457) for every status each route can
  return, with an example; the statuses come from rules (every route can answer 431, the
  server's refusal of a request head too long; an authenticated one 400, 401, 403, 429 and
  503; one with input 422; one with a body 400, 413 and 415) plus the table below for what
  a route's own rules add. ``tests/test_openapi.py`` compares them with what every route
  really answered in the test run;
- the form body of ``POST /oauth/token``, its token response, its RFC 6749 errors and the
  headers of each (never cached; the 401's challenge);
- an example for every request body and success response, and the media types of those
  that are not JSON (``service/openapi_examples.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from service.auth.dependencies import ON_BEHALF_OF, ON_BEHALF_OF_MAX
from service.auth.runtime import TOKEN_PATH
from service.auth.scopes import ROLE_SCOPES
from service.errors import PROBLEM_BASE, PROBLEM_JSON, ServiceError
from service.malformed_http import HEAD_TOO_LARGE_DETAIL
from service.openapi_examples import REQUEST_EXAMPLES, RESPONSE_EXAMPLES, RESPONSE_MEDIA
from service.policy.schemas import AgreementIn, SimulateIn

SECURITY_SCHEME = "oauth2"

# What a route's own rules add to the statuses the general rules give it.
ROUTE_STATUSES: dict[tuple[str, str], set[int]] = {
    ("GET", "/readyz"): {503},
    # 503: a signing key file re-read while serving is open to other accounts, missing or
    # unreadable (``SigningKeysUnusable``).
    ("GET", "/.well-known/jwks.json"): {503},
    ("GET", "/.well-known/evidence-keys.json"): {503},
    ("GET", "/v1/policies/{agreement_id}"): {404},
    ("POST", "/v1/policies"): {409},
    ("PUT", "/v1/policies/{agreement_id}"): {404, 409, 410, 412, 428},
    ("DELETE", "/v1/policies/{agreement_id}"): {400, 404, 409, 410, 412},
    ("GET", "/v1/policies/{agreement_id}/versions"): {404},
    ("POST", "/v1/policies/simulate"): {404, 409},
    ("GET", "/v1/audit/checkpoint"): {404},  # scope audit:verify unless served publicly
    ("GET", "/v1/audit/entries/{index}/proof"): {400, 404},
    ("GET", "/v1/audit/consistency"): {400, 404},
    # 400 not a tile path, 403 an entry bundle without audit:export, 404 tree too small,
    # 501 an entry bundle holding an entry over the 65,535 bytes its format can carry.
    ("GET", "/v1/audit/tile/{tile}"): {400, 403, 404, 501},
    ("GET", "/v1/audit/entries"): {400},
    ("GET", "/v1/audit/export"): {400},
    ("GET", "/v1/audit/reports/usage"): {400},
    # 404 for an unknown citizen only: an erased citizen's audit stays, and so does its log.
    ("GET", "/v1/citizens/{citizen_id}/access-log"): {404},
    ("POST", "/v1/citizens"): {409, 503},
    ("POST", "/v1/citizens/lookup"): {404, 503},
    ("POST", "/v1/citizens/batch-get"): {503},
    ("GET", "/v1/citizens/{citizen_id}"): {404, 410, 503},
    ("DELETE", "/v1/citizens/{citizen_id}"): {404, 410, 412, 503},
    ("PATCH", "/v1/citizens/{citizen_id}/fields"): {404, 409, 410, 412, 503},
    ("GET", "/v1/citizens/{citizen_id}/fields/{field}/history"): {404, 410, 503},
    ("POST", "/v1/citizens/{citizen_id}/verify"): {404, 410, 503},
    ("POST", "/v1/subscriptions"): {409},
    ("GET", "/v1/subscriptions/{subscription_id}"): {404},
    ("DELETE", "/v1/subscriptions/{subscription_id}"): {404},
    ("POST", "/v1/subscriptions/{subscription_id}/disable"): {404},
    ("POST", "/v1/subscriptions/{subscription_id}/enable"): {404},
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): {404, 409},
    ("GET", "/v1/subscriptions/{subscription_id}/deliveries"): {404},
    ("POST", "/v1/subscriptions/{subscription_id}/redeliver"): {404, 409},
    ("GET", "/v1/events"): {400},
    ("POST", "/v1/cases/{case_ref}/close"): {404},
    ("POST", "/v1/citizens/{citizen_id}/consents"): {404, 409},
    ("PATCH", "/v1/citizens/{citizen_id}/consents/{consent_id}"): {404, 409},
    ("GET", "/v1/citizens/{citizen_id}/consents"): {404},
    ("POST", "/v1/citizens/{citizen_id}/objections/{agreement}"): {404, 409},
    ("DELETE", "/v1/citizens/{citizen_id}/objections/{agreement}"): {404},
    ("GET", "/v1/citizens/{citizen_id}/objections"): {404},
    ("POST", "/v1/clients/{client_id}/disable"): {404},
}

# Headers the contract promises on a success (DESIGN.md, REST surface): a versioned
# resource's ETag, for the If-Match of the next write, and where a POST put what it made.
_ETAG = {
    "description": 'The version as a strong ETag, such as "3": send it back in If-Match.',
    "required": True,
    "schema": {"type": "string", "pattern": '^"[1-9][0-9]*"$'},
}
_LOCATION = {
    "description": "The address of what was made.",
    "required": True,
    "schema": {"type": "string"},
}
SUCCESS_HEADERS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("POST", "/v1/citizens"): {"ETag": _ETAG, "Location": _LOCATION},
    ("GET", "/v1/citizens/{citizen_id}"): {"ETag": _ETAG},
    ("PATCH", "/v1/citizens/{citizen_id}/fields"): {"ETag": _ETAG},
    ("POST", "/v1/policies"): {"ETag": _ETAG, "Location": _LOCATION},
    ("GET", "/v1/policies/{agreement_id}"): {"ETag": _ETAG},
    ("PUT", "/v1/policies/{agreement_id}"): {"ETag": _ETAG},
    ("DELETE", "/v1/policies/{agreement_id}"): {"ETag": _ETAG},
}
# The officer a client acts for, recorded in the audit; every authenticated route takes it.
ON_BEHALF_OF_PARAMETER: dict[str, Any] = {
    "name": ON_BEHALF_OF,
    "in": "header",
    "required": False,
    "description": "The officer the client acts for, recorded in the audit: one printable UTF-8 value.",
    "schema": {"type": "string", "minLength": 1, "maxLength": ON_BEHALF_OF_MAX},
}
# Every 429 and 503 says when to try again (``TooManyRequests``, ``ServiceUnavailable``).
RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}

# Routes that read their JSON body as sent and check it in their domain, so that every
# problem comes back in one answer: the model the body must fit, for the document.
RAW_BODY_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/v1/policies"): AgreementIn,
    ("PUT", "/v1/policies/{agreement_id}"): AgreementIn,
    ("POST", "/v1/policies/simulate"): SimulateIn,
}

# The token endpoint answers RFC 6749 errors, not problem details; its throttling of
# repeated failures (429), an unavailable database (503) and the server's refusal of a
# request head too long (431) are problem documents like every other refusal.
TOKEN_STATUSES = {400, 401, 413}
TOKEN_PROBLEM_STATUSES = {429, 431, 503}
# A request head (its line and header fields) past ``malformed_http.HEAD_LIMIT`` is refused
# by the server before any app or route sees it, whatever the path: every operation may
# answer it (a long generated query string does), the token endpoint's with the same problem.
HEAD_TOO_LARGE = 431

_DETAILS = {
    400: "Send the access token as 'Authorization: Bearer <token>'.",
    401: "A bearer access token is required.",
    403: "This call needs the scope(s): citizens:read.",
    404: "No such citizen, or this client may not know of it.",
    409: "A citizen with this national id is already registered.",
    410: "This citizen's record was erased.",
    412: "The record changed since the ETag you sent; read it again.",
    413: "The request body is larger than 1048576 bytes.",
    415: "Send the body as JSON, with 'Content-Type: application/json'.",
    422: "The request is not valid.",
    428: "Send If-Match with the agreement's ETag.",
    429: "This client is over its request rate; retry later.",
    431: HEAD_TOO_LARGE_DETAIL,  # as the server sends it
    503: "The audit log is unavailable, so no data is released; retry later.",
}


def _titles() -> dict[int, tuple[str, str]]:
    """Status -> (title, slug), from the general ``ServiceError`` classes."""
    titles: dict[int, tuple[str, str]] = {}

    def walk(cls: type[ServiceError]) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__ == "service.errors":
                titles.setdefault(sub.status, (sub.title, sub.slug))
            walk(sub)

    walk(ServiceError)
    return titles


def problem_example(status: int) -> dict[str, Any]:
    title, slug = _titles().get(status, ("Error", "error"))
    example: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": _DETAILS.get(status, title),
    }
    if status == 422:
        example["errors"] = [{"loc": ["body", "purpose"], "msg": "Field required"}]
    return example


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `errors` lists each invalid input.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ProblemError"}},
    },
}

PROBLEM_ERROR_SCHEMA: dict[str, Any] = {
    "title": "ProblemError",
    "description": "One invalid input: its location (body, query, path or header, then names) and why.",
    "type": "object",
    "required": ["loc", "msg"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"},
    },
}

OAUTH_ERROR_SCHEMA: dict[str, Any] = {
    "title": "OAuthError",
    "description": "RFC 6749 section 5.2 error response.",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}

TOKEN_RESPONSE_SCHEMA: dict[str, Any] = {
    "title": "TokenResponse",
    "description": "RFC 6749 section 5.1 access token response.",
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string", "description": "A signed JWT (RFC 9068), sent as a bearer token."},
        "token_type": {"type": "string", "const": "Bearer"},
        "expires_in": {"type": "integer", "minimum": 1, "description": "Seconds the token is good for."},
        "scope": {
            "type": "string",
            "description": "The scopes granted, space-separated: those asked for, or all of the roles'.",
        },
    },
    "additionalProperties": False,
}

# RFC 6749 5.1 and 5.2: nothing the token endpoint answers may be cached
# (``auth.endpoints.never_cached`` sets both headers on every answer the app gives, whatever
# its status; the server's own 431 comes before the app, and carries neither).
NEVER_CACHED_HEADERS: dict[str, dict[str, Any]] = {
    "Cache-Control": {"required": True, "schema": {"type": "string", "const": "no-store"}},
    "Pragma": {"required": True, "schema": {"type": "string", "const": "no-cache"}},
}
# The challenge of a refused client authentication (``auth.server``'s ``handle_response``).
CLIENT_CHALLENGE: dict[str, Any] = {
    "description": "The client authentication to use (RFC 6749 5.2).",
    "required": True,
    "schema": {"type": "string", "const": 'Basic realm="tellonce"'},
}
# Each RFC 6749 error as a request really gets it: the 400 of a form without grant_type,
# the 401 of a wrong secret, the 413 of a body over the default 1 MiB limit.
TOKEN_ERROR_EXAMPLES: dict[int, dict[str, str]] = {
    400: {"error": "invalid_request", "error_description": "The grant_type parameter is required."},
    401: {"error": "invalid_client", "error_description": "Client authentication failed."},
    413: {
        "error": "invalid_request",
        "error_description": "The request body exceeds the limit of 1048576 bytes.",
    },
}

TOKEN_REQUEST_SCHEMA: dict[str, Any] = {
    "title": "TokenRequest",
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "scope": {"type": "string", "description": "Space-separated; default: every scope of the roles."},
        "client_id": {"type": "string", "description": "client_secret_post and private_key_jwt."},
        "client_secret": {"type": "string", "description": "client_secret_post only."},
        "client_assertion_type": {
            "type": "string",
            "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
        },
        "client_assertion": {"type": "string", "description": "private_key_jwt: a signed JWT (RFC 7523)."},
    },
}


def api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """Every API route in the document, with its full path, through the routers it includes."""
    return [
        (str(context.path_format), context.original_route)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.include_in_schema
    ]


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def authentication(route: APIRoute) -> tuple[bool, frozenset[str]]:
    """Whether the route checks an access token, and the scopes it requires."""
    from service.auth.dependencies import get_principal, optional_principal

    authenticated = False
    scopes: frozenset[str] = frozenset()
    for dependency in _dependencies(route.dependant):
        call: Callable[..., Any] | None = dependency.call
        if call is get_principal or call is optional_principal:
            authenticated = True
        scopes |= getattr(call, "required_scopes", frozenset())
    return authenticated, scopes


def token_optional(route: APIRoute) -> bool:
    """The route may be configured to answer without a token (the public checkpoint)."""
    from service.auth.dependencies import optional_principal

    return any(d.call is optional_principal for d in _dependencies(route.dependant))


def declared_statuses(method: str, path: str, route: APIRoute) -> set[int]:
    """Every error status the route can answer: the general rules plus ``ROUTE_STATUSES``."""
    if path == TOKEN_PATH:
        return TOKEN_STATUSES | TOKEN_PROBLEM_STATUSES
    statuses = set(ROUTE_STATUSES.get((method, path), set())) | {HEAD_TOO_LARGE}
    authenticated, _scopes = authentication(route)
    if authenticated:
        # 503: the caller's standing, the catalog and the audit of the call are all read or
        # written in the database; when that fails the call is refused, never half-served.
        # 400: the Bearer scheme with no token (RFC 6750, 3.1: invalid_request).
        statuses |= {400, 401, 429, 503}
        # 403: a scope the token lacks, or (scope-free routes) a role the rules refuse.
        statuses.add(403)
    dependant = route.dependant
    has_input = bool(
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.body_params
        or any(d.query_params or d.header_params for d in _dependencies(dependant))
    )
    if has_input or path.startswith("/v1/"):
        # 422 also for a query parameter named twice, refused on every /v1/ path
        # (``errors.RepeatedQueryMiddleware``).
        statuses.add(422)
    if dependant.body_params:
        # 400 for a body that is not JSON; 415 for one sent as another media type.
        statuses |= {400, 413, 415}
    return statuses


def _problem_response(status: int) -> dict[str, Any]:
    title = _titles().get(status, ("Error", ""))[0]
    response: dict[str, Any] = {
        "description": title,
        "content": {
            PROBLEM_JSON: {
                "schema": {"$ref": "#/components/schemas/Problem"},
                "example": problem_example(status),
            }
        },
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": RETRY_AFTER}
    return response


def _token_operation(operation: dict[str, Any]) -> None:
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"$ref": "#/components/schemas/TokenRequest"},
                "example": {"grant_type": "client_credentials", "scope": "citizens:read citizens:lookup"},
            }
        },
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "An access token (a signed JWT, RFC 9068).",
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/TokenResponse"},
                    "example": RESPONSE_EXAMPLES[("POST", TOKEN_PATH)],
                }
            },
        }
    }
    for status in sorted(TOKEN_STATUSES):
        responses[str(status)] = {
            "description": "RFC 6749 error",
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/OAuthError"},
                    "example": TOKEN_ERROR_EXAMPLES[status],
                }
            },
        }
    responses["401"]["headers"] = {"WWW-Authenticate": CLIENT_CHALLENGE}
    for status in sorted(TOKEN_PROBLEM_STATUSES):
        responses[str(status)] = _problem_response(status)
    for answered, response in responses.items():
        if answered != str(HEAD_TOO_LARGE):  # answered by the server, before the endpoint's layers
            response["headers"] = {**response.get("headers", {}), **NEVER_CACHED_HEADERS}
    operation["responses"] = responses
    # Clients authenticate with their credentials here, not with a bearer token.
    operation["security"] = [{"clientBasic": []}, {}]


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the null branch FastAPI gives an optional one: a query
    string, header or path carries text, and an optional parameter is left out, never sent
    as null (a generator that sends null sends the text "null")."""
    branches = schema.get("anyOf")
    if not branches or {"type": "null"} not in branches:
        return schema
    rest = [branch for branch in branches if branch != {"type": "null"}]
    outer = {key: value for key, value in schema.items() if key != "anyOf"}
    if len(rest) == 1:
        return {**rest[0], **outer}
    return {**outer, "anyOf": rest}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["ProblemError"] = PROBLEM_ERROR_SCHEMA
    schemas["OAuthError"] = OAUTH_ERROR_SCHEMA
    schemas["TokenRequest"] = TOKEN_REQUEST_SCHEMA
    schemas["TokenResponse"] = TOKEN_RESPONSE_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    all_scopes = sorted(set().union(*ROLE_SCOPES.values()))
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "oauth2",
            "description": "OAuth2 client credentials; the token's scopes come from the client's roles.",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": TOKEN_PATH,
                    "scopes": {scope: scope.replace(":", ": ") for scope in all_scopes},
                }
            },
        },
        "clientBasic": {"type": "http", "scheme": "basic", "description": "client_secret_basic"},
    }
    for path, route in api_routes(app):
        for method in route.methods or ():
            operation = schema["paths"][path][method.lower()]
            key = (method, path)
            if path == TOKEN_PATH:
                _token_operation(operation)
                continue
            if key in RAW_BODY_MODELS:
                model = RAW_BODY_MODELS[key]
                document = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(document.pop("$defs", {}))  # the models it refers to
                schemas[model.__name__] = document
                operation["requestBody"]["content"]["application/json"]["schema"] = {
                    "$ref": f"#/components/schemas/{model.__name__}"
                }
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _without_null(parameter["schema"])
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            statuses = declared_statuses(method, path, route)
            for status in sorted(statuses):
                responses[str(status)] = _problem_response(status)
            if 428 in statuses:
                # Optional in the signature, so that leaving it out is a 428 problem rather
                # than a 422; required all the same, and documented so.
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "header" and parameter["name"].lower() == "if-match":
                        parameter["required"] = True
            if key in RESPONSE_MEDIA:
                responses["200"]["content"] = RESPONSE_MEDIA[key]
            if key in SUCCESS_HEADERS:
                (success,) = (status for status in responses if status.startswith("2"))
                responses[success]["headers"] = SUCCESS_HEADERS[key]
            for status_text, response in responses.items():
                if status_text.startswith("2") and key in RESPONSE_EXAMPLES:
                    for media in response.get("content", {}).values():
                        media["example"] = RESPONSE_EXAMPLES[key]
            if key in REQUEST_EXAMPLES and "requestBody" in operation:
                for media in operation["requestBody"]["content"].values():
                    media["example"] = REQUEST_EXAMPLES[key]
            authenticated, scopes = authentication(route)
            if authenticated:
                operation["security"] = [{SECURITY_SCHEME: sorted(scopes)}]
                # Read by the token check itself (``service.auth.dependencies``), not by a
                # route parameter, so declared here: DESIGN.md's optional, recorded header.
                operation.setdefault("parameters", []).append(ON_BEHALF_OF_PARAMETER)
                if token_optional(route):
                    operation["security"].append({})
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the document above at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
