"""The database handle: engine creation for SQLite or PostgreSQL, migrations, transactions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from careline.shared.errors import ConfigError

MIGRATION_LOCK = 0x6361726C  # "carl": the advisory lock key for migrations
# PostgreSQL ends a session left idle inside a transaction this long (seconds) and rolls it
# back. A coordinator process frozen mid-transaction (SIGSTOP, a paused VM, a dropped
# route) would otherwise hold its row locks for good: the agent it was storing could not be
# marked online by the process it reconnected to, nor a rollout it was ticking be advanced.
# Our transactions wait only on the database (slow work runs outside them), so only a
# process that stopped running reaches it.
IDLE_IN_TRANSACTION_TIMEOUT = 15.0
T = TypeVar("T")


def async_url(url: str) -> str:
    """Accept the URLs users write (postgresql://, sqlite:///) and pick the async drivers."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain):]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite:///")):
        return url
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes every commit survive a
    # power cut; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class Database:
    """One engine; `transaction()` for writes, `connect()` for reads.

    SQLite allows one writer at a time, so writes are serialised in-process instead of
    failing with 'database is locked'; PostgreSQL writes run concurrently.
    """

    def __init__(self, url: str,
                 idle_in_transaction_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            timeout_ms = str(int(idle_in_transaction_timeout * 1000))
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args={
                "server_settings": {"idle_in_transaction_session_timeout": timeout_ms}})
        # JSON columns are written by msgspec: it takes protocol Structs (an agent's Health)
        # as they are, with no conversion to dicts first, and encodes in C.
        self.engine: AsyncEngine = create_async_engine(self.url, json_serializer=_json_text,
                                                       **kwargs)
        if self.is_sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @property
    def driver_url(self) -> str:
        """The PostgreSQL URL for a plain asyncpg connection of its own (LISTEN/NOTIFY)."""
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from alembic import command
        from alembic.config import Config

        def upgrade(sync_conn: sa.Connection) -> None:
            config = Config()
            config.set_main_option(
                "script_location", str(resources.files("careline.coordinator") / "migrations")
            )
            config.attributes["connection"] = sync_conn
            command.upgrade(config, "head")

        async with self.transaction() as conn:
            if not self.is_sqlite:  # several coordinators starting at once migrate one by one
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": MIGRATION_LOCK})
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()


def storage_unavailable(exc: BaseException) -> bool:
    """The database did not answer (or was busy): nobody's data was at fault."""
    if isinstance(exc, (OSError, TimeoutError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and "locked" in str(exc)


async def write_isolating(items: Sequence[T], write: Callable[[Sequence[T]], Awaitable[None]],
                          ) -> dict[T, Exception]:
    """Write `items` in one go (`write` is one transaction); if that fails for what they
    hold, split them in halves until the failing items are alone: those, with why. One
    bad agent's data then costs only its own write. Raises if the database itself failed
    (storage_unavailable): nobody's data was at fault."""
    try:
        await write(items)
        return {}
    except Exception as exc:
        if storage_unavailable(exc):
            raise
        if len(items) == 1:
            return {items[0]: exc}
    half = len(items) // 2
    return {**await write_isolating(items[:half], write),
            **await write_isolating(items[half:], write)}
