"""Indexes the web console's lists and the care report read by, and each technician's
console language (issue 15)."""

import sqlalchemy as sa
from alembic import op

revision = "i15_web_indexes"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("technicians") as batch:
        # "vi" or "en" once chosen in the console; NULL: the browser's language.
        batch.add_column(sa.Column("language", sa.String(5)))
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
    with op.batch_alter_table("technicians") as batch:
        batch.drop_column("language")
