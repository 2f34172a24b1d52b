"""The agreement form: from posted fields to a draft, and back to what the form shows.

The draft is the agreement as a policy file would hold it; ``drafts.py`` checks it with
the policy domain's rules, so the console accepts exactly what the loader accepts.
"""

from __future__ import annotations

import difflib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml
from starlette.datastructures import FormData

from service.digits import ascii_digits

ACTIONS = ("read", "lookup", "verify", "history", "subscribe", "write")
# Form fields in page order: the error summary lists problems in this order.
FORM_FIELDS = (
    "id",
    "consumer",
    "fields",
    "actions",
    "purposes",
    "legal_basis",
    "valid_from",
    "valid_until",
    "when",
    "require_case_ref",
    "disclosure",
    "max_delay",
    "effect",
    "basis",
    "verify",
    "signature",
    "reason",
)
TEXT_LIMIT = 2000
CLAIMS_LIMIT = 20_000


@dataclass
class AgreementForm:
    """What the form shows: values as typed, and the errors by field."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def error_list(self) -> list[tuple[str, str]]:
        ordered = []
        for name in FORM_FIELDS:
            ordered += [(name, message) for message in self.errors.get(name, [])]
        ordered += [(n, m) for n, ms in self.errors.items() if n not in FORM_FIELDS for m in ms]
        return ordered

    def add_error(self, name: str, message: str) -> None:
        target = name if name in FORM_FIELDS else "id"
        self.errors.setdefault(target, []).append(message)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip()[:TEXT_LIMIT] if isinstance(value, str) else ""


def _many(form: FormData, name: str) -> list[str]:
    return [v.strip()[:200] for v in form.getlist(name) if isinstance(v, str) and v.strip()]


# The GOV.UK date-input pattern: day, month and year boxes, never the browser's date picker.
DATE_FIELDS = {"valid_from": "Valid from", "valid_until": "Valid until"}
DATE_PARTS = ("day", "month", "year")


def _date_parts(form: FormData, name: str) -> dict[str, str]:
    return {part: _text(form, f"{name}-{part}")[:10] for part in DATE_PARTS}


def _iso_date(parts: Mapping[str, str]) -> str:
    """The date the parts name, as YYYY-MM-DD, or "" if they name none (see ``date_errors``)."""
    try:
        return date(int(parts["year"]), int(parts["month"]), int(parts["day"])).isoformat()
    except (KeyError, ValueError, OverflowError):
        # OverflowError: a number too large for a C int, such as the year 9999999999.
        return ""


def date_errors(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """GOV.UK's messages for a date typed in three boxes, one per date field."""
    errors: list[tuple[str, str]] = []
    for name, label in DATE_FIELDS.items():
        parts: Mapping[str, str] = values.get(f"{name}_parts") or {}
        given = [part for part in DATE_PARTS if parts.get(part)]
        if not given:
            continue
        missing = [part for part in DATE_PARTS if part not in given]
        if missing:
            errors.append((name, f"{label} must include a {' and a '.join(missing)}"))
        elif not all(ascii_digits(parts[part]) for part in DATE_PARTS) or len(parts["year"]) != 4:
            errors.append((name, f"{label} must be a real date, with the year in 4 digits"))
        elif not _iso_date(parts):
            errors.append((name, f"{label} must be a real date"))
    return errors


def form_values(form: FormData) -> dict[str, Any]:
    """The posted form, tidied but not judged."""
    dates = {name: _date_parts(form, name) for name in DATE_FIELDS}
    return {
        "id": _text(form, "id"),
        "consumer": _text(form, "consumer"),
        "fields": _many(form, "fields"),
        "actions": _many(form, "actions"),
        "purposes": _many(form, "purposes"),
        "legal_basis": _text(form, "legal_basis"),
        "valid_from": _iso_date(dates["valid_from"]),
        "valid_until": _iso_date(dates["valid_until"]),
        "valid_from_parts": dates["valid_from"],
        "valid_until_parts": dates["valid_until"],
        "when": _text(form, "when"),
        "require_case_ref": form.get("require_case_ref") == "yes",
        "disclosure": _text(form, "disclosure") or "immediate",
        "max_delay": _text(form, "max_delay"),
        "effect": _text(form, "effect") or "permit",
        "basis": _text(form, "basis") or "statutory",
        # Pasted: a line break or spaces around it are not part of the signature.
        "signature": "".join(_text(form, "signature").split()),
        "verify": _claims(form),
        "reason": _text(form, "reason"),
    }


def _claims(form: FormData) -> Any:
    """The allowed claims (``verify:``) carried unchanged through the form, which has no
    boxes for them: left out, an edit would drop them and let any claim be asked."""
    value = form.get("verify")
    if not isinstance(value, str) or not value:
        return None
    try:
        return json.loads(value[:CLAIMS_LIMIT])
    # RecursionError: arrays or objects nested deeper than the decoder goes ("[[[[…").
    except (ValueError, RecursionError):
        return value  # judged (and refused) by the policy rules as any other value


