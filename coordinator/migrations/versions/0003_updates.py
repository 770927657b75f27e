"""Updates: releases, jobs, each machine's part of a job and its steps (issue 6)."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("product", sa.String(64), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("regulation_ref", sa.Text),
        sa.Column("effective", sa.Date),
        sa.Column("notes", sa.Text),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("published_by", sa.String(100), nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("product", "version", name="uq_releases_product_version"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("product", sa.String(64)),
        sa.Column("version", sa.String(40)),
        sa.Column("delivery", sa.String(20), nullable=False),
        sa.Column("stop_product", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "job_machines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=False),
        sa.Column("ref", sa.String(80), nullable=False, unique=True),
        sa.Column("product", sa.String(64)),
        sa.Column("version", sa.String(40)),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("outcome", sa.String(40)),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.UniqueConstraint("job_id", "agent_id", name="uq_job_machines_job_agent"),
    )
    op.create_index("ix_job_machines_agent_open", "job_machines", ["agent_id", "finished_at"])
    op.create_table(
        "job_steps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_machine_id", sa.Integer, sa.ForeignKey("job_machines.id"),
                  nullable=False),
        sa.Column("step", sa.String(40), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_job_steps_machine", "job_steps", ["job_machine_id"])


def downgrade() -> None:
    op.drop_table("job_steps")
    op.drop_table("job_machines")
    op.drop_table("jobs")
    op.drop_table("releases")
