"""The caller of a request.

Placeholder until the authentication issue lands: every request is an anonymous
principal. Endpoints already declare their caller through these names, so replacing
the dependency secures them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends


@dataclass(frozen=True)
class Principal:
    client_id: str
    department: str
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = field(default_factory=frozenset)


ANONYMOUS = Principal(client_id="anonymous", department="")


async def any_client() -> Principal:
    return ANONYMOUS


AnyClient = Annotated[Principal, Depends(any_client)]
