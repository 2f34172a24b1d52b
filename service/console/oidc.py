"""Console sign-in with the organisation's OpenID provider: authorization code flow with
PKCE (S256, authlib's challenge) and a nonce; the ID token's signature and claims are
checked with joserfc (authlib's JOSE library; ``authlib.jose`` is deprecated).

No server-side state is kept for a sign-in in flight. ``state``, ``nonce`` and the PKCE
``code_verifier`` are HMACs keyed with the ``tellonce_console_oidc`` cookie, a token of
32 random bytes made for each sign-in by ``/console/oidc/start`` (HttpOnly, SameSite=Lax;
over https ``__Host-`` named, Secure and for ``/``, over plain http path ``/console/oidc``;
``web.set_cookie``), so only the browser that started the sign-in can finish it, and
a forged callback (login CSRF) fails the constant-time ``state`` check. The console path
to return to rides in ``state``, covered by the same HMAC.

Who may sign in, and as what, is the claim-to-role mapping file
(``TELLONCE_CONSOLE_OIDC_ROLE_MAP``): the first rule whose group appears in the user's
group claim names the department; every rule for that department and the user's groups
adds its role.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.console.config import ConsoleSettings
from service.sourcefile import SourceFileError, read_yaml

ConsoleRole = Literal["data-owner", "auditor", "citizen-portal"]
CALLBACK_PATH = "/console/oidc/callback"
# Console sessions of people signed in by the provider name them so; they have no client row.
OIDC_CLIENT_PREFIX = "oidc:"
_LABEL = b"tellonce console oidc v1 "
# Asymmetric signatures only: "none" and HMAC (keyed with the client secret) are refused.
ID_TOKEN_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
# What a discovery document must name for the code flow (OIDC Discovery 3).
_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
# Endpoints a discovery document may name besides those; each must be an address too.
_OPTIONAL_ENDPOINTS = ("userinfo_endpoint", "end_session_endpoint")
# Discovery documents and signing keys are kept this long before they are fetched again.
METADATA_TTL_SECONDS = 300.0
# Each exchange with the provider as a whole (connecting, asking, every byte of the answer)
# takes at most this long, and its answer (as decoded) at most this many bytes: a provider
# that never answers, drips its answer or sends one without end cannot hold a worker or
# fill its memory. (httpx's own timeout bounds each read, not the exchange.)
FETCH_SECONDS = 10.0
ANSWER_BYTES = 1024 * 1024


class OidcError(Exception):
    """A sign-in that cannot finish; the message is safe to show."""


class RoleRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = Field(min_length=1)
    department: str = Field(min_length=1, max_length=63)
    role: ConsoleRole


class RoleMap(BaseModel):
    """The claim-to-role mapping file."""

    model_config = ConfigDict(extra="forbid")

    claim: str = "groups"
    rules: list[RoleRule] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> RoleMap:
        """The role map in ``path``, read as policy files are (``read_yaml``: a file that
        cannot be read, a character YAML does not allow, anchors and aliases, nesting past
        ``MAX_DEPTH`` are each ``FILE:LINE: message``); ``ValueError`` saying why not."""
        try:
            return cls.model_validate(read_yaml(path).data)
        except SourceFileError as exc:
            problems = "; ".join(str(error) for error in exc.errors)
            raise ValueError(f"{path}: not a valid console role map ({problems})") from None
        except ValidationError as exc:
            raise ValueError(f"{path}: not a valid console role map ({exc})") from None

    def grant(self, claims: dict[str, Any]) -> tuple[str, set[str]] | None:
        """(department, roles) for a user's claims, or None if no rule matches."""
        value = claims.get(self.claim)
        # A group name, or a list of them; any other JSON (a number, an object) names none.
        if isinstance(value, str):
            groups = {value}
        elif isinstance(value, list):
            groups = {g for g in value if isinstance(g, str)}
        else:
            groups = set()
        department = next((rule.department for rule in self.rules if rule.group in groups), None)
        if department is None:
            return None
        roles: set[str] = {r.role for r in self.rules if r.department == department and r.group in groups}
        return department, roles


