"""tellonce-client: a typed async client for the tellonce v1 API."""

from tellonce_client.auth import ClientSecret, PrivateKeyJwt, TokenSource
from tellonce_client.client import RetryPolicy, TellonceClient, etag_of, retry_after_seconds
from tellonce_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    InvalidResponse,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    RateLimited,
    ResponseTimeout,
    ResponseTooLarge,
    TellonceError,
    TokenError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from tellonce_client.proofs import ProofError, VerifierKey, open_checkpoint, verify_checkpoints, verify_entry
from tellonce_client.webhooks import WebhookVerificationError, WebhookVerifier

__all__ = [
    "ApiError",
    "BadRequest",
    "ClientSecret",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidResponse",
    "NotFound",
    "PreconditionFailed",
    "PreconditionRequired",
    "PrivateKeyJwt",
    "ProofError",
    "RateLimited",
    "ResponseTimeout",
    "ResponseTooLarge",
    "RetryPolicy",
    "TellonceClient",
    "TellonceError",
    "TokenError",
    "TokenSource",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "VerifierKey",
    "WebhookVerificationError",
    "WebhookVerifier",
    "etag_of",
    "open_checkpoint",
    "retry_after_seconds",
    "verify_checkpoints",
    "verify_entry",
]
