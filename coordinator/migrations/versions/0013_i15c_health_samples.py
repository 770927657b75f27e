"""Machine health history (issue 15): one sample per agent every few minutes at most, kept
for a bounded time, for the machine page and `careline agents history`."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i15c_health_samples"
down_revision = "i16b_install_window_override"


def upgrade() -> None:
    op.create_table(
        "health_samples",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("cpu_percent", sa.Float, nullable=False),
        sa.Column("memory_percent", sa.Float, nullable=False),
        sa.Column("disk_free_percent", sa.Float),
        sa.Column("disk_free", sa.BigInteger),
        sa.Column("problems", sa.JSON, nullable=False),
    )
    op.create_index("ix_health_samples_agent_at", "health_samples", ["agent_id", "at"])
    op.create_index("ix_health_samples_at", "health_samples", ["at"])


def downgrade() -> None:
    op.drop_index("ix_health_samples_at", "health_samples")
    op.drop_index("ix_health_samples_agent_at", "health_samples")
    op.drop_table("health_samples")