@dataclass(frozen=True)
class Identity:
    subject: str
    department: str
    roles: set[str]
    name: str

    @property
    def client_id(self) -> str:
        """What the audit records as the console user: the provider's subject."""
        label = OIDC_CLIENT_PREFIX + self.subject
        if len(label) <= 64:
            return label
        return OIDC_CLIENT_PREFIX + hashlib.sha256(self.subject.encode()).hexdigest()[:59]


@dataclass(frozen=True)
class _Answer:
    """What the provider answered, read whole within the limits."""

    status_code: int
    content: bytes


def _json_object(answer: _Answer) -> dict[str, Any]:
    """The JSON object a provider answered; an ``OidcError`` for anything else (an HTML
    error page, a list), which would otherwise fail later as a server error."""
    try:
        found = json.loads(answer.content)
    except ValueError:  # not JSON, or not UTF-8
        found = None
    if not isinstance(found, dict):
        raise OidcError("The sign-in service's answer could not be read; try again shortly.")
    return found


def _shown_name(claims: dict[str, Any], subject: str) -> str:
    """What the sign-in page calls the person: their name or email address as the provider
    gives it, without control characters and at most 200 characters; else the subject."""
    for claim in ("name", "email"):
        value = claims.get(claim)
        shown = "".join(c for c in value if c.isprintable())[:200].strip() if isinstance(value, str) else ""
        if shown:
            return shown
    return subject


