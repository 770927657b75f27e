"""The web console (issue 15): its sessions, each technician's language, and indexes its lists
and the care report read by."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i15_web_console"
down_revision = "i14_notify"


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        # SHA-256 of the cookie's random id: the table alone does not let anyone sign in.
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),  # the technician's
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("lang", sa.String(5), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("flash", sa.JSON, nullable=False),
    )
    op.create_index("ix_web_sessions_token", "web_sessions", ["token_hash"])
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
    op.drop_table("web_sessions")
