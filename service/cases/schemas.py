from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class CaseOut(BaseModel):
    department: str
    case_ref: str
    opened_at: datetime
    closed_at: datetime | None
