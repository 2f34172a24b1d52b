"""consent: a consent's terms name the actions it covers, and those given before are
filled in from the agreement version in force when each was given

Revision ID: 0020_consent_actions
Revises: 0019_delivery_released
Create Date: 2026-12-08 00:00:00
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0020_consent_actions"
down_revision: str | Sequence[str] | None = "0019_delivery_released"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_consents = sa.table(
    "consents",
    sa.column("id", sa.String),
    sa.column("agreement", sa.String),
    sa.column("created_at", service.db.UTCDateTime(timezone=True)),
    sa.column("actions", sa.JSON),
)
_versions = sa.table(
    "agreement_versions",
    sa.column("agreement_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("status", sa.String),
    sa.column("content", sa.JSON),
    sa.column("created_at", service.db.UTCDateTime(timezone=True)),
)
# Consents updated per statement.
_BATCH = 1000


def _actions_of(status: str, content: Any) -> list[str]:
    """The actions a stored agreement version grants: none once revoked, or if its content
    names none."""
    actions = content.get("actions") if status == "active" and isinstance(content, dict) else None
    return [str(action) for action in actions] if isinstance(actions, list) else []


def upgrade() -> None:
    with op.batch_alter_table("consents") as batch:
        batch.add_column(sa.Column("actions", sa.JSON(), nullable=True))
    bind = op.get_bind()
    # Agreement id -> its versions, oldest first: (stored at, version, actions). The
    # agreements are few (tens); the consents may be many, and are read once.
    history: dict[str, list[tuple[datetime, int, list[str]]]] = {}
    for agreement_id, version, status, content, created_at in bind.execute(
        sa.select(
            _versions.c.agreement_id,
            _versions.c.version,
            _versions.c.status,
            _versions.c.content,
            _versions.c.created_at,
        )
    ):
        history.setdefault(agreement_id, []).append((created_at, version, _actions_of(status, content)))
    for versions in history.values():
        versions.sort()
    changes: list[dict[str, Any]] = []
    for consent_id, agreement, given_at in bind.execute(
        sa.select(_consents.c.id, _consents.c.agreement, _consents.c.created_at)
    ):
        # The version in force when the consent was given: the newest stored by then.
        in_force = [actions for stored_at, _, actions in history.get(agreement, ()) if stored_at <= given_at]
        changes.append({"consent_id": consent_id, "covered": in_force[-1] if in_force else []})
    statement = (
        sa.update(_consents)
        .where(_consents.c.id == sa.bindparam("consent_id"))
        .values(actions=sa.bindparam("covered", type_=sa.JSON))
    )
    for start in range(0, len(changes), _BATCH):
        bind.execute(statement, changes[start : start + _BATCH])


def downgrade() -> None:
    # Consents then cover every action of their agreement's current version again.
    with op.batch_alter_table("consents") as batch:
        batch.drop_column("actions")
