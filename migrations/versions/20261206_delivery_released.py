"""events: a delivery records when its event was released to the subscribing department,
and a withheld one no longer keeps the policy's reasons

Revision ID: 0019_delivery_released
Revises: 0018_webhook_secret_rotation
Create Date: 2026-12-06 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "0019_delivery_released"
down_revision: str | Sequence[str] | None = "0018_webhook_secret_rotation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("event_deliveries") as batch:
        batch.add_column(sa.Column("released_at", service.db.UTCDateTime(timezone=True), nullable=True))
    # What is known to have been released before: a delivery the receiver took or answered
    # was audited before it was sent. A failure before any answer cannot be told apart from
    # one before the audit, so those stay unnamed in the deliveries list.
    op.execute(
        "UPDATE event_deliveries SET released_at = COALESCE(delivered_at, last_attempt_at) "
        "WHERE status <> 'withheld' AND (delivered_at IS NOT NULL OR last_status_code IS NOT NULL)"
    )
    # The policy's reasons are in the audit entry of the withholding; the consumer's list
    # is told only that the policy withheld it.
    op.execute(
        "UPDATE event_deliveries SET last_error = 'withheld by policy' "
        "WHERE status = 'withheld' AND last_error LIKE 'withheld by policy%'"
    )


def downgrade() -> None:
    # The list then names every delivery's event and citizen again, as before.
    with op.batch_alter_table("event_deliveries") as batch:
        batch.drop_column("released_at")
