from __future__ import annotations

from fastapi import APIRouter

from service.auth.dependencies import AnyClient
from service.catalog import service as catalog_service
from service.catalog.schemas import CatalogOut
from service.db import SessionDep

router = APIRouter(tags=["catalog"])


@router.get("/v1/catalog", response_model=CatalogOut)
async def get_catalog(session: SessionDep, _caller: AnyClient) -> CatalogOut:
    """The departments, purposes and fields of this government, each field with its owner.

    Use it to find the field names and purpose ids that every other call takes.
    """
    version, catalog = await catalog_service.current(session)
    return CatalogOut(version=version, **catalog.model_dump())
