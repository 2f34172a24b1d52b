"""The OAuth2 authorization server: authlib's, behind a thin Starlette adapter.

authlib ships no FastAPI/Starlette integration for the authorization server, so this
module is the adapter its documentation asks custom frameworks to write. authlib is
synchronous, and it queries clients while it authenticates; to keep the database async
the endpoint reads the form and loads the one candidate client first, then runs authlib
over an in-memory ``query_client``. authlib itself only hashes, signs and verifies.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    InvalidScopeError,
    JsonRequest,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import Key
from joserfc.jws import extract_compact
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from service.auth.client_keys import (
    ALGORITHM_KEY_TYPES,
    ASSERTION_ALGORITHMS,
    UnusableKey,
    signing_key,
    stand_in_jwk,
)
from service.auth.models import Client
from service.auth.scopes import scopes_for
from service.auth.secrets import secret_matches
from service.auth.tokens import TokenIssuer

logger = logging.getLogger("tellonce.auth")

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
JWT_METHOD = "private_key_jwt"
AUTH_METHODS = [*SECRET_METHODS, JWT_METHOD]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# What a refused client authentication says, whatever failed: an unknown or disabled client,
# a wrong secret, a method the client does not use, an assertion its key did not sign. The
# token endpoint must not tell which client ids exist (``AssertionRefused`` is the exception).
CLIENT_AUTHENTICATION_FAILED = "Client authentication failed."
# Seconds of clock skew allowed between a client and this server: an assertion is accepted
# until ``exp`` plus this, and its ``iat`` and ``nbf`` may be this far in the future.
ASSERTION_LEEWAY = 30


def plausible_client_id(client_id: str) -> bool:
    """Whether ``client_id`` could name a client: printable ASCII without spaces, as every
    issued id is. Anything else (a NUL, non-ASCII) is answered as an unknown client
    without being looked up; PostgreSQL cannot even take a NUL as a query argument."""
    return client_id.isascii() and client_id.isprintable() and " " not in client_id


@dataclass
class RegisteredClient(ClientMixin):  # type: ignore[misc]
    """authlib's view of a stored client (an enabled one: disabled clients never get here)."""

    client_id: str
    department: str
    roles: list[str]
    secret_hash: str | None
    public_jwk: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Client) -> RegisteredClient:
        return cls(row.client_id, row.department, list(row.roles), row.secret_hash, row.public_jwk)

    @property
    def allowed_scopes(self) -> frozenset[str]:
        return scopes_for(set(self.roles))

    def get_client_id(self) -> str:
        return self.client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return False
        # A key client has no secret; a secret client has no key. Each uses its own way only.
        if self.public_jwk is not None:
            return method == JWT_METHOD
        return method in SECRET_METHODS

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(sorted(set(scope.split()) & self.allowed_scopes))


class StandInClient(RegisteredClient):
    """What a ``private_key_jwt`` assertion is checked as when the client it names is
    unknown or disabled, or has no key of the kind the assertion's algorithm needs (a
    secret client, an RSA key under an ES256 assertion): its signature is verified against
    a key whose private half no one has, as a real client's would be, so the refusal takes
    the time a wrong signature takes and does not tell that the id exists. It never
    authenticates."""

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:  # noqa: ARG002
        return False


def authenticate_by_basic(
    query_client: Callable[[str], RegisteredClient | None], request: OAuth2Request
) -> RegisteredClient | None:
    """``client_secret_basic``, in place of authlib's (see ``_client_with_secret``). The
    header was already checked by ``candidate_client_id``."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    return _client_with_secret(query_client, *basic_credentials(credentials))


def authenticate_by_post(
    query_client: Callable[[str], RegisteredClient | None], request: OAuth2Request
) -> RegisteredClient | None:
    """``client_secret_post``, in place of authlib's (see ``_client_with_secret``)."""
    form = request.form
    return _client_with_secret(query_client, form.get("client_id", ""), form.get("client_secret", ""))


