"""The coordinator's side of updates (issue 6): repository, package store, jobs, downloads.

    DATA/releases/keys/           online TUF keys (snapshot, timestamp), made here
    DATA/releases/metadata/       the TUF repository agents fetch over their websocket
    DATA/releases/instruction.key the coordinator's instruction-signing key (Uptane director)
    DATA/releases/packages/ab/<sha256>   packages, content-addressed, streamed from disk
    DATA/releases/uploads/        packages being uploaded by `careline release publish`

A job (`create_job`) names machines; each machine's part is sent as a typed Command
(InstallPackage / ReinstallProduct / VerifyIntegrity) when the agent is connected, and again
on every reconnect until the agent's durable result event closes it. The agent fetches TUF
metadata (FetchMetadata) and the package in chunks from an offset (Download), so a broken
download resumes where it stopped. Packages are read from disk chunk by chunk and at most
DOWNLOAD_SLOTS downloads run at once, so memory does not grow with the number of agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection
from websockets.exceptions import ConnectionClosed

from careline.coordinator.notify.events import notify_job_result
from careline.coordinator.storage import fleet as fleet_store
from careline.coordinator.storage import updates as store
from careline.shared import protocol as p
from careline.shared.errors import ConfigError, Conflict, NotFound, ProtocolError
from careline.shared.files import fsync_dir
from careline.shared.instruction import Instruction, sign_instruction
from careline.shared.keys import (
    load_or_create_private_key,
    public_bytes,
    root_pin,
)
from careline.shared.trust import OnlineRepository

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from careline.coordinator.hub import AgentHub, AgentLink
    from careline.coordinator.storage.db import Database

log = logging.getLogger("careline.coordinator.updates")

JobKind = Literal["update", "reinstall", "verify"]
# Concurrent package streams, and the piece read from disk and sent per message: together
# they bound the memory a fan-out takes (each stream holds about a piece in TLS buffers).
DOWNLOAD_SLOTS = 32
SEND_CHUNK = 64 << 10
# A download whose agent stops reading gives its slot back after this long, and one agent
# streams at most this many packages at once: a stalled or greedy agent cannot hold the
# slots every other machine's update waits for. The agent resumes from its offset.
SEND_STALL_SECONDS = 30.0
MAX_DOWNLOADS_PER_AGENT = 2
INSTRUCTION_LIFETIME = dt.timedelta(days=7)
DISPATCH_SWEEP_SECONDS = 2.0
# update_result outcomes whose `version` is what the machine runs afterwards: installed (an
# update or a reinstall) and rolled back (the version it went back to).
VERSION_OUTCOMES = frozenset({"installed", "rolled_back"})
RENEW_CHECK_SECONDS = 60.0
# Durable events that move a job part on (update_step) or finish it.
JOB_EVENT_KINDS = frozenset({"update_step", "update_result", "verify_result"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PackageStore:
    """Packages on disk named by their sha256; never held in memory whole."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, source: Path, sha256: str) -> Path:
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            source.unlink()
        else:
            os.replace(source, dest)
            fsync_dir(dest.parent)
        return dest


# An upload (`releases.upload` pieces) untouched this long was abandoned: its .part goes.
UPLOAD_MAX_AGE_SECONDS = 24 * 3600.0
PRUNE_UPLOADS_SECONDS = 3600.0


def prune_uploads(directory: Path, now: float, max_age: float = UPLOAD_MAX_AGE_SECONDS) -> int:
    """Delete abandoned upload pieces (`*.part` not written to for `max_age` seconds);
    returns how many. A publish in progress keeps writing its file, so it is never old."""
    removed = 0
    for path in directory.glob("*.part") if directory.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > max_age:
                path.unlink()
                removed += 1
    return removed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- job creation
