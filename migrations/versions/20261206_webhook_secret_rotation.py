"""events: a subscription keeps the signing secret a rotation replaced, and until when it
signs too

Revision ID: 0018_webhook_secret_rotation
Revises: 0017_blind_index_partial
Create Date: 2026-12-06 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0018_webhook_secret_rotation"
down_revision: str | Sequence[str] | None = "0017_blind_index_partial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("event_subscriptions") as batch:
        batch.add_column(sa.Column("previous_secret_ciphertext", sa.LargeBinary(), nullable=True))
        batch.add_column(
            sa.Column("previous_secret_expires_at", service.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    # Deliveries are then signed with the current secret only, as before rotation existed.
    with op.batch_alter_table("event_subscriptions") as batch:
        batch.drop_column("previous_secret_expires_at")
        batch.drop_column("previous_secret_ciphertext")
