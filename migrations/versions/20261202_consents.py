"""consent: consent artefacts and objections over non-statutory agreements

Revision ID: 0015_consents
Revises: 0014_import_runs
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0015_consents"
down_revision: str | Sequence[str] | None = "0014_import_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("citizen_id", sa.String(length=36), nullable=False),
        sa.Column("agreement", sa.String(length=63), nullable=False),
        sa.Column("consumer", sa.String(length=63), nullable=False),
        sa.Column("purpose", sa.String(length=63), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", service.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("data_life", sa.String(length=32), nullable=True),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["citizen_id"], ["citizens.id"], name=op.f("fk_consents_citizen_id_citizens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
    )
    op.create_index("ix_consents_citizen_agreement", "consents", ["citizen_id", "agreement"])
    op.create_table(
        "objections",
        sa.Column("citizen_id", sa.String(length=36), nullable=False),
        sa.Column("agreement", sa.String(length=63), nullable=False),
        sa.Column("created_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["citizen_id"], ["citizens.id"], name=op.f("fk_objections_citizen_id_citizens")
        ),
        sa.PrimaryKeyConstraint("citizen_id", "agreement", name=op.f("pk_objections")),
    )


def downgrade() -> None:
    op.drop_table("objections")
    op.drop_index("ix_consents_citizen_agreement", table_name="consents")
    op.drop_table("consents")