def _client_with_secret(
    query_client: Callable[[str], RegisteredClient | None], client_id: str, client_secret: str
) -> RegisteredClient | None:
    # authlib's own methods refuse an unknown client before any comparison, and a client
    # with no secret without hashing: a wrong secret then took longer than an unknown id,
    # and told that the id exists. Here every claimed secret is hashed and compared once.
    if not client_id or not client_secret:
        return None
    client = query_client(client_id)
    matches = secret_matches(client_secret, client.secret_hash if client is not None else None)
    return client if matches else None


class TellonceClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def validate_requested_scope(self) -> None:
        """A client may ask for any subset of its roles' scopes, nothing else."""
        requested = self.request.payload.scope
        client: RegisteredClient = self.request.client
        if requested and not set(requested.split()) <= client.allowed_scopes:
            raise InvalidScopeError()


@dataclass(frozen=True)
class SeenAssertion:
    """A verified ``private_key_jwt`` assertion: the token endpoint stores its id in the
    database until ``expires_at`` and refuses the token if the id was already there."""

    client_id: str
    jti: str
    expires_at: float


class AssertionRefused(InvalidClientError):  # type: ignore[misc]
    """An assertion signed by the client's own key, refused for its claims (expired, another
    audience, replayed...): its signer holds the key, so it is told what was wrong."""


