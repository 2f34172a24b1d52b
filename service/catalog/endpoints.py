from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.auth.dependencies import Principal, get_principal
from service.catalog.errors import CatalogMissing
from service.catalog.schemas import Catalog, CatalogOut
from service.db import driver_reads

router = APIRouter(tags=["catalog"])

# The catalog in force, on the raw driver (its JSON arrives as text from both drivers).
_NEWEST = "SELECT version, content FROM catalog_versions ORDER BY version DESC LIMIT 1"


@dataclass(frozen=True)
class ServedCatalog:
    """The response body of one catalog version (versions never change once stored)."""

    version: int
    body: bytes


@router.get("/v1/catalog", response_model=CatalogOut)
async def get_catalog(request: Request, _caller: Annotated[Principal, Depends(get_principal)]) -> Response:
    """The departments, purposes and fields of this government, each field with its owner.

    Use it to find the field names and purpose ids that every other call takes. Any
    authenticated client may read it, whatever its roles.
    """
    # Authentication has just read the epoch key, which carries the newest catalog
    # version: the body is rebuilt only when that version moves.
    key = getattr(request.state, "epoch_key", None)
    served: ServedCatalog | None = getattr(request.app.state, "served_catalog", None)
    if served is None or key is None or served.version != key[2]:
        rows = await driver_reads(request).rows(_NEWEST)
        if not rows:
            raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
        version, content = rows[0]
        catalog = Catalog.model_validate(json.loads(content) if isinstance(content, str | bytes) else content)
        out = CatalogOut(version=version, **catalog.model_dump())
        served = ServedCatalog(version, out.model_dump_json().encode())
        request.app.state.served_catalog = served
    return Response(served.body, media_type="application/json")
