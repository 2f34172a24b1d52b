"""``KeyMaterial``: secret bytes that never show themselves in repr, str, logs or pickles."""

from __future__ import annotations

import hmac
from typing import NoReturn


class KeyMaterial:
    """Secret key bytes. ``reveal()`` is the one explicit way to read them."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = bytes(secret)

    def reveal(self) -> bytes:
        return self._secret

    def __len__(self) -> int:
        return len(self._secret)

    def __repr__(self) -> str:
        return f"KeyMaterial(<{len(self._secret)} bytes hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant time, so equality checks never become a timing oracle.
        if not isinstance(other, KeyMaterial):
            return NotImplemented
        return hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        raise TypeError("key material is not hashable")

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the secret into caches, queues or crash dumps.
        raise TypeError("key material cannot be pickled")

    def __format__(self, spec: str) -> str:
        return repr(self)
