"""Baselines: ``visible_from`` (when a key became known, as of delivery); objects by delivery time.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from trailguard.store import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("baselines") as batch:
        batch.add_column(sa.Column("visible_from", UTCDateTime))
    # Rows from before: their first occurrence was delivered minutes after it happened.
    op.execute("UPDATE baselines SET visible_from = first_seen")
    with op.batch_alter_table("baselines") as batch:
        batch.alter_column("visible_from", existing_type=UTCDateTime, nullable=False)
    op.create_index("ix_objects_delivered_at", "objects", ["delivered_at"])


def downgrade() -> None:
    op.drop_index("ix_objects_delivered_at", "objects")
    with op.batch_alter_table("baselines") as batch:
        batch.drop_column("visible_from")
