"""Typed errors of the auth domain (problem+json, except where OAuth2 says otherwise)."""

from __future__ import annotations

from service.errors import NotFound, ServiceError, Unauthenticated


class InvalidToken(Unauthenticated):
    slug = "invalid-token"
    title = "Invalid access token"


class ClientNotFound(NotFound):
    slug = "client-not-found"
    title = "No such client"


class InvalidClientRegistration(ServiceError):
    status, title, slug = 422, "Invalid client registration", "invalid-client-registration"
