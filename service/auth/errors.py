"""Typed errors of the auth domain (problem+json, except where OAuth2 says otherwise)."""

from __future__ import annotations

from service.errors import NotFound, ServiceError, ServiceUnavailable, Unauthenticated


class InvalidToken(Unauthenticated):
    slug = "invalid-token"
    title = "Invalid access token"


class ClientNotFound(NotFound):
    slug = "client-not-found"
    title = "No such client"


class InvalidClientRegistration(ServiceError):
    status, title, slug = 422, "Invalid client registration", "invalid-client-registration"


class SigningKeysUnusable(ServiceUnavailable):
    """A running server re-read its access-token signing keys and refused them: a key file
    open to other accounts, missing or unreadable, or a key file or the manifest that cannot
    be parsed. The operator's key setup fails closed (nothing is signed or served from the
    keys) until the files are fixed; the detail names the problem, never a path or key
    material (the log has the path)."""

    title, slug = "Signing keys unusable", "signing-keys-unusable"
