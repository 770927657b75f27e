"""Rollouts never miss a covered machine (issue 11): what re-targeting needs to be cheap.

- agents.versions_at: when the coordinator itself last set the machine's product versions
  (an install, rollback or reinstall result). A heartbeat received before that carries an
  older view and does not overwrite the health report.
- agents.targeting_changed_at: when anything a rollout's targeting reads last changed for
  this machine (versions, contract, maintenance). Open rollouts re-target only the machines
  changed since their last look, through this index.
"""

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i11_rollout_targeting"
down_revision = "i16_hardware_identity"


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("versions_at", UTCDateTime))
        batch.add_column(sa.Column("targeting_changed_at", UTCDateTime))
    op.create_index("ix_agents_targeting_changed_at", "agents", ["targeting_changed_at"])
    with op.batch_alter_table("rollout_machines") as batch:
        # The version the machine reported when targeted (NULL: unknown), for `rollouts show`.
        batch.add_column(sa.Column("from_version", sa.String(40)))
