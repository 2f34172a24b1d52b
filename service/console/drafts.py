"""A draft agreement checked by the policy domain, its problems placed on the form.

The check is ``service.policy.checks.check_body``, the one the policy API runs on a
``POST`` or ``PUT`` body: the shape and the loader's rules in one round, in words. The
console accepts exactly what the API and ``tellonce policies apply`` accept; it only puts
each problem beside its form field, as a sentence.
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

ID_TAKEN = "An agreement with this ID already exists; IDs are unique across the catalog"


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:]


async def check_draft(
    session: AsyncSession, catalog: Catalog, viewer: Principal, draft: dict[str, Any], *, creating: bool
) -> DraftCheck:
    """The stored form of the draft, or its problems by form field; ``creating`` also
    refuses an id already taken."""
    checked = check_body(draft, viewer.department, catalog)
    if checked.spec is None:
        return DraftCheck(
            None, [(field_for_loc(loc), _sentence(message)) for loc, message in checked.problems]
        )
    if creating and await agreements.id_taken(session, checked.spec.id):
        return DraftCheck(None, [("id", ID_TAKEN)])
    return DraftCheck(checked.spec.content(), [])
