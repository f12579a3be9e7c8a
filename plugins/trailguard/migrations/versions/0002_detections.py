"""Detections: baselines, watermarks, the alert ledger/outbox, pipeline-health incidents.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from trailguard.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "baselines",
        sa.Column("detection_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("alert_key", sa.String(512), nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("attrs", sa.Text, nullable=False),
    )
    op.create_index("ix_baselines_alert_key", "baselines", ["detection_id", "alert_key"])
    op.create_table(
        "watermarks",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("value", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("detection_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("fired_at", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("slack_reply", sa.Text),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("possible_duplicate", sa.Boolean, nullable=False),
        sa.UniqueConstraint("detection_id", "key", "first_seen", name="uq_alerts_detection_key_first_seen"),
    )
    op.create_index("ix_alerts_status", "alerts", ["status"])
    op.create_table(
        "health_incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("opened_at", UTCDateTime, nullable=False),
        sa.Column("last_seen_at", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("open_notified", sa.Boolean, nullable=False),
        sa.Column("close_notified", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("health_incidents")
    op.drop_index("ix_alerts_status", "alerts")
    op.drop_table("alerts")
    op.drop_table("watermarks")
    op.drop_index("ix_baselines_alert_key", "baselines")
    op.drop_table("baselines")
