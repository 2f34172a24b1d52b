"""The catalog: departments, purposes, and fields each with exactly one owner."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.policy.signing import OwnerVerifier, SigningKeyError

IDENTIFIER_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
FIELD_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME_PATTERN)]
# A purpose a request states: the id of one of the catalog's purposes.
PurposeId = Identifier
# For a dict keyed by field names: pydantic describes one with ``patternProperties`` alone,
# which in JSON Schema lets a key that is not a field name through; the model refuses it.
KEYED_BY_FIELD = Field(json_schema_extra={"additionalProperties": False})
FieldType = Literal["string", "date", "integer", "boolean", "enum"]
Classification = Literal["public", "personal", "sensitive", "special-category"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Department(_Strict):
    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    # The owner's C2SP Ed25519 verifier key: with one, every agreement granting this
    # department's fields must carry its signature (see ``service/policy/signing.py``).
    signing_key: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _signing_key_is_this_departments(self) -> Department:
        if self.signing_key is not None:
            try:
                OwnerVerifier.parse(self.signing_key, self.id)
            except SigningKeyError as exc:
                raise ValueError(f"signing_key: {exc}") from None
        return self


class Purpose(_Strict):
    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    description: str = ""


class FieldSpec(_Strict):
    name: FieldName
    owner: Identifier
    type: FieldType
    classification: Classification = "personal"
    # Searchable fields keep a blind index so they can be matched without decryption.
    searchable: bool = False
    max_length: int | None = Field(default=None, ge=1, le=100_000)
    values: list[str] | None = None
    # The field whose write marks a citizen deceased (at most one per catalog).
    marks_death: bool = False
    description: str = ""


class Catalog(_Strict):
    departments: list[Department]
    purposes: list[Purpose]
    fields: list[FieldSpec]

    def department(self, department_id: str) -> Department | None:
        return next((d for d in self.departments if d.id == department_id), None)

    def purpose(self, purpose_id: str) -> Purpose | None:
        return self.purposes_by_id.get(purpose_id)

    @cached_property
    def purposes_by_id(self) -> dict[str, Purpose]:
        """Each purpose by id (the first of an id), made once: every read checks its purpose
        here. The catalog is frozen."""
        found: dict[str, Purpose] = {}
        for purpose in self.purposes:
            found.setdefault(purpose.id, purpose)
        return found

    def field(self, name: str) -> FieldSpec | None:
        return self.fields_by_name.get(name)

    @cached_property
    def fields_by_name(self) -> dict[str, FieldSpec]:
        """Each field by name, made once: ``field`` is asked once per value on the write
        path (millions of times in a bulk import). The catalog is frozen."""
        return {f.name: f for f in self.fields}

    @property
    def field_owners(self) -> dict[str, str]:
        return {f.name: f.owner for f in self.fields}

    @property
    def signing_keys(self) -> dict[str, str]:
        """Department id -> verifier key, for the departments that sign their agreements."""
        return {d.id: d.signing_key for d in self.departments if d.signing_key}

    @property
    def death_field(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.marks_death), None)


class CatalogOut(BaseModel):
    """The catalog as served at ``GET /v1/catalog``."""

    version: int
    departments: list[Department]
    purposes: list[Purpose]
    fields: list[FieldSpec]
