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


# What a secret is compared against when there is no stored hash (an unknown or disabled
# client, a client that signs in with a key): the refusal then costs one hash and one
# constant-time comparison, as a wrong secret does, so its time does not tell which client
# ids exist. It is the hash of a secret no one is given, and a match with it is refused.
_NO_SECRET_HASH = hash_secret(new_client_secret())


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, in the same time whether or not there
    is a stored hash (``None``: never a match)."""
    matches = hmac.compare_digest(hash_secret(secret), stored_hash or _NO_SECRET_HASH)
    return matches and stored_hash is not None
