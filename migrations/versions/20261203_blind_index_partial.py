"""records: the blind-index index holds only rows that have a blind index

Revision ID: 0017_blind_index_partial
Revises: 0016_access_notices
Create Date: 2026-12-03 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_blind_index_partial"
down_revision: str | Sequence[str] | None = "0016_access_notices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_BLIND_INDEX = sa.text("blind_index IS NOT NULL")


def upgrade() -> None:
    # Only searchable fields (the national id) carry a blind index; the other values'
    # NULLs were five of every six entries, written by every import and write and never
    # searched. Every search compares blind_index, which implies the index's condition.
    with op.batch_alter_table("field_values", schema=None) as batch_op:
        batch_op.drop_index("ix_field_values_blind_index")
        batch_op.create_index(
            "ix_field_values_blind_index",
            ["field", "blind_index"],
            unique=False,
            sqlite_where=HAS_BLIND_INDEX,
            postgresql_where=HAS_BLIND_INDEX,
        )


def downgrade() -> None:
    with op.batch_alter_table("field_values", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_field_values_blind_index", sqlite_where=HAS_BLIND_INDEX, postgresql_where=HAS_BLIND_INDEX
        )
        batch_op.create_index("ix_field_values_blind_index", ["field", "blind_index"], unique=False)
