"""Every ORM model, imported so that ``Base.metadata`` is complete for Alembic."""

from service.audit.models import AuditCheckpoint, AuditEntryRow, AuditLeaf, AuditNode, AuditSequencerState
from service.auth.models import Client
from service.catalog.models import CatalogVersion
from service.consent.models import Consent, Objection
from service.crypto.models import DataKeyRecord, KeyEncryptionKey, KeyJob
from service.db import Base
from service.policy.models import AgreementVersion, PolicyEpoch
from service.records.models import Citizen, FieldValue, ImportRun

__all__ = [
    "AgreementVersion",
    "AuditCheckpoint",
    "AuditEntryRow",
    "AuditLeaf",
    "AuditNode",
    "AuditSequencerState",
    "Base",
    "CatalogVersion",
    "Citizen",
    "Client",
    "DataKeyRecord",
    "FieldValue",
    "ImportRun",
    "KeyEncryptionKey",
    "KeyJob",
    "PolicyEpoch",
]
from service.cases.models import Case
from service.console.models import ConsoleSession
from service.events.models import Delivery, HeldNotice, NoticeState, OutboxEvent, Subscription

__all__ += ["Case", "Delivery", "HeldNotice", "NoticeState", "OutboxEvent", "Subscription"]
__all__ += ["ConsoleSession"]
__all__ += ["Consent", "Objection"]
