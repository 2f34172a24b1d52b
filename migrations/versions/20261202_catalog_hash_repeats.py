"""catalog: a catalog may come back (a signing key added, then removed), so its content hash
is indexed, no longer unique

Revision ID: 0012_catalog_hash_repeats
Revises: 0011_auth_hardening
Create Date: 2026-12-02 02:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_catalog_hash_repeats"
down_revision: str | Sequence[str] | None = "0011_auth_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_versions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_catalog_versions_content_hash"), type_="unique")
        batch_op.create_index(batch_op.f("ix_catalog_versions_content_hash"), ["content_hash"], unique=False)


def downgrade() -> None:
    # Only while no catalog content repeats: a repeated one would break the constraint.
    with op.batch_alter_table("catalog_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_versions_content_hash"))
        batch_op.create_unique_constraint(batch_op.f("uq_catalog_versions_content_hash"), ["content_hash"])
