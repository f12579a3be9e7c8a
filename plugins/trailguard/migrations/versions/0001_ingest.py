"""Ingest: object ledger, quarantine, lake partitions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from trailguard.store import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "objects",
        sa.Column("uri", sa.String(2048), primary_key=True),
        sa.Column("etag", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("account_id", sa.String(64)),
        sa.Column("region", sa.String(64)),
        sa.Column("delivered_at", UTCDateTime),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("processed_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("object_uri", sa.String(2048), nullable=False),
        sa.Column("record_index", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("excerpt", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_quarantine_object_uri", "quarantine", ["object_uri"])
    op.create_table(
        "lake_partitions",
        sa.Column("partition", sa.String(32), primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("max_delivered_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lake_partitions")
    op.drop_index("ix_quarantine_object_uri", "quarantine")
    op.drop_table("quarantine")
    op.drop_table("objects")
