"""Install windows move into the policy override layers (issue 16 part 3).

A customer's window was a column of its own; it is now the customer-level override of
`rollouts.install_window`, so sites and machines can have their own and `policy show`
names where each machine's comes from. One place of truth: the column goes.
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

from careline.coordinator.storage.schema import UTCDateTime

revision = "i16b_install_window_override"
down_revision = "i16_distinct_machines"

KEY = "rollouts.install_window"
_customers = sa.table("customers", sa.column("id", sa.Integer),
                      sa.column("install_window", sa.String(11)))
_overrides = sa.table("policy_overrides", sa.column("target", sa.String(80)),
                      sa.column("key", sa.String(120)), sa.column("value", sa.JSON),
                      sa.column("set_by", sa.String(100)), sa.column("set_at", UTCDateTime))


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_customers.c.id, _customers.c.install_window)
                        .where(_customers.c.install_window.is_not(None))).all()
    now = dt.datetime.now(dt.UTC)
    if rows:
        op.bulk_insert(_overrides, [
            {"target": f"customer:{cid}", "key": KEY, "value": window,
             "set_by": "migration i16b", "set_at": now}
            for cid, window in rows])
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("install_window")


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("install_window", sa.String(11)))
    conn = op.get_bind()
    rows = conn.execute(sa.select(_overrides.c.target, _overrides.c.value).where(
        _overrides.c.key == KEY, _overrides.c.target.like("customer:%"))).all()
    for owner, window in rows:
        if window != "any":
            conn.execute(_customers.update().where(
                _customers.c.id == int(owner.split(":")[1])).values(install_window=window))
    conn.execute(_overrides.delete().where(_overrides.c.key == KEY))
