"""Field values: validated against the catalog type, and their canonical bytes.

A value is validated once, on the way in, and turned into canonical UTF-8 bytes that are
what gets encrypted. Reading decodes those bytes back to the JSON value. Errors name the
field and the rule, never the submitted value (it may be personal data).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from service.catalog.schemas import FieldSpec
from service.crypto import blind_index

JsonValue = str | int | bool | None

DEFAULT_MAX_LENGTH = 1000
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class ValueRejected(ValueError):
    """A submitted value does not fit its field's type; the message is safe to return."""


SURROGATE = "must be Unicode text (a lone surrogate such as \\ud800 is not)"
INVISIBLE = "must not contain invisible characters (format, control or other default-ignorable ones)"


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (category Cs). JSON's ``\\ud800`` escape
    parses to one, and no UTF-8 encoding, blind index or database column takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# The register's identity field (records.validation names it too).
NATIONAL_ID_FIELD = "national_id"


def is_identifier(spec: FieldSpec) -> bool:
    """Whether ``spec``'s values are identifiers citizens are found by: a searchable string,
    or the register's national id."""
    return spec.type == "string" and (spec.searchable or spec.name == NATIONAL_ID_FIELD)


def validate(spec: FieldSpec, raw: Any) -> JsonValue:
    """The canonical JSON value for ``raw``, or ``ValueRejected``."""
    if spec.type == "string":
        if not isinstance(raw, str):
            raise ValueRejected("must be a string")
        # An identifier is canonical before it is indexed, compared or measured: the spaces
        # of "AB 12 34 56 C" do not count towards its length.
        text = identifier(raw) if is_identifier(spec) else raw
        limit = spec.max_length or DEFAULT_MAX_LENGTH
        if len(text) > limit:
            raise ValueRejected(f"must be at most {limit} characters")
        if any(ord(ch) < 32 and ch not in "\t\n" for ch in text):
            raise ValueRejected("must not contain control characters")
        if not text.isascii() and has_surrogate(text):
            raise ValueRejected(SURROGATE)
        return text
    if spec.type == "date":
        return _date(raw).isoformat()
    if spec.type == "integer":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueRejected("must be an integer")
        if not -(2**53) < raw < 2**53:
            raise ValueRejected("is out of range")
        return raw
    if spec.type == "boolean":
        if not isinstance(raw, bool):
            raise ValueRejected("must be true or false")
        return raw
    if spec.type == "enum":
        if not isinstance(raw, str) or raw not in (spec.values or []):
            raise ValueRejected(f"must be one of: {', '.join(spec.values or [])}")
        return raw
    raise ValueRejected(f"has an unsupported type {spec.type}")


def identifier(raw: str) -> str:
    """The canonical form of an identifier that citizens are found by (a searchable string).

    NFKC first, so a fullwidth or otherwise compatible spelling becomes the plain one, and
    trimmed; then any invisible character that is left (``blind_index.invisible``: a format
    character such as a zero-width space or direction override, a control character, or
    another default-ignorable code point such as U+034F or a variation selector) is refused
    rather than silently dropped, because two ids that print the same must be one id.
    Decimal digits of any script are written as ASCII digits (Arabic-Indic, Devanagari...:
    ``blind_index.ascii_digits``). Whitespace inside (a space, a no-break or ideographic
    space) is not part of an identifier: it is removed, so "AB 12 34 56 C" is stored as
    "AB123456C" (the blind index's whitespace rule, ``blind_index.without_whitespace``),
    and NFKC runs again in case a removed space stood between a letter and a combining
    mark. A lone surrogate
    (category Cs), which no UTF-8 text holds, is refused too. Runs before the blind index
    and the duplicate check.
    """
    if not raw.isascii() and has_surrogate(raw):
        raise ValueRejected(SURROGATE)
    composed = unicodedata.normalize("NFKC", raw).strip()
    if any(blind_index.invisible(ch) for ch in composed):
        raise ValueRejected(INVISIBLE)
    canonical = identifier_spelling(composed)
    if not canonical:
        raise ValueRejected("must not be empty")
    return canonical


def identifier_spelling(text: str) -> str:
    """The spelling ``identifier`` stores, refusing nothing: NFKC, without whitespace, its
    decimal digits in ASCII (``blind_index.ascii_digits``)."""
    composed = unicodedata.normalize("NFKC", text)
    return unicodedata.normalize("NFKC", blind_index.without_whitespace(blind_index.ascii_digits(composed)))