class PrivateKeyJwtAuthentication(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client authentication with the client's registered public JWK."""

    CLIENT_AUTH_METHOD = JWT_METHOD

    def __init__(
        self, audiences: list[str], max_lifetime: int, on_assertion: Callable[[SeenAssertion], None]
    ) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY)
        self.audiences = audiences
        self.max_lifetime = max_lifetime
        self.on_assertion = on_assertion

    def __call__(
        self, query_client: Callable[[str], RegisteredClient | None], request: OAuth2Request
    ) -> RegisteredClient | None:
        """authlib's, over a ``query_client`` that answers a ``StandInClient`` where there is
        no client whose key could verify the assertion: authlib refuses an unknown client
        before it verifies any signature, so an unknown id was refused faster than a known
        one (about 100 µs of ECDSA)."""
        key_type = ALGORITHM_KEY_TYPES.get(_assertion_algorithm(request.form.get("client_assertion", "")))

        def client_with_a_fitting_key(client_id: str) -> RegisteredClient:
            client = query_client(client_id)
            if (
                client is not None
                and client.public_jwk is not None
                and client.public_jwk.get("kty") == key_type
            ):
                return client
            return StandInClient(client_id, "", [], None, stand_in_jwk(key_type or "EC"))

        client: RegisteredClient | None = super().__call__(client_with_a_fitting_key, request)
        return client

    def get_audiences(self) -> list[str]:
        return self.audiences

    def verify_claims(self, claims: jwt.Claims) -> None:
        """authlib's, after one rule of ours: ``aud`` names this server and no one else.
        RFC 7523 3 only asks that it contain this server, but an assertion that also names
        another could have been made for that other server, and be replayed here by it
        (draft-ietf-oauth-rfc7523bis). A list of this server's own names is accepted."""
        audience = claims.get("aud")
        named = audience if isinstance(audience, list) else [audience]
        if audience is not None and (not named or any(name not in self.audiences for name in named)):
            raise InvalidClientError(description="The assertion's aud must name this server and no other.")
        super().verify_claims(claims)

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        """Called once the signature, audience and times are verified (joserfc checks
        each of ``exp``, ``iat`` and ``nbf`` against the clock, with the leeway). An
        assertion valid at no time (``exp`` at or before its ``iat`` or ``nbf``) is refused,
        and so, as a one-off credential (RFC 7523 3), is one that lives longer than
        ``max_lifetime`` (``exp - iat``, or ``exp - now``), each saying so (authlib would
        answer a False with "JWT ID is used before"). The id is handed on to be stored."""
        expires_at, issued_at = claims.get("exp"), claims.get("iat")
        if not isinstance(expires_at, int | float):
            return False
        # A JSON number need not fit a float (10**400): refused, as no time, before any sum.
        for name, value in (("exp", expires_at), ("iat", issued_at)):
            if value is not None and not _a_time(value):
                raise InvalidClientError(description=f"The assertion's {name} is not a time.")
        # Within the leeway each time passes the clock on its own (an iat 20 s ahead and an
        # exp 10 s ahead, or an exp 10 s past and an iat of now); together they say the
        # assertion expired before it was issued, or before it became valid.
        for name, value in (("iat", issued_at), ("nbf", claims.get("nbf"))):
            if isinstance(value, int | float) and value >= expires_at:
                raise InvalidClientError(description=f"The assertion's exp must be after its {name}.")
        # As the registry (``used_assertions``) keeps it on every database: PostgreSQL
        # cannot store a NUL, where SQLite would.
        if not jti or len(jti) > 255 or "\x00" in jti:
            raise InvalidClientError(
                description="The assertion's jti must be 1 to 255 characters, without NUL."
            )
        too_long = f"The assertion may live at most {self.max_lifetime} seconds (exp - iat, and exp - now)."
        if expires_at - time.time() > self.max_lifetime + self.leeway:
            raise InvalidClientError(description=too_long)
        if isinstance(issued_at, int | float) and expires_at - issued_at > self.max_lifetime:
            raise InvalidClientError(description=too_long)
        # joserfc reads the clock in whole seconds, so an exp with a fraction is accepted
        # until the next whole second after exp + leeway: the id is kept as long.
        self.on_assertion(SeenAssertion(str(claims["sub"]), jti, float(math.ceil(expires_at) + self.leeway)))
        return True

    def process_assertion_claims(self, assertion: str, resolve_key: Key) -> Any:
        """authlib's, with the algorithms named: without them joserfc accepts only its
        recommended HS256, RS256 and ES256, so Ed25519 and PS256 clients could never sign in.
        The claims (audience, expiry, replay) are still verified by ``verify_claims``."""
        try:
            with warnings.catch_warnings(action="ignore", category=SecurityWarning):
                # joserfc warns on every "EdDSA" (RFC 9864 deprecates the name because it
                # leaves the curve open); here the client's registered key fixes the curve.
                token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except JoseError as error:
            raise InvalidClientError(description=error.description) from error
        try:
            self.verify_claims(token.claims)
        except InvalidClientError as error:
            raise AssertionRefused(description=error.description) from error
        return token.claims

    def resolve_client_public_key(self, client: RegisteredClient) -> Key:
        # Every client here has a key: ``__call__`` stands in for those without one.
        # Checked again under today's rule, not only when the client was registered: a key
        # that rule now refuses (an RSA key under 2048 bits registered before it) no longer
        # authenticates. The refusal says no more than any other failed authentication.
        try:
            return signing_key(client.public_jwk)
        except UnusableKey:
            logger.warning("client %s: its registered key is no longer accepted", client.client_id)
            raise InvalidClientError(description="The client's registered key is not accepted.") from None


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request over a form that was already read (authlib is synchronous)."""

    def __init__(self, uri: str, headers: Headers, form: dict[str, str]) -> None:
        super().__init__(method="POST", uri=uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass
class PreparedTokenRequest:
    headers: Headers
    form: dict[str, str]
    client: RegisteredClient | None = field(default=None)
    # Set while authlib authenticates a private_key_jwt client; stored by the endpoint.
    assertion: SeenAssertion | None = field(default=None)


class MalformedClientAuthentication(Exception):
    """The request's client authentication cannot even be parsed, or mixes methods."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _assertion_algorithm(assertion: str) -> str:
    """The ``alg`` an assertion's header names; empty if it names none it can be read for."""
    try:
        algorithm = extract_compact(assertion.encode()).protected.get("alg")
    except (JoseError, ValueError, UnicodeError):
        return ""
    return algorithm if isinstance(algorithm, str) else ""


