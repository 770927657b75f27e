"""Rollouts: staged waves of one release over the machines that need it (issue 7)."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        # Local hours when updates may install ("18:00-07:00"); NULL: whenever the product is closed.
        batch.add_column(sa.Column("install_window", sa.String(11)))
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("release_id", sa.Integer, sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("product", sa.String(64), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("effective", sa.Date),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
        sa.Column("percents", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("sent_waves", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("started_by", sa.String(100), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_targeting_at", UTCDateTime),
    )
    op.create_table(
        "rollout_machines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), nullable=False),
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
        # NULL wave: not covered, listed for the sales follow-up and never sent.
        sa.Column("wave", sa.Integer),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id")),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("deadline_incident", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("rollout_id", "agent_id", name="uq_rollout_machines"),
    )
    op.create_index("ix_rollouts_status", "rollouts", ["status"])
