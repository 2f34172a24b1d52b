"""A draft agreement checked by the policy domain's own rules, its problems worded for the form.

The rules are ``service.policy.agreements``' (the loader's checks, and ids unique across
the catalog), so the console accepts exactly what the API and ``tellonce policies apply``
accept; only the wording of the schema's own refusals is the console's.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.dependencies import Principal
from service.catalog.schemas import Catalog
from service.console.forms import field_for_loc
from service.console.views import DraftCheck
from service.policy import agreements
from service.policy.schemas import AgreementSpec
from service.policy.signing import SIGNATURE

# Friendlier words for the schema's own refusals, by (form field, pydantic error type).
_FRIENDLY = {
    ("id", "string_pattern_mismatch"): "The agreement ID must be lower-case letters, digits and hyphens, "
    "starting with a letter",
    ("id", "string_type"): "Enter an agreement ID",
    ("consumer", "string_pattern_mismatch"): "Choose the consumer department",
    ("fields", "too_short"): "Choose at least one field",
    ("actions", "too_short"): "Choose at least one action",
    ("actions", "literal_error"): "Choose actions from the list",
    ("valid_from", "date_from_datetime_parsing"): "The valid from date must be a real date, like 2027-01-31",
    ("valid_from", "date_parsing"): "The valid from date must be a real date, like 2027-01-31",
    (
        "valid_until",
        "date_from_datetime_parsing",
    ): "The valid until date must be a real date, like 2027-12-31",
    ("valid_until", "date_parsing"): "The valid until date must be a real date, like 2027-12-31",
    ("signature", "string_too_long"): "The signature is too long: paste only the base64 signature",
}
# What a draft that failed to parse is judged with in place of its unparsable parts.
_DRAFT_DEFAULTS: dict[str, Any] = {
    "id": "draft",
    "consumer": "",
    "fields": [],
    "actions": [],
    "purposes": [],
    "legal_basis": None,
    "valid_from": None,
    "valid_until": None,
    "when": None,
    "require_case_ref": False,
    "effect": "permit",
}
ID_TAKEN = "An agreement with this ID already exists; IDs are unique across the catalog"


def _strip_prefix(message: str, agreement_id: str) -> str:
    text = message.removeprefix(f"agreement {agreement_id}: ")
    return text[:1].upper() + text[1:]


async def check_draft(
    session: AsyncSession, catalog: Catalog, viewer: Principal, draft: dict[str, Any], *, creating: bool
) -> DraftCheck:
    """The stored form of the draft, or its problems by form field; ``creating`` also
    refuses an id already taken. For an owner with a signing key, an unsigned, wrongly
    signed or signed-then-edited draft is refused here (the policy rules' own check), and
    the text to sign comes back with the refusal."""
    errors: list[tuple[str, str]] = []
    failed: set[str] = set()
    try:
        spec = AgreementSpec.model_validate(draft)
    except ValidationError as exc:
        for error in exc.errors():
            name = field_for_loc(error["loc"])
            failed.add(name)
            errors.append((name, _FRIENDLY.get((name, error["type"]), str(error["msg"]))))
        # Every problem at once: what did parse is judged against the catalog as well, with
        # the fields that failed left at harmless values and their problems dropped.
        spec = AgreementSpec.model_construct(
            **(_DRAFT_DEFAULTS | {k: v for k, v in draft.items() if k not in failed})
        )
    # A draft that did not parse is not what would be signed: its signature is judged once it does.
    for loc, message in agreements.problems(spec, viewer.department, catalog, signed=not failed):
        name = field_for_loc(loc)
        if name not in failed:
            errors.append((name, _strip_prefix(message, spec.id)))
    if creating and "id" not in failed and await agreements.id_taken(session, spec.id):
        errors.append(("id", ID_TAKEN))
    # The text to sign, once nothing but the signature is wrong: any other fix changes it.
    to_sign = None
    if not failed and all(name == SIGNATURE for name, _message in errors):
        to_sign = agreements.text_to_sign(spec, viewer.department, catalog)
    return DraftCheck(None if errors else spec.content(), errors, to_sign)
