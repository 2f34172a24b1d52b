"""records: the normalisation version of each blind index

Revision ID: 0009_blind_index_version
Revises: 0008_console
Create Date: 2026-12-01 22:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_blind_index_version"
down_revision: str | Sequence[str] | None = "0008_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows were indexed with normalisation 1; `tellonce records reindex` moves them on.
    with op.batch_alter_table("field_values", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("blind_index_version", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("field_values", schema=None) as batch_op:
        batch_op.drop_column("blind_index_version")
