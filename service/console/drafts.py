"""A draft agreement checked by the policy domain, its problems placed on the form.

The check is ``service.policy.checks.check_body``, the one the policy API runs on a
``POST`` or ``PUT`` body: the shape and the loader's rules (an owner's signature among
them) in one round, in words. The console accepts exactly what the API and ``tellonce
policies apply`` accept; it only puts each problem beside its form field, as a sentence.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.dependencies import Principal
from service.catalog.schemas import Catalog
from service.console.forms import field_for_loc
from service.console.views import DraftCheck
from service.policy import agreements
from service.policy.checks import check_body
from service.policy.schemas import AgreementSpec
from service.policy.signing import SIGNATURE

ID_TAKEN = "An agreement with this ID already exists; IDs are unique across the catalog"


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:]


async def check_draft(
    session: AsyncSession, catalog: Catalog, viewer: Principal, draft: dict[str, Any], *, creating: bool
) -> DraftCheck:
    """The stored form of the draft, or its problems by form field; ``creating`` also
    refuses an id already taken.

    For an owner with a signing key, an unsigned, wrongly signed or signed-then-edited
    draft is refused here (the policy rules' own check). Once the signature is the only
    problem left, the text to sign comes back with the refusal: any other fix would change it.
    """
    checked = check_body(draft, viewer.department, catalog)
    errors = [(field_for_loc(loc), _sentence(message)) for loc, message in checked.problems]
    if any(loc[:1] != (SIGNATURE,) for loc, _message in checked.problems):
        return DraftCheck(None, errors)
    # The shape passed (a signature that failed its own shape is judged apart from it).
    spec = AgreementSpec.model_validate({k: v for k, v in draft.items() if k not in (SIGNATURE, "reason")})
    if creating and await agreements.id_taken(session, spec.id):
        return DraftCheck(None, [*errors, ("id", ID_TAKEN)])
    content = checked.spec.content() if checked.spec is not None else None
    return DraftCheck(content, errors, agreements.text_to_sign(spec, viewer.department, catalog))
