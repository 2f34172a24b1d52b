"""witness: cosignatures, witnessed checkpoints, the checkpoint auditors have seen

Revision ID: 0010_witness
Revises: 0009_blind_index_version
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0010_witness"
down_revision: str | Sequence[str] | None = "0009_blind_index_version"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_cosignatures",
        sa.Column("checkpoint_id", BigId, nullable=False),
        sa.Column("witness", sa.String(length=255), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("cosigned_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["audit_checkpoints.id"],
            name=op.f("fk_audit_cosignatures_checkpoint_id_audit_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "witness", name=op.f("pk_audit_cosignatures")),
    )
    op.create_table(
        "audit_witnessed",
        sa.Column("checkpoint_id", BigId, nullable=False),
        sa.Column("tree_size", BigId, nullable=False),
        sa.Column("witnessed_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["audit_checkpoints.id"],
            name=op.f("fk_audit_witnessed_checkpoint_id_audit_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", name=op.f("pk_audit_witnessed")),
    )
    with op.batch_alter_table("audit_witnessed", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_witnessed_tree_size"), ["tree_size"], unique=False)
    op.create_table(
        "auditor_observed_checkpoints",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tree_size", BigId, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("observed_by", sa.String(length=200), nullable=False),
        sa.Column("observed_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auditor_observed_checkpoints")),
    )
    with op.batch_alter_table("auditor_observed_checkpoints", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auditor_observed_checkpoints_tree_size"), ["tree_size"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("auditor_observed_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auditor_observed_checkpoints_tree_size"))
    op.drop_table("auditor_observed_checkpoints")
    with op.batch_alter_table("audit_witnessed", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_witnessed_tree_size"))
    op.drop_table("audit_witnessed")
    op.drop_table("audit_cosignatures")
