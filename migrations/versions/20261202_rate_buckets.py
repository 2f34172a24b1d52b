"""auth: per-client token buckets shared by every replica (UNLOGGED on PostgreSQL)

Revision ID: 0013_rate_buckets
Revises: 0012_catalog_hash_repeats
Create Date: 2026-12-02 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_rate_buckets"
down_revision: str | Sequence[str] | None = "0012_catalog_hash_repeats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # UNLOGGED: a claim's commit waits for no WAL flush, and losing the buckets in a crash
    # only refills them. SQLite has no such table kind (and never writes this one).
    prefixes = ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []
    op.create_table(
        "rate_buckets",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.Float(), nullable=False),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_rate_buckets")),
        prefixes=prefixes,
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
