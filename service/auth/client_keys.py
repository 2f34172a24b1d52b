"""The public keys ``private_key_jwt`` clients authenticate with: which are acceptable.

One rule, applied when a client is registered (``auth.service.check_public_jwk``) and
again each time its key verifies an assertion (``auth.server``), so that a key registered
before a rule tightened stops authenticating instead of staying trusted for ever.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from joserfc import jwk
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

# The algorithms a private_key_jwt assertion may be signed with, for the kinds of key a
# client may register (EC P-256, OKP, RSA). Asymmetric only: never HS* (the public key
# would be taken as an HMAC secret) or none. The server metadata says the same. Ed25519 is
# RFC 9864's fully-specified name for EdDSA over that curve.
ASSERTION_ALGORITHMS = ["ES256", "EdDSA", "Ed25519", "RS256", "PS256"]
PUBLIC_KEY_TYPES = {"EC", "OKP", "RSA"}
# The kind of key each of those algorithms verifies with.
ALGORITHM_KEY_TYPES = {"ES256": "EC", "EdDSA": "OKP", "Ed25519": "OKP", "RS256": "RSA", "PS256": "RSA"}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
# RFC 7518 3.3: RS256 and PS256 keys MUST be at least this long.
MIN_RSA_BITS = 2048
# The curves an assertion algorithm the token endpoint accepts (``ASSERTION_ALGORITHMS``)
# verifies with: ES256 takes P-256, EdDSA takes Ed25519 and Ed448.
SIGNING_CURVES = {"EC": {"P-256"}, "OKP": {"Ed25519", "Ed448"}}


class UnusableKey(ValueError):
    """A JWK that is not a public key an accepted assertion can be verified with; the
    message says why, and never holds key material."""


def signing_key(document: object) -> Key:
    """The key ``document`` describes, if it is a public JWK (EC, OKP or RSA) an accepted
    assertion can be verified with; ``UnusableKey`` for private keys, RSA keys under
    ``MIN_RSA_BITS``, other curves, keys not for verifying signatures, and junk."""
    if not isinstance(document, dict):
        raise UnusableKey("The JWK must be a JSON object.")
    if PRIVATE_MEMBERS & document.keys():
        raise UnusableKey("The JWK contains private key material; register the public key.")
    if document.get("kty") not in PUBLIC_KEY_TYPES:
        raise UnusableKey("The JWK must be an EC, OKP or RSA public key.")
    try:
        with warnings.catch_warnings(action="ignore", category=SecurityWarning):
            # joserfc only warns of a short RSA key; it is refused just below.
            key = jwk.import_key(document)
    except (JoseError, ValueError, TypeError, KeyError):
        raise UnusableKey("The JWK is not a valid public key.") from None
    if isinstance(key, RSAKey) and key.raw_value.key_size < MIN_RSA_BITS:
        raise UnusableKey(f"An RSA key must have at least {MIN_RSA_BITS} bits (RFC 7518 3.3).")
    # A key no accepted assertion can be verified with would register a client that can
    # never get a token; joserfc honours the key's own use, key_ops and alg.
    curves = SIGNING_CURVES.get(document["kty"])
    if curves is not None and document.get("crv") not in curves:
        raise UnusableKey(f"An {document['kty']} key must be on {' or '.join(sorted(curves))}.")
    if document.get("use", "sig") != "sig" or "verify" not in document.get("key_ops", ["verify"]):
        raise UnusableKey("The JWK must be usable to verify signatures (use sig, key_ops verify).")
    if document.get("alg", ASSERTION_ALGORITHMS[0]) not in ASSERTION_ALGORITHMS:
        raise UnusableKey(f"The JWK's alg must be one of {', '.join(ASSERTION_ALGORITHMS)}.")
    return key


def check(document: object) -> dict[str, Any]:
    """``document``, once ``signing_key`` accepts it."""
    if not isinstance(document, dict):
        raise UnusableKey("The JWK must be a JSON object.")
    signing_key(document)
    return document


@functools.cache
def stand_in_jwk(key_type: str) -> dict[str, Any]:
    """A public JWK of ``key_type`` (EC P-256, OKP Ed25519 or RSA) whose private half was
    never kept: what an assertion is verified against when no client's key can verify it
    (``auth.server.StandInClient``). Made once per process and kind."""
    made: Key
    if key_type == "RSA":
        made = RSAKey.generate_key(MIN_RSA_BITS, private=True)
    elif key_type == "OKP":
        made = OKPKey.generate_key("Ed25519", private=True)
    else:
        made = ECKey.generate_key("P-256", private=True)
    public: dict[str, Any] = made.as_dict(private=False)
    return public
