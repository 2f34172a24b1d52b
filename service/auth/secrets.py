"""Client identifiers and secrets.

A secret is 32 random bytes from the OS CSPRNG. A 256-bit random value cannot be
guessed or found by a dictionary, so a slow password KDF buys nothing here: a single
SHA-256 is enough to make a stolen hash useless, and it keeps the token endpoint fast.
Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random


def new_client_id() -> str:
    return "tc_" + _random.token_urlsafe(18)


def new_client_secret() -> str:
    return _random.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    if stored_hash is None:
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)
