"""Alerts: a claimed_at column, so sent_at only ever means "sent".

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from trailguard.store import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("claimed_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("claimed_at")
