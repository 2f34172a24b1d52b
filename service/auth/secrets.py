"""Client identifiers and secrets.

A secret is 32 random bytes from the OS CSPRNG. A 256-bit random value cannot be
guessed or found by a dictionary, so a slow password KDF buys nothing here: a single
SHA-256 is enough to make a stolen hash useless, and it keeps the token endpoint fast.
Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _random

# The form of every id ``new_client_id`` issues.
_ISSUED_ID = re.compile(r"tc_[A-Za-z0-9_-]{24}")


def new_client_id() -> str:
    return "tc_" + _random.token_urlsafe(18)


def loggable_client_id(claimed: str) -> str:
    """A claimed client id as logs and the sign-in failure counts may keep it: as it is
    when it has the form of an issued id, otherwise a digest of it. Someone may paste a
    secret into the client id box; it must not be written anywhere, but repeats of the
    same wrong text still count together."""
    if _ISSUED_ID.fullmatch(claimed):
        return claimed
    return "sha256:" + hashlib.sha256(claimed.encode()).hexdigest()[:32]


def new_client_secret() -> str:
    return _random.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    if stored_hash is None:
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)
