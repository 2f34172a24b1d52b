"""Every ORM model, imported so that ``Base.metadata`` is complete for Alembic."""

from service.catalog.models import CatalogVersion
from service.db import Base

__all__ = ["Base", "CatalogVersion"]
