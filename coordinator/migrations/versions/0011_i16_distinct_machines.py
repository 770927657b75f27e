"""Proposed reinstalls a technician found to be different PCs (issue 16)."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i16_distinct_machines"
down_revision = "i15_web_console"


def upgrade() -> None:
    op.create_table(
        "distinct_machines",
        sa.Column("old_id", sa.String(40), sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("new_id", sa.String(40), sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("decided_by", sa.String(100), nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("distinct_machines")
