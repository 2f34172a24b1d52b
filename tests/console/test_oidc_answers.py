"""Single sign-on against a provider played by ``httpx.MockTransport``: the relying party
(``console/oidc.py``) finishes a sign-in when the provider keeps to OpenID Connect, and
turns every answer it cannot use into an ``OidcError`` (a page saying so), never another
exception (a server error). And the settings: single sign-on is configured whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from pydantic import SecretStr, ValidationError

from service.console.config import ConsoleSettings
from service.console.oidc import OidcError, OidcSignIn, _derive

CLIENT_ID = "tellonce-console"
PRE_TOKEN = "the-browser-cookie-token"
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "provider-key-1"})
ROLE_MAP = "claim: groups\nrules:\n  - {group: register-owners, department: register, role: data-owner}\n"


class Provider:
    """A provider at ``https://id.example``: discovery, keys and a token endpoint whose
    ID token names ``issuer``; each answer can be replaced by raw bytes."""

    def __init__(self, issuer: str, **replaced: bytes) -> None:
        self.issuer = issuer
        self.replaced = replaced
        self.asked: list[str] = []
        # The key it signs with and publishes; a test rotates it by replacing it.
        self.key = SIGNING_KEY
        # Claims added to (or replacing those of) the ID token it issues.
        self.extra_claims: dict[str, Any] = {}

    def id_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "ada",
            "iat": now,
            "exp": now + 300,
            "nonce": _derive(PRE_TOKEN, "nonce"),
            "groups": ["register-owners"],
            "name": "Ada Lovelace",
            **self.extra_claims,
        }
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.asked.append(path)
        answers: dict[str, Any] = {
            "/.well-known/openid-configuration": {
                "issuer": self.issuer,
                "authorization_endpoint": "https://id.example/authorize",
                "token_endpoint": "https://id.example/token",
                "jwks_uri": "https://id.example/jwks",
            },
            "/jwks": KeySet([self.key]).as_dict(private=False),
            "/token": {"id_token": self.id_token(), "access_token": "at", "token_type": "Bearer"},
        }
        name = path.strip("/").replace(".well-known/openid-configuration", "discovery")
        if name in self.replaced:
            return httpx.Response(200, content=self.replaced[name])
        if path not in answers:
            return httpx.Response(404)
        return httpx.Response(200, content=json.dumps(answers[path]).encode())


def relying_party(tmp_path: Path, issuer: str, provider: Provider) -> OidcSignIn:
    role_map = tmp_path / "roles.yaml"
    role_map.write_text(ROLE_MAP)
    settings = ConsoleSettings(
        oidc_issuer=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=SecretStr("console-secret-for-tests-only"),
        oidc_role_map=role_map,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(provider))
    return OidcSignIn(settings, "https://tellonce.example", http=http)


class TestTheIssuer:
    @pytest.mark.parametrize("issuer", ["https://id.example", "https://id.example/"])
    async def test_an_issuer_is_matched_exactly_as_configured(self, tmp_path: Path, issuer: str) -> None:
        """Some providers' issuer ends with "/" (Auth0's does): the discovery document and
        the ID token carry it so, and OpenID Connect compares it exactly."""
        provider = Provider(issuer)
        signed_in = relying_party(tmp_path, issuer, provider)
        try:
            identity = await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()
        assert (identity.subject, identity.department, identity.roles) == ("ada", "register", {"data-owner"})
        # The well-known path is appended once the terminating "/" is removed (Discovery 4).
        assert provider.asked[0] == "/.well-known/openid-configuration"

    async def test_a_provider_describing_another_issuer_is_refused(self, tmp_path: Path) -> None:
        provider = Provider("https://id.example/")
        signed_in = relying_party(tmp_path, "https://id.example", provider)
        try:
            with pytest.raises(OidcError, match="describes another issuer"):
                await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()


class TestAudience:
    @pytest.mark.parametrize(
        ("claims", "accepted"),
        [
            ({"azp": CLIENT_ID}, True),
            ({"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID}, True),
            ({"aud": [CLIENT_ID, "another-client"]}, False),
            # One audience, ours, but issued to another client (Core 3.1.3.7, step 5).
            ({"azp": "another-client"}, False),
        ],
    )
    async def test_the_token_must_have_been_issued_to_the_console(
        self, tmp_path: Path, claims: dict[str, Any], accepted: bool
    ) -> None:
        provider = Provider("https://id.example")
        provider.extra_claims = claims
        signed_in = relying_party(tmp_path, "https://id.example", provider)
        try:
            if accepted:
                assert (await signed_in.finish(PRE_TOKEN, "the-code")).subject == "ada"
            else:
                with pytest.raises(OidcError, match="could not be verified"):
                    await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()


class TestKeyRotation:
    async def test_an_id_token_signed_with_a_key_published_since_is_accepted(self, tmp_path: Path) -> None:
        """The provider rotated its signing key after the console fetched its keys: the
        keys are fetched again (OIDC Core 10.1.1) rather than every sign-in refused until
        the cached ones go stale."""
        provider = Provider("https://id.example")
        signed_in = relying_party(tmp_path, "https://id.example", provider)
        try:
            await signed_in.metadata()
            provider.key = RSAKey.generate_key(2048, parameters={"kid": "provider-key-2"})
            identity = await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()
        assert identity.subject == "ada"
        assert provider.asked.count("/jwks") == 2

    async def test_keys_are_not_fetched_again_for_a_key_already_known(self, tmp_path: Path) -> None:
        provider = Provider("https://id.example")
        signed_in = relying_party(tmp_path, "https://id.example", provider)
        try:
            await signed_in.finish(PRE_TOKEN, "the-code")
            await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()
        assert provider.asked.count("/jwks") == 1


class TestAnswersItCannotUse:
    @pytest.mark.parametrize(
        ("answer", "body"),
        [
            ("discovery", b"<html>Service unavailable</html>"),
            ("discovery", b"[1, 2]"),
            ("discovery", b'{"issuer": "https://id.example", "jwks_uri": "https://id.example/jwks"}'),
            ("jwks", b"<html>Service unavailable</html>"),
            ("jwks", b"[1, 2]"),
            ("jwks", b"{}"),
            ("jwks", b'{"keys": [{"kty": "RSA"}]}'),
            ("jwks", b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "!", "y": "!"}]}'),
            ("token", b"<html>Service unavailable</html>"),
            ("token", b'["not", "an", "object"]'),
            ("token", b"\xff\xfe"),
        ],
    )
    async def test_an_answer_that_is_not_what_openid_connect_says_is_an_oidc_error(
        self, tmp_path: Path, answer: str, body: bytes
    ) -> None:
        """The callback shows an ``OidcError`` as a page; any other exception was a 500."""
        issuer = "https://id.example"
        signed_in = relying_party(tmp_path, issuer, Provider(issuer, **{answer: body}))
        try:
            with pytest.raises(OidcError):
                await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()


class TestIncompleteSettings:
    """Single sign-on is configured whole or not at all: with the issuer alone the sign-in
    page offered it and every attempt was a 500."""

    @pytest.mark.parametrize("missing", ["oidc_client_id", "oidc_client_secret", "oidc_role_map"])
    def test_a_missing_setting_is_refused_by_name(self, tmp_path: Path, missing: str) -> None:
        role_map = tmp_path / "roles.yaml"
        role_map.write_text(ROLE_MAP)
        given: dict[str, Any] = {
            "oidc_issuer": "https://id.example",
            "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": SecretStr("console-secret-for-tests-only"),
            "oidc_role_map": role_map,
        }
        del given[missing]
        with pytest.raises(ValidationError, match=f"TELLONCE_CONSOLE_{missing.upper()}") as refused:
            ConsoleSettings(**given)
        # The refusal names what is missing and never echoes what was given.
        assert "console-secret-for-tests-only" not in str(refused.value)
        assert "id.example" not in str(refused.value)

    def test_a_role_map_that_does_not_read_is_refused(self, tmp_path: Path) -> None:
        role_map = tmp_path / "roles.yaml"
        role_map.write_text("claim: groups\n")
        with pytest.raises(ValidationError, match="not a valid console role map"):
            ConsoleSettings(
                oidc_issuer="https://id.example",
                oidc_client_id=CLIENT_ID,
                oidc_client_secret=SecretStr("console-secret-for-tests-only"),
                oidc_role_map=role_map,
            )

    def test_serve_refuses_to_start_with_one_line(self, tmp_path: Path) -> None:
        env = {
            **os.environ,
            "TELLONCE_DATA_DIR": str(tmp_path / "data"),
            "TELLONCE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tellonce.db'}",
            "TELLONCE_CONSOLE_OIDC_ISSUER": "https://id.example",
            "TELLONCE_CONSOLE_OIDC_CLIENT_SECRET": "console-secret-7f3a",
        }
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--port", "1"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("tellonce: invalid settings: ")
        assert "TELLONCE_CONSOLE_OIDC_CLIENT_ID" in line
        assert "TELLONCE_CONSOLE_OIDC_ROLE_MAP" in line
        assert "console-secret-7f3a" not in result.stderr


class TestEndpoints:
    """Every endpoint in the discovery document is an absolute HTTPS address (HTTP only
    when the configured issuer is itself HTTP, as on loopback for development)."""

    @pytest.mark.parametrize(
        "changed",
        [
            {"token_endpoint": "http://id.example/token"},
            {"jwks_uri": "http://id.example/jwks"},
            {"authorization_endpoint": "http://id.example/authorize"},
            {"userinfo_endpoint": "http://id.example/userinfo"},
            {"end_session_endpoint": "javascript:alert(1)"},
            {"token_endpoint": "/token"},
        ],
        ids=repr,
    )
    async def test_an_endpoint_that_would_leave_https_is_refused(
        self, tmp_path: Path, changed: dict[str, str]
    ) -> None:
        """A plain-HTTP token endpoint would be sent the client secret and the code in clear."""
        issuer = "https://id.example"
        described = {
            "issuer": issuer,
            "authorization_endpoint": "https://id.example/authorize",
            "token_endpoint": "https://id.example/token",
            "jwks_uri": "https://id.example/jwks",
            **changed,
        }
        provider = Provider(issuer, discovery=json.dumps(described).encode())
        signed_in = relying_party(tmp_path, issuer, provider)
        try:
            with pytest.raises(OidcError, match="description could not be read"):
                await signed_in.finish(PRE_TOKEN, "the-code")
        finally:
            await signed_in.aclose()
        assert provider.asked == ["/.well-known/openid-configuration"]

    async def test_an_optional_endpoint_given_as_null_is_absent(self, tmp_path: Path) -> None:
        issuer = "https://id.example"
        described = {
            "issuer": issuer,
            "authorization_endpoint": "https://id.example/authorize",
            "token_endpoint": "https://id.example/token",
            "jwks_uri": "https://id.example/jwks",
            "userinfo_endpoint": None,
            "end_session_endpoint": None,
        }
        provider = Provider(issuer, discovery=json.dumps(described).encode())
        signed_in = relying_party(tmp_path, issuer, provider)
        try:
            assert (await signed_in.finish(PRE_TOKEN, "the-code")).subject == "ada"
            assert await signed_in.sign_out_url() is None
        finally:
            await signed_in.aclose()
