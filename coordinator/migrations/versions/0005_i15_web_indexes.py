"""Indexes the web console's lists and the care report read by (issue 15)."""

from alembic import op

revision = "i15_web_indexes"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("ix_incidents_status_id", "incidents", ["status", "id"])
    op.create_index("ix_incidents_customer_opened", "incidents", ["customer_id", "opened_at"])
    op.create_index("ix_decisions_incident", "decisions", ["incident_id", "id"])
    op.create_index("ix_visits_customer", "visits", ["customer_id", "due_at"])
    op.create_index("ix_job_machines_status_finished", "job_machines", ["status", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_job_machines_status_finished", "job_machines")
    op.drop_index("ix_visits_customer", "visits")
    op.drop_index("ix_decisions_incident", "decisions")
    op.drop_index("ix_incidents_customer_opened", "incidents")
    op.drop_index("ix_incidents_status_id", "incidents")