def _a_time(value: Any) -> bool:
    """Whether ``value`` is a NumericDate this server can do sums with: a number (not a
    boolean) within 2**53 seconds of the epoch either way, neither infinite nor NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 2**53


def candidate_client_id(headers: Headers, form: Mapping[str, str]) -> str | None:
    """The client the request claims to be, before any of it is verified.

    Also refuses what authlib would mishandle or silently accept: Basic credentials that
    are not base64 of form-encoded UTF-8 (``basic_credentials``), a header with a space but
    nothing after the scheme (authlib's own Basic parsing, replaced here, raised a
    ValueError on it), an assertion nested too deep for ``json`` (a RecursionError
    there too), a form ``client_id`` other than the Basic credentials' id or the
    assertion's subject (authlib ignores it and authenticates the other; RFC 6749 2.3 and
    RFC 7521 4.2 say it MUST name the same client: ``invalid_request``), and several
    client authentication methods in one request (RFC 6749 2.3 allows exactly one). An id
    that is not printable ASCII, or an assertion whose payload is not UTF-8 JSON, claims no
    client: ``None``, as if none were given.
    """
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    in_form = [name for name in ("client_secret", "client_assertion") if name in form]
    if (authorization and in_form) or len(in_form) > 1:
        raise MalformedClientAuthentication(
            "invalid_request", "Use exactly one client authentication method."
        )
    if " " in authorization and len(authorization.split(None, 1)) < 2:
        raise MalformedClientAuthentication("invalid_client", "The Authorization header has no credentials.")
    if scheme.lower() == "basic":
        client_id = basic_credentials(credentials)[0]
        if "client_id" in form and form["client_id"] != client_id:
            # RFC 6749 2.3: one client authenticates, by one method; a client_id naming
            # another would otherwise be ignored, and the Basic client's token issued.
            raise MalformedClientAuthentication(
                "invalid_request", "The client_id is not the client the Basic credentials name."
            )
        return _claimed(client_id)
    if form.get("client_assertion_type") == ASSERTION_TYPE and form.get("client_assertion"):
        try:
            # Strictly UTF-8 (RFC 7519 7.2): json.loads of bytes would also take UTF-16 or
            # UTF-32, and skip a byte order mark, as joserfc and authlib do when they read
            # the payload again. A payload that is not UTF-8 claims no client, so nothing
            # is loaded for authlib's query_client to find, and no key verifies it.
            payload = json.loads(extract_compact(form["client_assertion"].encode()).payload.decode())
        except (JoseError, ValueError, UnicodeError):
            return None
        except RecursionError:
            # JSON nested too deep to parse (authlib would parse it again, and fail alike).
            raise MalformedClientAuthentication(
                "invalid_client", "The client assertion is not a JWT."
            ) from None
        subject = payload.get("sub") if isinstance(payload, dict) else None
        if "client_id" in form and form["client_id"] != subject:
            # RFC 7521 4.2: a client_id sent along MUST name the assertion's client. A
            # request that names two clients is malformed (RFC 6749 5.2), whichever holds.
            raise MalformedClientAuthentication(
                "invalid_request", "The client_id is not the client the client assertion names."
            )
        return _claimed(subject) if isinstance(subject, str) else None
    return _claimed(form.get("client_id") or "")


def basic_credentials(credentials: str) -> tuple[str, str]:
    """The client id and secret in Basic credentials: base64 of ``id:secret``, each
    application/x-www-form-urlencoded (RFC 6749 2.3.1), so a ``+`` is a space and
    ``%2B`` a plus. No colon: no secret."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        client_id, _, client_secret = decoded.partition(":")
        return unquote_plus(client_id, errors="strict"), unquote_plus(client_secret, errors="strict")
    except ValueError:
        # binascii.Error, UnicodeDecodeError (of the base64 or of a %-escape), and the
        # plain ValueError of non-ASCII text.
        raise MalformedClientAuthentication(
            "invalid_client", "The Basic credentials are not base64 UTF-8."
        ) from None


