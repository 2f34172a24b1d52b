"""records: daily counts of open verify comparisons per consumer, citizen and field

Revision ID: 0010_verify_probes
Revises: 0010_witness
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_verify_probes"
down_revision: str | Sequence[str] | None = "0010_witness"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verify_probes",
        sa.Column("consumer", sa.String(length=63), nullable=False),
        sa.Column("citizen_id", sa.String(length=36), nullable=False),
        sa.Column("field", sa.String(length=63), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("comparisons", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "citizen_id", "field", "day", name=op.f("pk_verify_probes")),
    )


def downgrade() -> None:
    op.drop_table("verify_probes")
