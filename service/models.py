"""Every ORM model, imported so that ``Base.metadata`` is complete for Alembic."""

from service.catalog.models import CatalogVersion
from service.crypto.models import DataKeyRecord, KeyEncryptionKey, KeyJob
from service.db import Base
from service.records.models import Citizen, FieldValue

__all__ = ["Base", "CatalogVersion", "Citizen", "FieldValue"]
__all__ += ["DataKeyRecord", "KeyEncryptionKey", "KeyJob"]