def _claimed(client_id: str) -> str | None:
    # An id no client can have claims no client: authlib then answers invalid_client.
    return client_id if client_id and plausible_client_id(client_id) else None


class TellonceAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, issuer: TokenIssuer, token_url: str, assertion_max_lifetime: int) -> None:
        super().__init__(scopes_supported=None)
        self.issuer = issuer
        self.token_url = token_url
        self.register_grant(TellonceClientCredentialsGrant)
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method("client_secret_basic", authenticate_by_basic)
        self.register_client_auth_method("client_secret_post", authenticate_by_post)
        # RFC 7523 3 allows the token endpoint URL or the issuer as the assertion audience;
        # draft-ietf-oauth-rfc7523bis would have the issuer alone. Both name this server,
        # and the README promises the token endpoint URL, so both are kept.
        audiences = [token_url, issuer.issuer]
        self.register_client_auth_method(
            JWT_METHOD, PrivateKeyJwtAuthentication(audiences, assertion_max_lifetime, self._seen_assertion)
        )

    # -- the framework adapter -------------------------------------------------------
    def query_client(self, client_id: str) -> RegisteredClient | None:
        # Never called outside create_token_response, which sets _prepared first.
        prepared: PreparedTokenRequest | None = getattr(self, "_prepared", None)
        if prepared is None or prepared.client is None or prepared.client.client_id != client_id:
            return None
        return prepared.client

    def _seen_assertion(self, assertion: SeenAssertion) -> None:
        prepared: PreparedTokenRequest | None = getattr(self, "_prepared", None)
        if prepared is not None:
            prepared.assertion = assertion

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Access tokens are self-contained JWTs; nothing is stored."""

    def create_oauth2_request(self, request: PreparedTokenRequest) -> FormRequest:
        # The issuer URL, not the Host header: behind TLS termination the request looks
        # like plain HTTP, and authlib refuses non-HTTPS URLs other than loopback.
        return FormRequest(self.token_url, request.headers, request.form)

    def create_json_request(self, request: PreparedTokenRequest) -> JsonRequest:
        return JsonRequest("POST", self.token_url, request.headers)

    def handle_error_response(self, request: OAuth2Request, error: OAuth2Error) -> JSONResponse:
        if isinstance(error, InvalidClientError) and not isinstance(error, AssertionRefused):
            # authlib's own words tell an unknown client ("does not exist") from a known one.
            error = InvalidClientError(description=CLIENT_AUTHENTICATION_FAILED)
        response: JSONResponse = super().handle_error_response(request, error)
        return response

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> JSONResponse:
        header_map = dict(headers)
        if isinstance(body, dict) and body.get("error") == "invalid_client":
            # RFC 6749 5.2 allows 401 for every failed client authentication; one status
            # for all of them tells an attacker nothing about which part was wrong.
            status = 401
            header_map.setdefault("WWW-Authenticate", 'Basic realm="tellonce"')
        # authlib's Cache-Control and Pragma are set again, with every other answer of the
        # endpoint's, by ``endpoints.never_cached``.
        header_map.pop("Content-Type", None)
        return JSONResponse(body, status_code=status, headers=header_map)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signals: the hooks authlib offers are not used."""

    # -- tokens --------------------------------------------------------------------------
    def _generate_token(
        self,
        grant_type: str,  # noqa: ARG002
        client: RegisteredClient,
        user: Any = None,  # noqa: ARG002
        scope: str | None = None,
        expires_in: int | None = None,  # noqa: ARG002
        include_refresh_token: bool = False,  # noqa: ARG002
    ) -> dict[str, Any]:
        granted = client.get_allowed_scope(scope) if scope else " ".join(sorted(client.allowed_scopes))
        return self.issuer.issue(
            client_id=client.client_id, department=client.department, roles=client.roles, scope=granted
        )

    def respond(self, prepared: PreparedTokenRequest) -> JSONResponse:
        self._prepared: PreparedTokenRequest | None = prepared
        try:
            response: JSONResponse = self.create_token_response(prepared)
        finally:
            self._prepared = None
        return response