def _date(raw: Any) -> dt.date:
    if not isinstance(raw, str) or not _ISO_DATE.match(raw):
        raise ValueRejected("must be an ISO 8601 date (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ValueRejected("is not a real calendar date") from None


def encode(spec: FieldSpec, value: JsonValue) -> bytes:
    """Canonical plaintext bytes of a validated value."""
    if spec.type == "boolean":
        return b"true" if value else b"false"
    if spec.type == "integer":
        return str(value).encode()
    return str(value).encode("utf-8")


def decode(spec: FieldSpec, plaintext: bytes) -> JsonValue:
    text = plaintext.decode("utf-8")
    if spec.type == "boolean":
        return text == "true"
    if spec.type == "integer":
        return int(text)
    return text


def normalise_for_index(value: JsonValue) -> str:
    """The text a blind index is computed over (the crypto layer normalises further)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- verify: claims answered with booleans, never the value -------------------------

CLAIM_OPERATORS = ("eq", "lte", "gte", "in")
_RELATIVE_DATE = re.compile(r"^today(?:([+-])([0-9]{1,3})([dmy]))?$")


def relative_date(text: str, today: dt.date) -> dt.date | None:
    """``today``, ``today-18y``, ``today+30d`` or ``today-6m`` as a date; ``None`` if ``text``
    is not one. A month or year step from the 29th-31st lands on the month's last day."""
    match = _RELATIVE_DATE.match(text)
    if match is None:
        return None
    sign, count, unit = match.groups()
    if sign is None:
        return today
    step = int(count) * (-1 if sign == "-" else 1)
    if unit == "d":
        return today + dt.timedelta(days=step)
    months = today.year * 12 + today.month - 1 + (step * 12 if unit == "y" else step)
    year, month = divmod(months, 12)
    month += 1
    if not 1 <= year <= 9999:
        raise ValueRejected("is out of range")
    return dt.date(year, month, min(today.day, calendar.monthrange(year, month)[1]))


def operand(spec: FieldSpec, raw: Any, today: dt.date) -> JsonValue:
    """A claim's operand as a canonical value: validated like a value (an identifier in the
    spelling it is stored in), and for a date, a relative date (``today-18y``) resolved
    against ``today``."""
    if spec.type == "date" and isinstance(raw, str):
        resolved = relative_date(raw, today)
        if resolved is not None:
            return resolved.isoformat()
    return validate(spec, raw)


def comparisons(operations: Mapping[str, Any]) -> int:
    """How many comparisons a claim asks: one per operator, one per value of an 'in'."""
    return sum(len(raw) if op == "in" and isinstance(raw, list) else 1 for op, raw in operations.items())


def comparable(spec: FieldSpec, value: JsonValue) -> JsonValue:
    """What ``eq`` and ``in`` compare: an identifier under the blind index's normalisation
    (as lookup and the duplicate check compare it: case, compatible forms and whitespace
    do not count), any other value as it is."""
    if is_identifier(spec) and isinstance(value, str):
        return blind_index.normalise(value)
    return value


def check_claim(
    spec: FieldSpec, value: JsonValue, operator: str, raw_operand: Any, today: dt.date | None = None
) -> bool:
    """Whether ``value <operator> operand`` holds. The operand is validated like a value
    (a date may be relative to ``today``, the UTC date when not given). Identifiers are
    compared as lookup and the duplicate check compare them (``comparable``): a claim holds
    for every spelling that finds the citizen ("ab123456c" for "AB123456C"), and a value
    stored with spaces inside before normalisation 3 for the same id without them."""
    today = today or dt.datetime.now(dt.UTC).date()
    value = comparable(spec, value)
    if operator == "in":
        if not isinstance(raw_operand, list) or not raw_operand or len(raw_operand) > 100:
            raise ValueRejected("'in' takes a list of 1 to 100 values")
        return any(value == comparable(spec, operand(spec, item, today)) for item in raw_operand)
    expected = operand(spec, raw_operand, today)
    if operator == "eq":
        return value == comparable(spec, expected)
    if operator in ("lte", "gte"):
        if spec.type not in ("date", "integer"):
            raise ValueRejected(f"'{operator}' applies only to dates and integers")
        if value is None:
            return False
        if spec.type == "date":
            left, right = dt.date.fromisoformat(str(value)), dt.date.fromisoformat(str(expected))
            return left <= right if operator == "lte" else left >= right
        if not isinstance(value, int) or not isinstance(expected, int):
            raise ValueRejected("must be an integer")
        return value <= expected if operator == "lte" else value >= expected
    raise ValueRejected(f"unknown operator {operator!r}; use one of {', '.join(CLAIM_OPERATORS)}")
