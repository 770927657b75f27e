"""Policy overrides per customer, site and machine (issue 16)."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i16_policy_overrides"
down_revision = "i16_offline_calendar"


def upgrade() -> None:
    op.create_table(
        "policy_overrides",
        sa.Column("id", sa.Integer, primary_key=True),
        # "customer:<id>", "site:<id>" or "machine:<agent id>" (policy/overrides.py)
        sa.Column("target", sa.String(80), nullable=False),
        sa.Column("key", sa.String(120), nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("set_by", sa.String(100), nullable=False),
        sa.Column("set_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("target", "key", name="uq_policy_overrides_target_key"),
    )


def downgrade() -> None:
    op.drop_table("policy_overrides")
