"""records: how far `tellonce import` has committed each file, for --resume

Revision ID: 0014_import_runs
Revises: 0013_rate_buckets
Create Date: 2026-12-02 08:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0014_import_runs"
down_revision: str | Sequence[str] | None = "0013_rate_buckets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("department", sa.String(length=63), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("last_line", sa.Integer(), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("registered", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("started_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", service.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_runs")),
    )
    op.create_index("uq_import_runs_file", "import_runs", ["department", "mode", "file_sha256"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_import_runs_file", table_name="import_runs")
    op.drop_table("import_runs")
