"""events and cases: access notices (event and subscription types, notice detail, the
worker's place, held notices) and consumers' cases for delayed disclosure

Revision ID: 0016_access_notices
Revises: 0015_consents
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0016_access_notices"
down_revision: str | Sequence[str] | None = "0015_consents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("event_outbox") as batch:
        batch.add_column(
            sa.Column("type", sa.String(length=32), server_default="citizen.fields_changed", nullable=False)
        )
        batch.add_column(sa.Column("detail", sa.JSON(), nullable=True))
        batch.create_index("ix_event_outbox_type_position", ["type", "position"], unique=False)
    with op.batch_alter_table("event_subscriptions") as batch:
        batch.add_column(
            sa.Column("type", sa.String(length=32), server_default="citizen.fields_changed", nullable=False)
        )
    op.create_table(
        "access_notice_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_entry_id", POSITION, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_notice_state")),
    )
    op.create_table(
        "event_held_notices",
        sa.Column("entry_id", POSITION, autoincrement=False, nullable=False),
        sa.Column("citizen_id", sa.String(length=36), nullable=False),
        sa.Column("department", sa.String(length=63), nullable=False),
        sa.Column("case_ref", sa.String(length=100), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("accessed_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("disclose_by", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("released_at", service.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_event_held_notices")),
    )
    op.create_index(
        "ix_event_held_notices_waiting", "event_held_notices", ["released_at", "disclose_by"], unique=False
    )
    op.create_table(
        "cases",
        sa.Column("department", sa.String(length=63), nullable=False),
        sa.Column("case_ref", sa.String(length=100), nullable=False),
        sa.Column("opened_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", service.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("department", "case_ref", name=op.f("pk_cases")),
    )
    # Notices start from now: the accesses already in the log were made before anyone
    # could subscribe to them.
    op.execute(
        "INSERT INTO access_notice_state (id, last_entry_id) "
        "SELECT 1, COALESCE(MAX(id), 0) FROM audit_entries"
    )


def downgrade() -> None:
    op.drop_table("cases")
    op.drop_index("ix_event_held_notices_waiting", table_name="event_held_notices")
    op.drop_table("event_held_notices")
    op.drop_table("access_notice_state")
    with op.batch_alter_table("event_subscriptions") as batch:
        batch.drop_column("type")
    with op.batch_alter_table("event_outbox") as batch:
        batch.drop_index("ix_event_outbox_type_position")
        batch.drop_column("detail")
        batch.drop_column("type")
