"""Notifications: channels, recipients, routes and the durable outbox (issue 14)."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i14_notify"
down_revision = "i11_rollout_targeting"


def upgrade() -> None:
    op.create_table(
        "notify_channels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("secret", sa.Text, nullable=False, server_default=""),
        sa.Column("rate_per_minute", sa.Integer, nullable=False),
        sa.Column("healthy", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("last_success_at", UTCDateTime),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "notify_recipients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("channel_id", sa.Integer, sa.ForeignKey("notify_channels.id"), nullable=False),
        sa.Column("address", sa.String(255), nullable=False, server_default=""),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("workdays", sa.String(40), nullable=False),
        sa.Column("opens", sa.String(5), nullable=False),
        sa.Column("closes", sa.String(5), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
        sa.Column("technician", sa.String(100)),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "notify_routes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("recipient_id", sa.Integer, sa.ForeignKey("notify_recipients.id"),
                  nullable=False),
        sa.Column("events", sa.String(400), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id")),
        sa.Column("min_severity", sa.String(20), nullable=False),
        sa.Column("kinds", sa.String(400), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("recipient_id", sa.Integer, sa.ForeignKey("notify_recipients.id"),
                  nullable=False),
        sa.Column("channel_id", sa.Integer, sa.ForeignKey("notify_channels.id"), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("customer_id", sa.Integer),
        sa.Column("thread", sa.String(80), nullable=False, server_default=""),
        sa.Column("fold_key", sa.String(160)),
        sa.Column("facts", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claim", sa.String(40)),
        sa.Column("claimed_until", UTCDateTime),
        sa.Column("delivery", sa.String(60)),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("last_error", sa.Text),
        sa.Column("digest_id", sa.Integer),
    )
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_at"])
    op.create_index("ix_notifications_thread", "notifications", ["recipient_id", "thread"])