def draft_from_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The agreement entry for the policy domain to validate; empty optional fields left out."""
    draft: dict[str, Any] = {
        "id": values.get("id", ""),
        "consumer": values.get("consumer", ""),
        "fields": list(values.get("fields", [])),
        "actions": list(values.get("actions", [])),
        "purposes": list(values.get("purposes", [])),
        "effect": values.get("effect") or "permit",
    }
    for optional in ("legal_basis", "valid_from", "valid_until", "when"):
        if values.get(optional):
            draft[optional] = values[optional]
    if values.get("require_case_ref"):
        draft["require_case_ref"] = True
    # Defaults left out, as in the stored and signed form.
    if values.get("disclosure") and values["disclosure"] != "immediate":
        draft["disclosure"] = values["disclosure"]
    if values.get("max_delay"):
        draft["max_delay"] = values["max_delay"]
    # The default is left out, as in the stored and signed form.
    if values.get("basis") and values["basis"] != "statutory":
        draft["basis"] = values["basis"]
    if values.get("signature"):
        draft["signature"] = values["signature"]
    if values.get("verify") is not None:
        draft["verify"] = values["verify"]
    return draft


def values_from_content(content: Mapping[str, Any], reason: str = "") -> dict[str, Any]:
    """Form values for editing a stored agreement (or the draft carried by the simulate page).

    Raises ``ValueError`` or ``TypeError`` for content no agreement has, such as a date
    that is not ISO text or fields that are not a list.
    """
    return {
        "id": content.get("id", ""),
        "consumer": content.get("consumer", ""),
        "fields": list(content.get("fields", [])),
        "actions": list(content.get("actions", [])),
        "purposes": list(content.get("purposes", [])),
        "legal_basis": content.get("legal_basis") or "",
        "valid_from": content.get("valid_from") or "",
        "valid_until": content.get("valid_until") or "",
        "valid_from_parts": _parts_of(content.get("valid_from")),
        "valid_until_parts": _parts_of(content.get("valid_until")),
        "when": content.get("when") or "",
        "require_case_ref": bool(content.get("require_case_ref")),
        "disclosure": content.get("disclosure") or "immediate",
        "max_delay": content.get("max_delay") or "",
        "effect": content.get("effect") or "permit",
        "basis": content.get("basis") or "statutory",
        # Kept as stored: it still verifies if nothing is changed, and is refused if anything is.
        "signature": content.get("signature") or "",
        "verify": content.get("verify"),
        "reason": reason,
    }


def _parts_of(value: Any) -> dict[str, str]:
    """A stored date (ISO text or a date) as the three boxes show it."""
    if not value:
        return dict.fromkeys(DATE_PARTS, "")
    day = value if isinstance(value, date) else date.fromisoformat(str(value))
    return {"day": str(day.day), "month": str(day.month), "year": str(day.year)}


def encode_claims(claims: Any) -> str:
    """Allowed claims as the form's hidden field carries them."""
    return json.dumps(claims, sort_keys=True, separators=(",", ":")) if claims is not None else ""


def encode_draft(content: Mapping[str, Any]) -> str:
    """The checked draft carried from the simulate page to the save button (checked again there)."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def decode_draft(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    # RecursionError: arrays or objects nested deeper than the decoder goes ("[[[[…").
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def canonical_yaml(content: Mapping[str, Any]) -> str:
    """The agreement as it would sit in a policy file, keys in a stable order."""
    ordered: dict[str, Any] = {key: content[key] for key in FORM_FIELDS if key in content}
    ordered |= {key: value for key, value in sorted(content.items()) if key not in ordered}
    for key in ("valid_from", "valid_until"):
        # Stored as ISO strings; shown as YAML dates, as a policy file writes them.
        if isinstance(ordered.get(key), str):
            try:
                ordered[key] = date.fromisoformat(ordered[key])
            except ValueError:
                pass
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)


def sign_command(text: str, key_file: str) -> str:
    """A shell command that prints the signature of ``text`` exactly (no line break added)."""
    return f"printf '%s' {shlex.quote(text)} | tellonce owners sign --key {shlex.quote(key_file)}"


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "remove", "context" or "hunk"
    text: str


def version_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], old_label: str, new_label: str
) -> list[DiffLine]:
    """A unified diff of two versions' canonical YAML, as typed lines for the page."""
    lines: list[DiffLine] = []
    diff = difflib.unified_diff(
        canonical_yaml(old).splitlines(),
        canonical_yaml(new).splitlines(),
        fromfile=old_label,
        tofile=new_label,
        lineterm="",
        n=20,
    )
    for text in diff:
        if text.startswith(("---", "+++")):
            continue
        if text.startswith("@@"):
            kind = "hunk"
        elif text.startswith("+"):
            kind = "add"
        elif text.startswith("-"):
            kind = "remove"
        else:
            kind = "context"
        lines.append(DiffLine(kind, text))
    return lines


def field_for_loc(loc: Sequence[Any]) -> str:
    """The form field a validation location points at (``("fields", 2)`` -> ``fields``)."""
    for part in loc:
        if isinstance(part, str) and part in FORM_FIELDS:
            return part
    return "id"
