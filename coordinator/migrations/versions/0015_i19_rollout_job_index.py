"""Rollout machines by job (issue 19): a job result settles its rollout machine in the
transaction that stores it, by job id, instead of waiting for the next rollout tick."""

from alembic import op

revision = "i19_rollout_job_index"
down_revision = "i15d_decision_explanation"


def upgrade() -> None:
    op.create_index("ix_rollout_machines_job", "rollout_machines", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_machines_job", "rollout_machines")
