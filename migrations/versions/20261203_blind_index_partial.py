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

NAME = "ix_field_values_blind_index"
# The replacement while both exist on PostgreSQL.
BUILDING = "ix_field_values_blind_index_new"
HAS_BLIND_INDEX = sa.text("blind_index IS NOT NULL")


def _rebuild(*, partial: bool) -> None:
    where = {"sqlite_where": HAS_BLIND_INDEX, "postgresql_where": HAS_BLIND_INDEX} if partial else {}
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table("field_values", schema=None) as batch_op:
            batch_op.drop_index(NAME)
            batch_op.create_index(NAME, ["field", "blind_index"], unique=False, **where)
        return
    # field_values is the largest table: a plain DROP INDEX would lock it against every
    # read while the new index is built (16 s at a million citizens here). CONCURRENTLY
    # builds beside the old index, outside a transaction; a run cut short leaves at most an
    # invalid BUILDING index, which the next run drops first.
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {BUILDING}")
        op.create_index(
            BUILDING, "field_values", ["field", "blind_index"], postgresql_concurrently=True, **where
        )
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")
    op.execute(f"ALTER INDEX {BUILDING} RENAME TO {NAME}")


def upgrade() -> None:
    # Only searchable fields (the national id) carry a blind index; the other values'
    # NULLs were five of every six entries, written by every import and write and never
    # searched. Every search compares blind_index, which implies the index's condition.
    _rebuild(partial=True)


def downgrade() -> None:
    _rebuild(partial=False)
