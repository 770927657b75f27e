"""The install-window column becomes the customer level of `rollouts.install_window`
(migration i16b_install_window_override), on SQLite and PostgreSQL: nothing is lost."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import sqlalchemy as sa

from careline.coordinator.storage import service
from careline.coordinator.storage.db import Database

NOW = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


async def upgrade(db: Database, revision: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    def run(sync_conn: sa.Connection) -> None:
        config = Config()
        config.set_main_option(
            "script_location", str(resources.files("careline.coordinator") / "migrations"))
        config.attributes["connection"] = sync_conn
        (command.downgrade if down else command.upgrade)(config, revision)

    async with db.transaction() as conn:
        await conn.run_sync(run)


async def test_customer_windows_move_into_the_override_layer(database: str) -> None:
    db = Database(database)
    try:
        await upgrade(db, "i16_distinct_machines")
        async with db.transaction() as conn:
            for name, window in (("Shop", "18:00-07:00"), ("Clinic", None)):
                await conn.execute(sa.text(
                    "INSERT INTO customers (name, timezone, created_at, install_window)"
                    " VALUES (:name, 'Asia/Ho_Chi_Minh', :now, :window)"),
                    {"name": name, "now": NOW.replace(tzinfo=None), "window": window})
            ids: dict[str, int] = dict((await conn.execute(sa.text("SELECT name, id FROM customers"))).all())
        await db.migrate()
        async with db.connect() as conn:
            found = await service.overrides_by_target(conn)
            columns = [c["name"] for c in await conn.run_sync(
                lambda sync: sa.inspect(sync).get_columns("customers"))]
        assert found == {f"customer:{ids['Shop']}": {"rollouts.install_window": "18:00-07:00"}}
        assert "install_window" not in columns

        # Downgrading puts the customer's window back in its column.
        await upgrade(db, "i16_distinct_machines", down=True)
        async with db.connect() as conn:
            back: dict[str, str | None] = dict((await conn.execute(sa.text(
                "SELECT name, install_window FROM customers"))).all())
            left = await service.overrides_by_target(conn)
        assert back == {"Shop": "18:00-07:00", "Clinic": None}
        assert left == {}
    finally:
        await db.close()
