"""What a records request may name, checked against the catalog before anything is read.

Pure: no I/O. Each check raises a 422 ``ValidationFailed`` (or ``InvalidFieldValue``)
naming every problem at once, with its location.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from service.catalog.schemas import Catalog
from service.digits import ascii_digits
from service.errors import Loc, ValidationFailed, bad_cursor
from service.records import values
from service.records.errors import InvalidFieldValue

# The register's identity field: lookups and the duplicate check go through its blind index.
NATIONAL_ID_FIELD = values.NATIONAL_ID_FIELD


def requested_fields(catalog: Catalog, fields: Sequence[str] | None) -> list[str]:
    """The fields asked for, once each in the order given; every catalog field if none."""
    return list(dict.fromkeys(fields)) if fields else [f.name for f in catalog.fields]


def require_known(
    catalog: Catalog,
    fields: Sequence[str],
    purpose: str | None,
    *,
    fields_at: Loc = (),
    purpose_at: Loc,
    positional: bool = True,
) -> None:
    """Every field and the purpose must be in the catalog.

    A name the catalog does not know is never repeated in the answer: it is the caller's
    input, and may be a value (a national id) sent where a name belongs. An unknown field
    is located by its position among the fields named at ``fields_at`` (a body's list, a
    query's comma-separated names); with ``positional`` false, at ``fields_at`` itself,
    where that names the one field (a path parameter). The purpose was sent at
    ``purpose_at``. Both are the caller's constants: nothing is built unless refused."""
    errors: list[dict[str, Any]] = [
        {"loc": [*fields_at, index] if positional else list(fields_at), "msg": "unknown field"}
        for index, name in enumerate(fields)
        if catalog.field(name) is None
    ]
    if purpose is not None and catalog.purpose(purpose) is None:
        errors.append({"loc": list(purpose_at), "msg": "unknown purpose"})
    if errors:
        raise ValidationFailed("The request names something the catalog does not know.", errors=errors)


def validated_values(
    catalog: Catalog,
    submitted: Mapping[str, Any],
    at: Loc,
    *,
    located: Mapping[str, Loc] | None = None,
) -> dict[str, values.JsonValue]:
    """Submitted field values, each checked against its catalog type and normalised.

    ``submitted`` was sent at ``at`` (``("body", "fields")``): a field the catalog does not
    know is located there by its position, never named (``require_known``); a known field
    is named, the value never repeated. A field sent elsewhere (registration's top-level
    national id) is located where ``located`` says."""
    errors: list[dict[str, Any]] = []
    clean: dict[str, values.JsonValue] = {}
    for index, (name, raw) in enumerate(submitted.items()):
        spec = catalog.field(name)
        if spec is None:
            errors.append({"loc": [*at, index], "msg": "unknown field"})
            continue
        if raw is None:
            errors.append(
                {"loc": _named(at, name, located), "msg": "a value is required (null cannot be written)"}
            )
            continue
        try:
            # An identifier comes back canonical (values.identifier), before it is indexed.
            clean[name] = values.validate(spec, raw)
        except values.ValueRejected as exc:
            errors.append({"loc": _named(at, name, located), "msg": f"{name} {exc}"})
    if errors:
        raise InvalidFieldValue("One or more field values are not valid.", errors=errors)
    return clean


def _named(at: Loc, name: str, located: Mapping[str, Loc] | None) -> list[str | int]:
    """Where the value of the field ``name`` was sent: under ``at``, unless ``located`` says."""
    return [*located[name]] if located and name in located else [*at, name]


def canonical_national_id(national_id: str) -> str:
    """The national id as registration stores it, or a 422 naming the rule (never the value)."""
    try:
        return values.identifier(national_id)
    except values.ValueRejected as exc:
        raise InvalidFieldValue(
            "The national id is not valid.",
            errors=[{"loc": ["body", NATIONAL_ID_FIELD], "msg": f"{NATIONAL_ID_FIELD} {exc}"}],
        ) from None


def legal_basis(text: str) -> str:
    """An erasure's stated legal basis: 1 to 200 visible characters, kept in the audit."""
    stripped = text.strip()
    if (
        not stripped
        or len(stripped) > 200
        or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in stripped)
    ):
        raise ValidationFailed(
            "An erasure names its legal basis: 1 to 200 visible characters.",
            errors=[{"loc": ["query", "legal_basis"], "msg": "invalid legal basis"}],
        )
    return stripped


def validate_claims(catalog: Catalog, claims: Mapping[str, Any], at: Loc) -> None:
    """Each claim (sent at ``at``) names a known operator and an operand of the field's type.

    An unknown operator is located by its position in the claim, never named (it is the
    caller's input, as ``require_known`` says of names)."""
    errors: list[dict[str, Any]] = []
    for name, operations in claims.items():
        spec = catalog.field(name)
        if spec is None:
            continue
        if not isinstance(operations, dict):
            errors.append({"loc": [*at, name], "msg": "a claim is an object of operators"})
            continue
        if not operations:
            errors.append({"loc": [*at, name], "msg": "a claim needs an operator"})
        for index, (operator, operand) in enumerate(operations.items()):
            if operator not in values.CLAIM_OPERATORS:
                errors.append({"loc": [*at, name, index], "msg": "operator must be one of eq, lte, gte, in"})
                continue
            try:
                # Check the operand's shape against a placeholder value of the same type.
                values.check_claim(spec, None, operator, operand)
            except values.ValueRejected as exc:
                errors.append({"loc": [*at, name, operator], "msg": str(exc)})
    if errors:
        raise ValidationFailed("The claims are not valid.", errors=errors)


def parse_cursor(cursor: str | None) -> int | None:
    """A history cursor: the version the next page starts below."""
    if cursor is None:
        return None
    if not ascii_digits(cursor) or len(cursor) > 9:
        raise bad_cursor()
    return int(cursor)
