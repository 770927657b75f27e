"""Creating a data directory and running the server process (signals, event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
import signal
from pathlib import Path
from typing import Any

from careline.coordinator.datadir import DataDir, Settings, resolve
from careline.coordinator.pki import create_pki
from careline.shared.errors import ConfigError
from careline.shared.keys import cert_fingerprint, new_token, token_hash


def initialise(
    data: str | None, hostnames: list[str], *, listen: str | None, database: str | None,
    public_url: str | None, heartbeat_interval: float | None,
) -> dict[str, Any]:
    """Create the data dir; refuse to touch an existing one (its CA is pinned by agents)."""
    datadir = DataDir(resolve(data))
    if datadir.exists() or datadir.pki.exists():
        raise ConfigError(f"{datadir.path} already holds a Careline data dir; refusing to overwrite")
    defaults = Settings()
    settings = Settings(
        listen=listen or defaults.listen, database=database or defaults.database,
        public_url=public_url or defaults.public_url,
        heartbeat_interval=heartbeat_interval or defaults.heartbeat_interval,
    )
    settings.listen_host_port()  # validate before creating anything
    os.umask(0o077)  # everything in the data dir is the coordinator's alone
    datadir.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_pki(datadir.pki, hostnames)
    from careline.coordinator.updates import instruction_key

    instruction_key(datadir.path)  # one key for every process and copy of this data dir
    admin_token = new_token("clt")
    local_token = new_token("clt")
    asyncio.run(_create_database(datadir, settings, admin_token, local_token))
    fd = os.open(datadir.local_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(local_token + "\n")
    datadir.write_settings(settings)
    datadir.restrict_files()
    return {
        "data": str(datadir.path), "ca_fingerprint": cert_fingerprint(datadir.ca_file.read_bytes()),
        "admin_token": admin_token, "hostnames": hostnames,
    }


async def _create_database(
    datadir: DataDir, settings: Settings, admin_token: str, local_token: str
) -> None:
    from careline.coordinator.storage import fleet as store
    from careline.coordinator.storage.db import Database

    db = Database(datadir.database_url(settings))
    try:
        await db.migrate()
        now = dt.datetime.now(dt.UTC)
        async with db.transaction() as conn:
            await store.add_technician(conn, "admin", "admin", token_hash(admin_token), now)
            # The CLI run next to the server (same OS user) acts as this account.
            await store.add_technician(conn, "local-admin", "admin", token_hash(local_token), now)
            await store.record_audit(
                conn, actor="careline init", action="coordinator.init", target=str(datadir.path),
                detail={}, now=now,
            )
    finally:
        await db.close()


# The cyclic garbage collector's thresholds for a process holding thousands of connections
# (Python's defaults: 700, 10, 10). Each connection keeps a few hundred tracked objects, and
# with the defaults every heartbeat's report, alive for the second until the flush, reached
# the oldest generation; its full collections, each walking every connection's objects,
# took 28 % of the CPU during a 10,000-agent heartbeat blast. A young generation of 50,000
# allocations, and a middle one collected every 20 of those, let short-lived objects die
# young; full collections stay as Python schedules them (after 25 % growth).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collector settings for a server process (also used by the benchmarks' bare server,
    so that its baseline runs under the same settings). What exists at start-up (modules,
    tables, policy) is moved out of the collector's way for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve_forever(data: str | None, *, listen: str | None, database: str | None,
                  policy: str | None, verbose: bool, web: str | None = None,
                  health_listen: str | None = None) -> None:
    from careline.coordinator.server import run_coordinator

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from careline.shared.logs import use_safe_formatter

    use_safe_formatter()  # agents and clients choose some of what is logged
    logging.getLogger("careline.coordinator").setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    datadir = DataDir(resolve(data)).require()
    os.umask(0o077)  # new files (database WAL, releases, uploads): the coordinator's alone
    datadir.restrict_files()
    from careline.shared import __version__

    logging.getLogger("careline.coordinator").info("Careline %s coordinator starting, data %s",
                                                   __version__, datadir.path)
    settings = datadir.settings(listen=listen, database=database, policy=policy, web=web,
                                health_listen=health_listen)
    from careline.coordinator.policy.config import load_policy

    load_policy(Path(settings.policy) if settings.policy else None)  # refuse a bad file now

    tune_gc()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(signum, stop.set)
        await run_coordinator(datadir, settings, stop)

    try:
        import uvloop  # far less memory per TLS connection than asyncio's own loop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