def _derive(pre_token: str, purpose: str) -> str:
    digest = hmac.new(pre_token.encode(), _LABEL + purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_state(pre_token: str, next_path: str) -> str:
    encoded = base64.urlsafe_b64encode(next_path.encode()).rstrip(b"=").decode()
    return f"{_derive(pre_token, 'state ' + next_path)}.{encoded}"


def check_state(pre_token: str | None, state: str | None) -> str:
    """The console path carried by ``state`` if this browser started the sign-in."""
    if not pre_token or not state or "." not in state or len(state) > 2048:
        raise OidcError("This sign-in was not started in this browser, or it has expired.")
    mac, encoded = state.split(".", 1)
    try:
        next_path = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise OidcError("This sign-in was not started in this browser, or it has expired.") from None
    # Compared as bytes: compare_digest refuses a str with non-ASCII characters (TypeError).
    if not hmac.compare_digest(mac.encode(), _derive(pre_token, "state " + next_path).encode()):
        raise OidcError("This sign-in was not started in this browser, or it has expired.")
    return next_path


class OidcSignIn:
    """The console's relying party for one provider."""

    def __init__(
        self, settings: ConsoleSettings, public_url: str, http: httpx.AsyncClient | None = None
    ) -> None:
        if not (settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret):
            raise ValueError("OIDC needs TELLONCE_CONSOLE_OIDC_ISSUER, _CLIENT_ID and _CLIENT_SECRET")
        if settings.oidc_role_map is None:
            raise ValueError("OIDC needs TELLONCE_CONSOLE_OIDC_ROLE_MAP (the claim-to-role mapping file)")
        # Compared exactly with the discovery document's issuer and the ID token's iss (OIDC
        # Discovery 4.3, Core 3.1.3.7), so kept as configured: some providers end it with "/".
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self._secret = settings.oidc_client_secret.get_secret_value()
        self.scopes = settings.oidc_scopes
        self.role_map = RoleMap.load(settings.oidc_role_map)
        self.redirect_uri = public_url.rstrip("/") + CALLBACK_PATH
        self.sign_out_return = public_url.rstrip("/") + "/console/sign-in?signed_out=1"
        self.http = http or httpx.AsyncClient(timeout=10.0, follow_redirects=False, trust_env=False)
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self.fetch_seconds = FETCH_SECONDS
        self.answer_bytes = ANSWER_BYTES

    def __repr__(self) -> str:
        return f"OidcSignIn(issuer={self.issuer!r}, client_id={self.client_id!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _fetch(self, method: str, url: str, **sent: Any) -> _Answer:
        """One exchange with the provider, bounded as a whole: ``fetch_seconds`` from
        asking to the answer's last byte, ``answer_bytes`` of answer (after any
        ``Content-Encoding`` is undone, so a small compressed body cannot grow past it);
        an ``OidcError`` otherwise, as for a provider that cannot be reached."""
        try:
            async with asyncio.timeout(self.fetch_seconds):
                async with self.http.stream(method, url, **sent) as answer:
                    content = bytearray()
                    async for chunk in answer.aiter_bytes():
                        content += chunk
                        if len(content) > self.answer_bytes:
                            raise OidcError(
                                "The sign-in service's answer could not be read; try again shortly."
                            )
        # InvalidURL is no HTTPError; endpoints are checked when the description is read.
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError):
            raise OidcError("The sign-in service cannot be reached; try again shortly.") from None
        return _Answer(answer.status_code, bytes(content))

    def _is_endpoint(self, value: Any) -> bool:
        """An absolute address with a host, by HTTPS (or by HTTP when the configured issuer
        is, as on loopback for development): not a relative path, not ``javascript:``, and
        no downgrade from an HTTPS issuer to plain HTTP."""
        if not isinstance(value, str):
            return False
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            return False
        schemes = {"https", "http"} if self.issuer.startswith("http://") else {"https"}
        return url.scheme in schemes and bool(url.host)

    async def metadata(self, *, refresh: bool = False) -> dict[str, Any]:
        if refresh or self._metadata is None or time.monotonic() - self._fetched_at > METADATA_TTL_SECONDS:
            # A terminating "/" is removed before the well-known path is appended (Discovery 4).
            found = await self._fetch("GET", f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
            if not 200 <= found.status_code < 300:
                raise OidcError("The sign-in service cannot be reached; try again shortly.")
            metadata = _json_object(found)
            if not all(self._is_endpoint(metadata.get(name)) for name in _ENDPOINTS) or not all(
                self._is_endpoint(metadata[name])
                for name in _OPTIONAL_ENDPOINTS
                if metadata.get(name) is not None  # null is as good as absent
            ):
                raise OidcError("The sign-in service's description could not be read.")
            if metadata.get("issuer") != self.issuer:
                raise OidcError("The sign-in service describes another issuer.")
            # Not followed if it redirects: the keys are where the description says.
            keys = await self._fetch("GET", str(metadata["jwks_uri"]))
            if not 200 <= keys.status_code < 300:
                raise OidcError("The sign-in service cannot be reached; try again shortly.")
            published: Any = _json_object(keys)  # checked by joserfc as it imports them
            try:
                key_set = KeySet.import_key_set(published)
            except (JoseError, ValueError, TypeError, KeyError, AttributeError):
                raise OidcError("The sign-in service's signing keys could not be read.") from None
            self._metadata, self._keys = metadata, key_set
            self._fetched_at = time.monotonic()
        return self._metadata

    async def authorization_url(self, pre_token: str, next_path: str) -> str:
        metadata = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scopes,
            "state": make_state(pre_token, next_path),
            "nonce": _derive(pre_token, "nonce"),
            "code_challenge": create_s256_code_challenge(_derive(pre_token, "pkce")),
            "code_challenge_method": "S256",
        }
        return f"{metadata['authorization_endpoint']}?{urlencode(query)}"

    async def finish(self, pre_token: str, code: str, *, issuer: str | None = None) -> Identity:
        """Check the answer's ``issuer`` (its ``iss``, None if it named none), exchange the
        code (with the PKCE verifier), check the ID token, map the groups."""
        metadata = await self.metadata()
        # RFC 9207 (2.4): an answer naming another issuer is not our provider's (a mix-up);
        # nor, from a provider that says it names itself, is one naming none.
        names_itself = metadata.get("authorization_response_iss_parameter_supported") is True
        if (issuer is not None and issuer != self.issuer) or (issuer is None and names_itself):
            raise OidcError("The sign-in service's answer could not be verified; start again.")
        answer = await self._fetch(
            "POST",
            str(metadata["token_endpoint"]),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": _derive(pre_token, "pkce"),
            },
            auth=(self.client_id, self._secret),
        )
        if answer.status_code != 200:
            raise OidcError("The sign-in service refused the sign-in; start again.")
        tokens = _json_object(answer)
        # A Bearer token, as OIDC Core 3.1.3.3 requires (RFC 6749 5.1: compared without
        # case); another type is not to be sent to the userinfo endpoint as one.
        token_type = tokens.get("token_type")
        if not (isinstance(token_type, str) and token_type.lower() == "bearer"):
            raise OidcError("The sign-in service's answer could not be verified; start again.")
        id_token = str(tokens.get("id_token") or "")
        if not self._knows_signing_key(id_token):
            # A key the provider published after ours were fetched (it rotated its keys):
            # fetch them again now rather than refuse sign-ins until they go stale
            # (OIDC Core 10.1.1).
            metadata = await self.metadata(refresh=True)
        claims = self._id_token_claims(id_token, _derive(pre_token, "nonce"))
        if self.role_map.claim not in claims and metadata.get("userinfo_endpoint") is not None:
            claims = {
                **(await self._userinfo(metadata, str(tokens.get("access_token") or ""), claims)),
                **claims,
            }
        granted = self.role_map.grant(claims)
        if granted is None:
            raise OidcError("Your account is not given a role in the console. Ask your administrator.")
        department, roles = granted
        subject = str(claims["sub"])  # a string: joserfc refuses any other
        # At most 255 characters (OIDC Core 2), none a control or format character: the
        # audit and every page name the person by it, and PostgreSQL's text keeps no NUL.
        if not 0 < len(subject) <= 255 or not subject.isprintable():
            raise OidcError("The sign-in service's answer could not be verified; start again.")
        return Identity(
            subject=subject, department=department, roles=roles, name=_shown_name(claims, subject)
        )

    def _knows_signing_key(self, id_token: str) -> bool:
        """False when the ID token names a key (``kid``) the fetched key set lacks."""
        try:
            kid = jws.extract_compact(id_token.encode()).headers().get("kid")
        except (JoseError, ValueError):
            return True  # refused by the full check, which gives the reason
        return kid is None or self._keys is None or any(key.kid == kid for key in self._keys.keys)

    def _id_token_claims(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims if the provider signed it for us, now, for this sign-in."""
        registry = jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            if self._keys is None:
                raise ValueError("no signing keys")
            token = jwt.decode(id_token, self._keys, algorithms=ID_TOKEN_ALGORITHMS)
            registry.validate(token.claims)
        except (JoseError, ValueError):
            raise OidcError("The sign-in service's answer could not be verified; start again.") from None
        claims = dict(token.claims)
        audience = claims["aud"]
        several = isinstance(audience, list) and len(audience) > 1
        # With several audiences, or an authorized party named at all, the token must have
        # been issued to us (OIDC Core 3.1.3.7, steps 4 and 5).
        if (several or "azp" in claims) and claims.get("azp") != self.client_id:
            raise OidcError("The sign-in service's answer could not be verified; start again.")
        return claims

    async def _userinfo(
        self, metadata: dict[str, Any], access_token: str, claims: dict[str, Any]
    ) -> dict[str, Any]:
        answer = await self._fetch(
            "GET", str(metadata["userinfo_endpoint"]), headers={"Authorization": f"Bearer {access_token}"}
        )
        info = _json_object(answer) if answer.status_code == 200 else {}
        if info.get("sub") != claims.get("sub"):
            raise OidcError("The sign-in service's answer could not be verified; start again.")
        return info

    async def sign_out_url(self) -> str | None:
        """The provider's end-session address (RP-initiated logout), if it has one."""
        try:
            metadata = await self.metadata()
        except OidcError:
            return None
        endpoint = metadata.get("end_session_endpoint")
        if not endpoint:
            return None
        query = {"client_id": self.client_id, "post_logout_redirect_uri": self.sign_out_return}
        return f"{endpoint}?{urlencode(query)}"