async def create_job(
    conn: AsyncConnection, *, kind: JobKind, agent_ids: Sequence[str], actor: str,
    product: str | None = None, version: str | None = None, reason: str | None = None,
    stop_product: bool = False, delivery: str = "network", now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Record a job for `agent_ids` in the caller's transaction and return it.

    kind "update": install release `version` (of `product`, needed only when several products
    have that version). "reinstall": a clean copy of `version`, by default the version each
    machine reports for `product` (or the newest release). "verify": re-check installed files.
    Connected agents get it within seconds of commit (the dispatch sweep), or at once when the
    caller then awaits `UpdateService.dispatch(job_id)`; offline ones when they connect.
    """
    now = now or utcnow()
    if kind not in ("update", "reinstall", "verify"):
        raise ConfigError(f"unknown job kind {kind!r}")
    if not agent_ids:
        raise ConfigError("the job names no machine")
    machines = []
    for agent_id in agent_ids:
        machine = await fleet_store.agent_by_id(conn, agent_id) or await fleet_store.get_agent(
            conn, agent_id)  # technicians may give a prefix or a hostname
        machines.append(machine)
        if machine.revoked_at is not None:
            raise Conflict(f"agent {machine.id} is revoked")
    plans: list[tuple[fleet_store.Agent, str | None, str | None]] = []
    if kind == "update":
        if not version:
            raise ConfigError("an update needs --version")
        release = await _one_release(conn, product, version)
        plans = [(m, release.product, release.version) for m in machines]
        product = release.product
    elif kind == "reinstall":
        for machine in machines:
            name = product or _only_product(machine) or await _only_released_product(conn)
            wanted = version or _reported_version(machine, name)
            if wanted is None or not await store.find_releases(conn, name, wanted):
                releases = await store.find_releases(conn, name, None)
                if version or not releases:
                    raise NotFound(f"no release of {name} {wanted or ''} to reinstall".strip())
                wanted = releases[-1].version
            plans.append((machine, name, wanted))
    else:
        plans = [(m, product, None) for m in machines]
    job_id = await store.insert_job(
        conn, kind=kind, product=product, version=version, delivery=delivery,
        created_by=actor, reason=reason, now=now, stop_product=stop_product,
    )
    status = "bundled" if delivery == "media" else "pending"
    parts = []
    for machine, part_product, part_version in plans:
        ref = await store.insert_job_machine(
            conn, job_id=job_id, agent_id=machine.id, product=part_product,
            version=part_version, status=status, now=now,
        )
        parts.append({"ref": ref, "agent_id": machine.id, "status": status,
                      "hostname": machine.hostname, "product": part_product,
                      "version": part_version})
    await fleet_store.record_audit(
        conn, actor=actor, action=f"job.{kind}", target=f"job:{job_id}",
        detail={"machines": [m.id for m in machines], "product": product,
                "version": version, "reason": reason, "delivery": delivery},
        now=now,
    )
    return {"id": job_id, "kind": kind, "product": product, "version": version,
            "delivery": delivery, "created_by": actor, "created_at": now, "machines": parts}


async def _one_release(conn: AsyncConnection, product: str | None, version: str) -> store.Release:
    found = await store.find_releases(conn, product, version)
    if not found:
        raise NotFound(f"no published release {product + ' ' if product else ''}{version}")
    if len(found) > 1:
        names = ", ".join(r.product for r in found)
        raise Conflict(f"version {version} exists for {names}; pass --product")
    return found[0]


def _only_product(machine: fleet_store.Agent) -> str | None:
    products = [pr["name"] for pr in machine.products]
    return products[0] if len(products) == 1 else None


async def _only_released_product(conn: AsyncConnection) -> str:
    products: list[str] = sorted({r.product for r in await store.list_releases(conn)})
    if len(products) != 1:
        raise ConfigError("name the product with --product")
    return products[0]


def _reported_version(machine: fleet_store.Agent, product: str) -> str | None:
    for reported in machine.products:
        if reported["name"] == product:
            version = reported.get("version")
            return None if version is None else str(version)
    return None


# ----------------------------------------------------------------------------- service
def instruction_key(data: Path) -> Ed25519PrivateKey:
    """The key job instructions are signed with (agents learn it at enrollment): made by
    `careline init`, so every process of a scale-out and every copy of the data dir has
    the same one; data dirs from before get it at their first start."""
    return load_or_create_private_key(data / "releases" / "instruction.key")


ResultHook = Callable[[AsyncConnection, store.JobPart, str, dt.datetime], Awaitable[None]]


class UpdateService:
    def __init__(self, db: Database, data: Path, hub: AgentHub) -> None:
        self.db = db
        self.hub = hub
        self.dir = data / "releases"
        self.repo = OnlineRepository(self.dir)
        self.packages = PackageStore(self.dir / "packages")
        self.uploads = self.dir / "uploads"
        self.instruction_key = instruction_key(data)
        # job ref -> (bytes sent, total): live progress for `jobs show`.
        self.progress: dict[str, tuple[int, int]] = {}
        self._streams: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._repo_lock: asyncio.Lock | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._reconnected: set[str] = set()  # agents to re-send unfinished jobs to
        self._sending: set[str] = set()  # job part refs a dispatch is sending now
        self._last_renew = 0.0
        self._releases: dict[tuple[str, str], store.Release] = {}
        # Called in the transaction that stores a job part's result (Rollouts settles its
        # machine there): (conn, job part row, outcome, now).
        self.result_hooks: list[ResultHook] = []

    # ------------------------------------------------------------------ helpers
    @property
    def repo_lock(self) -> asyncio.Lock:
        if self._repo_lock is None:
            self._repo_lock = asyncio.Lock()
        return self._repo_lock

    def enrollment_trust(self) -> dict[str, bytes]:
        """Fields of Enrolled: the TUF root (once release keys exist) and the instruction key."""
        try:
            root = self.repo.enrollment_root()
        except ConfigError:
            root = b""
        return {"tuf_root": root, "instruction_key": public_bytes(self.instruction_key)}

    def root_pin(self) -> str:
        """What join strings pin: the hash of the first release root ("" before release keys)."""
        root = self.enrollment_trust()["tuf_root"]
        return root_pin(root) if root else ""

    async def _release(self, product: str, version: str) -> store.Release:
        key = (product, version)
        if key not in self._releases:
            async with self.db.connect() as conn:
                found = await store.find_releases(conn, product, version)
            if not found:
                raise NotFound(f"release {product} {version} is not published")
            self._releases[key] = found[0]
        return self._releases[key]

    # ------------------------------------------------------------------ dispatch
    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        """Send jobs created elsewhere (e.g. by an incident decision) to connected agents,
        and every unfinished job to agents that connected since the last sweep."""
        pruned_at = -PRUNE_UPLOADS_SECONDS
        while True:
            await asyncio.sleep(DISPATCH_SWEEP_SECONDS)
            if time.monotonic() - pruned_at >= PRUNE_UPLOADS_SECONDS:
                pruned_at = time.monotonic()
                try:
                    if removed := await asyncio.to_thread(prune_uploads, self.uploads, time.time()):
                        log.info("removed %d abandoned package upload(s)", removed)
                except OSError:
                    log.exception("pruning abandoned uploads failed")
            reconnected, self._reconnected = self._reconnected, set()
            try:
                await self.dispatch(statuses=("pending",))
                if reconnected:
                    await self.dispatch(agent_ids=reconnected)
            except Exception:
                self._reconnected |= reconnected  # their jobs go out with the next sweep
                log.exception("dispatching jobs failed; will retry")

    async def close(self) -> None:
        """At shutdown: stop the sweeper and the download streams, and wait for them."""
        tasks = [t for t in (self._sweeper, *self._streams.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def on_agent_connected(self, agent_id: str) -> None:
        """Called once an agent is authenticated: its unfinished jobs go out with the next
        sweep, in one query for every agent that connected meanwhile (a reconnect storm
        costs no query per agent)."""
        self._ensure_sweeper()
        self._reconnected.add(agent_id)

    async def dispatch(
        self, job_id: int | None = None, agent_ids: Collection[str] | None = None,
        statuses: Sequence[str] | None = None,
    ) -> int:
        """Send unfinished machine parts to their agents if connected; returns how many."""
        self._ensure_sweeper()
        async with self.db.connect() as conn:
            rows = await store.open_job_machines(
                conn, agent_ids=agent_ids, job_id=job_id, statuses=statuses)
        # A part another dispatch is sending right now (a sweep beside a rollout tick) is
        # left to it: each machine gets each send once.
        rows = [row for row in rows if row.ref not in self._sending]
        self._sending.update(row.ref for row in rows)
        try:
            return await self._send_parts(rows)
        finally:
            self._sending.difference_update(row.ref for row in rows)

    async def _send_parts(self, rows: list[store.JobPart]) -> int:
        sent: list[store.JobPart] = []
        failed: list[tuple[store.JobPart, str]] = []
        for row in rows:
            if row.agent_id not in self.hub.links:
                continue
            try:
                action = await self._action(row)
            except NotFound as exc:
                failed.append((row, str(exc)))
                continue
            if await self.hub.send(row.agent_id, action):
                sent.append(row)
        newly_sent = [row for row in sent if row.status == "pending"]
        if newly_sent or failed:  # one transaction for the whole fan-out
            async with self.db.transaction() as conn:
                now = utcnow()
                for row in newly_sent:
                    await store.set_status(conn, row, "sent", now)
                for row, reason in failed:
                    await store.set_status(conn, row, "failed", now, reason)
        return len(sent)

    async def _action(self, row: store.JobPart) -> p.Action:
        if row.kind == "verify":
            return p.VerifyIntegrity(job=row.ref, product=row.product)
        signed = await self.instruction_for(row)
        if row.kind == "update":
            return p.InstallPackage(job=row.ref, instruction=signed)
        return p.ReinstallProduct(job=row.ref, instruction=signed)

    async def instruction_for(
        self, row: store.JobPart, lifetime: dt.timedelta = INSTRUCTION_LIFETIME,
    ) -> bytes:
        return sign_instruction(self.instruction_key, await self.make_instruction(row, lifetime))

    async def make_instruction(
        self, row: store.JobPart, lifetime: dt.timedelta = INSTRUCTION_LIFETIME,
    ) -> Instruction:
        if row.product is None or row.version is None:  # a verify part has no package
            raise ConfigError(f"job {row.ref} installs no release")
        release = await self._release(row.product, row.version)
        now = utcnow()
        return Instruction(
            job_id=row.ref, machine_id=row.agent_id, product=release.product,
            version=release.version, target=release.target, sha256=release.sha256,
            length=int(release.length),
            action="install" if row.kind == "update" else "reinstall",
            stop_product=row.stop_product, issued_at=now,
            expires_at=now + lifetime,
        )

    # ------------------------------------------------------------------ agent messages
    async def handle(self, link: AgentLink, message: Any) -> None:
        if isinstance(message, p.FetchMetadata):
            await self._renew_if_due()
            link.session.reply_metadata(message.id, self.repo.read_metadata(message.name))
            await link.flush()
        elif isinstance(message, p.Download):
            await self._start_download(link, message)
        else:  # pragma: no cover - the server dispatches only the two above
            raise ProtocolError(f"unexpected {type(message).__name__}")

    async def _renew_if_due(self) -> None:
        if time.monotonic() - self._last_renew < RENEW_CHECK_SECONDS:
            return
        self._last_renew = time.monotonic()
        async with self.repo_lock:
            with contextlib.suppress(ConfigError):
                await asyncio.to_thread(self.repo.renew)

    async def _start_download(self, link: AgentLink, message: p.Download) -> None:
        others = [job for agent, job in self._streams if agent == link.agent_id and job != message.job]
        if len(others) >= MAX_DOWNLOADS_PER_AGENT:
            await self._refuse_download(
                link, message, f"this machine already downloads {len(others)} packages; retry later")
            return
        async with self.db.connect() as conn:
            row = await store.get_job_machine(conn, message.job)
        if (row is None or row.agent_id != link.agent_id or row.product is None
                or row.version is None):  # a verify part has no package to download
            await self._refuse_download(link, message, f"no download {message.job} for this agent")
            return
        if row.finished_at is not None:
            await self._refuse_download(link, message, f"job {message.job} is finished ({row.status})")
            return
        release = await self._release(row.product, row.version)
        length = int(release.length)
        if not 0 <= message.offset <= length:
            await self._refuse_download(
                link, message, f"offset {message.offset} outside the {length}-byte package")
            return
        key = (link.agent_id, message.job)
        previous = self._streams.pop(key, None)
        if previous is not None:  # stopped and awaited: no two streams of one job interleave
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        task = asyncio.create_task(
            self._stream(link, message.job, self.packages.path(release.sha256),
                         message.offset, length)
        )
        self._streams[key] = task
        task.add_done_callback(lambda t: self._streams.pop(key, None)
                               if self._streams.get(key) is t else None)

    @staticmethod
    async def _refuse_download(link: AgentLink, message: p.Download, error: str) -> None:
        link.session.send_chunk(message.job, message.offset, error=error)
        await link.flush()

    async def _stream(self, link: AgentLink, job: str, path: Path, offset: int,
                      length: int) -> None:
        """Send the package from `offset`, one chunk at a time, read from disk as it goes."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self.progress[job] = (offset, length)
        try:
            async with self._slots:
                with await asyncio.to_thread(open, path, "rb") as f:
                    f.seek(offset)
                    while offset < length:  # disk reads off the event loop
                        data = await asyncio.to_thread(f.read, min(SEND_CHUNK, length - offset))
                        if not data:
                            raise OSError(f"{path} is shorter than its release says")
                        link.session.send_chunk(job, offset, data)
                        await asyncio.wait_for(link.flush(), SEND_STALL_SECONDS)
                        offset += len(data)
                        self.progress[job] = (offset, length)
        except ConnectionClosed:
            return
        except TimeoutError:
            log.warning("download %s stalled: %s read nothing for %.0f s; its slot is freed",
                        job, link.agent_id, SEND_STALL_SECONDS)
            return
        except OSError as exc:
            log.error("serving %s failed: %s", job, exc)
            link.session.send_chunk(job, offset, error="package unavailable")
            with contextlib.suppress(ConnectionClosed):
                await link.flush()

    async def on_events(self, conn: AsyncConnection, events: Sequence[tuple[str, p.Event]],
                        now: dt.datetime) -> None:
        """Move jobs on from agents' durable events (agent id, event), in the transaction
        that stores them: an acknowledged event has moved its job, exactly once. A batch
        costs a few statements whatever its size, except results (one job part each)."""
        mine = [(agent_id, event) for agent_id, event in events
                if event.kind in JOB_EVENT_KINDS and event.data.get("job")]
        if not mine:
            return
        parts = await store.job_machines_by_ref(conn, {str(e.data["job"]) for _, e in mine})
        moves: list[tuple[int, str, str | None]] = []
        steps: list[tuple[int, str, dt.datetime, str | None]] = []
        for agent_id, event in mine:
            ref = str(event.data["job"])
            row = parts.get(ref)
            if row is None or row.agent_id != agent_id:
                continue
            if event.kind == "update_step":
                if row.finished_at is None:  # a late step of a finished part moves nothing
                    status, detail = str(event.data.get("step", "?"))[:40], _text(event.data.get("detail"))
                    moves.append((row.id, status, detail))
                    steps.append((row.id, status, now, detail))
                continue
            await store.set_progress(conn, moves, now)  # in order: steps before the result
            await store.add_steps(conn, steps)
            moves, steps = [], []
            await self._on_result(conn, agent_id, row, event, now)
        await store.set_progress(conn, moves, now)
        await store.add_steps(conn, steps)

    async def _on_result(self, conn: AsyncConnection, agent_id: str, row: store.JobPart,
                         event: p.Event, now: dt.datetime) -> None:
        if event.kind == "update_result":
            outcome = str(event.data.get("outcome", "failed"))[:40]
            await store.set_status(conn, row, outcome, now, _text(event.data.get("reason")),
                                   outcome=outcome)
            version = event.data.get("version")
            if (outcome in VERSION_OUTCOMES and row.product is not None
                    and event.data.get("product") == row.product
                    and isinstance(version, str) and 0 < len(version) <= 40):
                await store.set_product_version(conn, agent_id, row.product, version, now)
            await notify_job_result(conn, row, outcome, _text(event.data.get("reason")), now)
            for hook in self.result_hooks:
                await hook(conn, row, outcome, now)
        else:
            ok = bool(event.data.get("ok"))
            await store.set_status(conn, row, "verified" if ok else "mismatch", now,
                                   _text(event.data.get("summary")))
        self.progress.pop(row.ref, None)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:2000]
