"""Alerts: a claimed_at column (so sent_at only means "sent"); time indexes for health checks.

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

INDEXES = [
    ("ix_objects_account_region_delivered", "objects", ["account_id", "region", "delivered_at"]),
    ("ix_objects_processed_at", "objects", ["processed_at"]),
    ("ix_quarantine_created_at", "quarantine", ["created_at"]),
    ("ix_alerts_fired_at", "alerts", ["fired_at"]),
]


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("claimed_at", UTCDateTime))
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in INDEXES:
        op.drop_index(name, table)
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("claimed_at")
