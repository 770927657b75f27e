"""A reinstalled machine is the same machine (issue 16): hardware identity, key history."""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i16_hardware_identity"
down_revision = "i16_policy_overrides"


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        # Hashed hardware identity (shared.hardware) reported at enrollment.
        batch.add_column(sa.Column("hw_uuid", sa.String(64)))
        batch.add_column(sa.Column("hw_serial", sa.String(64)))
        batch.add_column(sa.Column("hw_disk", sa.String(64)))
        batch.add_column(sa.Column("hw_mac", sa.String(64)))
        # The id of the key the machine holds now (agent_id_for(public_key)): the machine id
        # stays when a reinstall brings a new key.
        batch.add_column(sa.Column("key_id", sa.String(40)))
        batch.add_column(sa.Column("key_changed_at", UTCDateTime))
        # A machine found to be a reinstall of another: its key moved there.
        batch.add_column(sa.Column("replaced_by", sa.String(40)))
    op.execute("UPDATE agents SET key_id = id")
    op.create_index("ix_agents_key_id", "agents", ["key_id"], unique=True)
    for field in ("uuid", "disk"):
        op.create_index(f"ix_agents_hw_{field}", "agents", ["customer_id", f"hw_{field}"])


def downgrade() -> None:
    for field in ("uuid", "disk"):
        op.drop_index(f"ix_agents_hw_{field}", "agents")
    op.drop_index("ix_agents_key_id", "agents")
    with op.batch_alter_table("agents") as batch:
        for column in ("replaced_by", "key_changed_at", "key_id", "hw_mac", "hw_disk",
                       "hw_serial", "hw_uuid"):
            batch.drop_column(column)
