"""Typed errors of the crypto domain. None of them names a key, a value or a plaintext."""

from __future__ import annotations

from service.errors import Gone


class CryptoError(Exception):
    """Base of every crypto failure that is not a caller's refusal."""


class CiphertextIntegrityError(CryptoError):
    """A ciphertext was altered, truncated, or is presented under the wrong citizen,
    field, version or data key. Deliberately says nothing about which part failed."""

    def __init__(self, detail: str = "ciphertext failed its integrity check") -> None:
        super().__init__(detail)


class RootKeyUnavailable(CryptoError):
    """No root key is configured and this environment may not generate one."""


class KeyUnwrapError(CryptoError):
    """A wrapped key did not unwrap: wrong root key, tampered row, or a destroyed KEK."""


class NoDepartmentKeys(CryptoError):
    """A department-wide key operation named a department that has no keys yet."""


class UnknownDepartment(NoDepartmentKeys):
    """A department-wide key operation named a department the catalog in force does not
    know (and that has no keys either): a typo, most likely."""


class DataKeyMissing(CryptoError):
    """A value names a data key that does not exist (a corrupt or foreign row)."""


class DataKeyDestroyed(Gone):
    """The data key was destroyed by crypto-shredding: the values are gone for good."""

    title = "Erased"
    slug = "erased"

    def __init__(self, key_ids: list[int]) -> None:
        self.key_ids = key_ids
        super().__init__("the record was erased; its values can no longer be decrypted")


class CitizenShredded(Gone):
    """A write for a citizen whose keys were shredded: no new key is ever made for them."""

    title = "Erased"
    slug = "erased"

    def __init__(self) -> None:
        super().__init__("the record was erased; nothing can be written to it")
