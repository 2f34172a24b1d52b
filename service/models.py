"""Every ORM model, imported so that ``Base.metadata`` is complete for Alembic."""

from service.catalog.models import CatalogVersion
from service.db import Base
from service.records.models import Citizen, FieldValue

__all__ = ["Base", "CatalogVersion", "Citizen", "FieldValue"]
from service.console.models import ConsoleSession

__all__ += ["ConsoleSession"]
