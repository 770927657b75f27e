"""Nights are not incidents (issue 16): customer closures, clean stops, paused due clocks."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i16_offline_calendar"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "customer_closures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("first_day", sa.Date, nullable=False),
        sa.Column("last_day", sa.Date, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_customer_closures_customer", "customer_closures", ["customer_id"])
    with op.batch_alter_table("agents") as batch:
        # When the agent last stopped cleanly (the PC was shut down); "off" until it connects.
        batch.add_column(sa.Column("off_at", UTCDateTime))
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("waiting_on", sa.String(40)))
    op.create_table(
        "incident_waits",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("on_whom", sa.String(40), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("started_by", sa.String(100), nullable=False),
        sa.Column("ended_at", UTCDateTime),
        sa.Column("ended_by", sa.String(100)),
    )
    op.create_index("ix_incident_waits_incident", "incident_waits", ["incident_id"])


def downgrade() -> None:
    op.drop_table("incident_waits")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("waiting_on")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("off_at")
    op.drop_table("customer_closures")
