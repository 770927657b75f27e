"""The agent's side of updates (issue 6): install, reinstall and verify jobs.

A job arrives as a typed Command (InstallPackage, ReinstallProduct, VerifyIntegrity), never a
command line. For an install the agent

1. checks the coordinator's signed instruction (this machine, not expired),
2. refreshes its TUF metadata over the websocket (root rotations, rollback, freeze,
   mix-and-match checks) and requires the vendor-signed target to agree with the
   instruction on path, length and sha256,
3. downloads the package in chunks into the state dir, bounded by the signed length, and
   resumes from the bytes it has after a disconnect or a restart,
4. hands the verified package to the atomic Installer (waiting while the product runs,
   unless the instruction allows stopping it),

and reports every step and the result through the durable outbox (`update_step`,
`update_result`; `verify_result` and `integrity_mismatch` for checks). Transport trouble
(disconnects, timeouts) is not a result: the coordinator re-sends unfinished jobs on the
next connection and the job resumes.

    STATE/updates/                  install journals (install-<product>.json), done jobs
    STATE/updates/instruction-key   the coordinator's instruction public key (raw Ed25519)
    STATE/tuf/                      trusted TUF metadata (shared.trust.AgentTrust)
    STATE/downloads/                partial and complete package downloads
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from careline.agent import platform as osx
from careline.agent.installer import Installer, InstallResult, ProductLayout
from careline.agent.state import AgentConfig, ProductConfig, StateDir
from careline.shared import protocol as p
from careline.shared.errors import CarelineError, ConfigError, VerificationError
from careline.shared.files import write_file_atomic
from careline.shared.keys import root_pin
from careline.shared.session import MetadataReplied

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from careline.agent.runner import AgentRunner, Link
    from careline.shared.instruction import Instruction
    from careline.shared.trust import PartialDownload, VerifiedPackage

# shared.trust (python-tuf), shared.instruction and cryptography are imported where they are
# used: an agent that is not installing anything does not pay their start-up time and memory.

log = logging.getLogger("careline.agent.updater")

FETCH_TIMEOUT = 30.0
CHUNK_TIMEOUT = 60.0
PRODUCT_EXIT_POLL = float(os.environ.get("CARELINE_AGENT_PRODUCT_EXIT_POLL", "5"))
# Tests only: stop at a step ("download" after the first chunk, or an installer step such as
# "moved_old") and wait there, so a test can kill -9 the agent at that exact point.
_TEST_PAUSE = "CARELINE_AGENT_TEST_PAUSE"


class TransportError(CarelineError):
    """The connection failed mid-job: not a refusal; the job resumes on reconnect."""


def _updates_dir(state: StateDir) -> Path:
    return state.path / "updates"


def store_enrollment_trust(
    state: StateDir, tuf_root: bytes, instruction_key: bytes, pin: str = ""
) -> None:
    """Keep what enrollment gave us: the instruction key and, when it matches the join
    string's pin, the vendor's TUF root. Without a pin no root is taken from the coordinator
    (a compromised one could hand out its own): `careline-agent pin-root` adds one later.
    A root that does not match the pin refuses the enrollment, before anything is written."""
    if pin:
        if not tuf_root:
            raise VerificationError(
                "the join string pins an update root but the coordinator sent none")
        check_root_pin(tuf_root, pin)
    directory = _updates_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    if instruction_key:
        write_file_atomic(directory / "instruction-key", instruction_key)
    if pin:
        from careline.shared.trust import install_trusted_root

        write_file_atomic(directory / "root-pin", pin.encode())
        install_trusted_root(state.path, tuf_root)


def check_root_pin(root: bytes, pin: str) -> None:
    if root_pin(root) != pin:
        raise VerificationError("the coordinator's update root does not match the pinned hash: "
                        "refusing it (ask the vendor; the coordinator may be compromised)")


def pinned_root(state: StateDir) -> str:
    """The update root hash this machine was told to trust ("" if none)."""
    try:
        return (_updates_dir(state) / "root-pin").read_text().strip()
    except FileNotFoundError:
        return ""


def pin_root(state: StateDir, pin: str) -> None:
    """A local administrator pins the vendor's root (for agents enrolled before release
    keys existed). A trust anchor that does not match the pin is dropped, so the next
    update fetches the first root again and accepts it only if it matches."""
    pin = pin.strip().lower()
    if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
        raise ConfigError("the root pin is the 64 hex digits printed by `careline release keys init`")
    directory = _updates_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    write_file_atomic(directory / "root-pin", pin.encode())
    anchor = state.path / "tuf" / "enrollment-root.json"
    if anchor.exists() and root_pin(anchor.read_bytes()) != pin:
        shutil.rmtree(state.path / "tuf")


def accept_first_root(state: StateDir, root: bytes | None) -> None:
    """Install root v1 fetched from the coordinator, only if this machine pinned its hash."""
    pin = pinned_root(state)
    if not pin:
        raise ConfigError("no update root is pinned on this machine: run `careline-agent "
                          "pin-root HASH` (the hash `careline release keys init` printed)")
    if root is None:
        raise ConfigError("the coordinator has no release root yet")
    check_root_pin(root, pin)
    from careline.shared.trust import install_trusted_root

    install_trusted_root(state.path, root)


def instruction_key(state: StateDir) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = (_updates_dir(state) / "instruction-key").read_bytes()
    except FileNotFoundError:
        raise ConfigError("this agent has no coordinator instruction key; enroll it again") from None
    return Ed25519PublicKey.from_public_bytes(raw)


def find_product(config: AgentConfig, name: str) -> ProductConfig:
    for product in config.products:
        if product.name == name:
            return product
    raise ConfigError(f"product {name!r} is not configured on this machine")


def make_installer(state: StateDir, product: ProductConfig) -> Installer:
    def running() -> bool:
        return bool(osx.product_processes(product))

    start = None
    if product.executable or product.service:
        def start() -> None:
            try:
                osx.start_product(product, state.path / f"{product.name}.out.log")
            except ConfigError as exc:  # the update stands; only the restart is refused
                log.warning("%s updated but not started again: %s", product.name, exc)

    return Installer(
        _updates_dir(state),
        ProductLayout(product.name, Path(product.install_dir), product.data_dir),
        running, stop_product=lambda: osx.stop_product(product), start_product=start,
        step_hook=_pause_hook(state),
    )


def _pause_hook(state: StateDir) -> Any:
    pause_at = os.environ.get(_TEST_PAUSE)

    def hook(step: str) -> None:
        if pause_at and step == pause_at:
            (state.path / f"paused-at-{step}").touch()
            time.sleep(3600)

    return hook


def result_data(result: InstallResult) -> dict[str, Any]:
    return {"job": result.job_id, "outcome": result.outcome, "product": result.product,
            "version": result.version, "reason": result.reason}


def _done_path(state: StateDir, job: str) -> Path:
    return _updates_dir(state) / "done" / (hashlib.sha256(job.encode()).hexdigest()[:32] + ".json")


def record_done(state: StateDir, data: dict[str, Any]) -> None:
    path = _done_path(state, str(data["job"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, json.dumps(data).encode())


def apply_bundle(state: StateDir, bundle: Path) -> dict[str, Any]:
    """Verify a physical-media bundle and install it, with no network. The result goes into
    the outbox and reaches the coordinator on the next connection. Raises on refusal,
    having changed nothing."""
    from careline.agent.outbox import Outbox
    from careline.shared.bundle import open_bundle

    config = state.load_config()
    verified = open_bundle(bundle, machine_id=config.agent_id,
                           coordinator_key=instruction_key(state), state_dir=state.path,
                           root_pin=pinned_root(state))
    try:
        product = find_product(config, verified.instruction.product)
        result = make_installer(state, product).install(verified)
    finally:
        with contextlib.suppress(FileNotFoundError):
            verified.path.unlink()
    data = {**result_data(result), "delivery": "media"}
    if result.outcome != "waiting_for_product_exit":
        outbox = Outbox(state.outbox_file)
        try:
            outbox.put("update_result", data)
        finally:
            outbox.close()
        record_done(state, data)
    return data


@dataclass
class _Download:
    partial: PartialDownload
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    error: CarelineError | None = None
    paused: bool = False


class Updater:
    """Runs update jobs for an AgentRunner (which feeds it messages and owns the outbox)."""

    def __init__(self, runner: AgentRunner) -> None:
        self.runner = runner
        self.state: StateDir = runner.state
        self.config: AgentConfig = runner.config
        _updates_dir(self.state).mkdir(parents=True, exist_ok=True)
        self._link: Link | None = None  # the connection, while there is one
        self._loop: asyncio.AbstractEventLoop | None = None
        # (connection, request id) -> its reply: ids are the session's, per connection
        self._metadata: dict[tuple[Link, int], asyncio.Future[bytes | None]] = {}
        self._downloads: dict[str, _Download] = {}
        self._active: dict[str, asyncio.Task[None]] = {}
        self._resent: dict[str, Any] = {}  # job -> its action, re-sent while it was running
        self._install_lock = asyncio.Lock()
        self._reported: dict[str, tuple[str, ...]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """At agent start: finish or roll back installs a crash interrupted (in a thread:
        hashing and the package's check command), then schedule periodic integrity checks."""
        self._loop = asyncio.get_running_loop()
        for product in self.config.products:
            try:
                result = await asyncio.to_thread(make_installer(self.state, product).recover)
            except CarelineError as exc:
                log.error("recovering %s failed: %s", product.name, exc)
                continue
            if result is not None:
                log.warning("recovered interrupted job %s: %s", result.job_id, result.outcome)
                await self._finish(result_data(result))
        from careline.agent import selfupdate

        interrupted = selfupdate.recover(self.state)
        if interrupted is not None:
            log.warning("self-update %s interrupted before its switch", interrupted["job"])
            await self._finish(interrupted)
        self._spawn(self._verify_forever())

    async def confirm_self_update(self) -> None:
        """Connected: if this is the new program of a self-update, it worked."""
        from careline.agent import selfupdate

        result = selfupdate.confirm(self.state)
        if result is not None:
            log.info("self-update %s confirmed: now %s", result["job"], result["version"])
            await self._finish(result)

    async def close(self) -> None:
        """At agent stop: the verify loop and job tasks are cancelled and awaited (an
        install cut short is finished or rolled back by the journal at the next start)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        await self.runner.emit(kind, data)

    async def _step(self, job: str, step: str, detail: str | None = None) -> None:
        await self._emit("update_step", {"job": job, "step": step, "detail": detail})

    async def _finish(self, data: dict[str, Any]) -> None:
        """The result is recorded as done, then on disk in the outbox before this returns."""
        await asyncio.to_thread(record_done, self.state, data)  # an fsync: off the loop too
        await self._emit("update_result", data)

    # ------------------------------------------------------------------ messages
    def connected(self, link: Link) -> None:
        self._link = link

    def on_reply(self, link: Link, reply: MetadataReplied) -> None:
        future = self._metadata.get((link, reply.id))
        if future is not None and not future.done():
            future.set_result(reply.data)

    def fetches_expired(self, request_ids: list[int]) -> None:
        """The session's timeout for these metadata requests passed without a reply."""
        for key, future in self._metadata.items():
            if key[0] is self._link and key[1] in request_ids and not future.done():
                future.set_exception(TimeoutError(f"no metadata reply in {FETCH_TIMEOUT:g}s"))

    async def on_command(self, link: Link, command: p.Command) -> None:
        self._link = link
        action = command.action
        job = action.job  # type: ignore[union-attr]
        link.session.answer(p.CommandResult(id=command.id, ok=True, data={"accepted": job}))
        with contextlib.suppress(ConnectionClosed):
            await link.flush()
        if job in self._active:
            # Re-sent (after a reconnect): if the running attempt ends without a result
            # because the old connection died under it, it starts again at once.
            self._resent[job] = action
            return
        done = _done_path(self.state, job)
        if done.exists():  # finished before; the coordinator has not heard yet
            await self._emit("update_result", json.loads(done.read_text()))
            return
        self._begin(job, action)

    def _begin(self, job: str, action: Any) -> None:
        task = self._spawn(self._run(job, action))
        self._active[job] = task

        def ended(ended_task: asyncio.Task[None]) -> None:
            self._active.pop(job, None)
            again = self._resent.pop(job, None)
            if again is not None and not ended_task.cancelled() and not _done_path(
                    self.state, job).exists():
                self._begin(job, again)

        task.add_done_callback(ended)

    def connection_lost(self) -> None:
        """The websocket closed: replies and chunks asked for on it will never come, so the
        jobs waiting for them stop now (as interrupted) instead of after a timeout."""
        self._link = None
        for future in self._metadata.values():
            if not future.done():
                future.set_exception(TransportError("connection lost"))
        for download in self._downloads.values():
            if not download.paused:
                download.error = TransportError("connection lost")
                download.progress.set()

    def on_chunk(self, chunk: p.Chunk) -> None:
        """The next chunk of a download, at the offset asked for (the session checked)."""
        download = self._downloads.get(chunk.job)
        if download is None or download.paused:
            return
        if chunk.error:
            download.error = TransportError(f"coordinator cannot serve the package: {chunk.error}")
        else:
            try:
                download.partial.write(chunk.offset, chunk.data)
            except VerificationError as exc:
                download.error = exc
            if os.environ.get(_TEST_PAUSE) == "download":
                download.paused = True
                (self.state.path / "paused-at-download").touch()
        download.progress.set()

    # ------------------------------------------------------------------ jobs
    async def _run(self, job: str, action: Any) -> None:
        try:
            if isinstance(action, p.VerifyIntegrity):
                await self._verify(job, action.product)
                return
            await self._install_job(job, action)
        except (TransportError, ConnectionClosed, TimeoutError, OSError) as exc:
            log.warning("job %s interrupted (%s); it resumes when the coordinator re-sends it",
                        job, exc or type(exc).__name__)
        except CarelineError as exc:
            log.warning("job %s refused: %s", job, exc)
            await self._finish({"job": job, "outcome": "refused", "product": None, "version": None,
                          "reason": str(exc)})
        except Exception as exc:  # never let one job take the agent down
            log.exception("job %s failed", job)
            await self._finish({"job": job, "outcome": "failed", "product": None, "version": None,
                          "reason": repr(exc)})

    async def _install_job(self, job: str, action: Any) -> None:
        from careline.shared.instruction import verify_instruction
        from careline.shared.trust import AgentTrust, PartialDownload

        instr = verify_instruction(instruction_key(self.state), action.instruction,
                                   self.config.agent_id, datetime.now(UTC))
        if instr.job_id != job:
            raise VerificationError(f"instruction is for job {instr.job_id}, not {job}")
        wanted = "install" if isinstance(action, p.InstallPackage) else "reinstall"
        if instr.action != wanted:
            raise VerificationError(f"instruction says {instr.action}, the command {wanted}")
        from careline.agent.selfupdate import SELF_PRODUCT

        product = None if instr.product == SELF_PRODUCT else find_product(self.config, instr.product)
        await self._ensure_root()
        trust = AgentTrust(self.state.path, self._fetch_blocking)
        await asyncio.to_thread(trust.refresh)
        await asyncio.to_thread(trust.target_for, instr)
        try:
            path = await self._download(job, instr)
            verified = await asyncio.to_thread(trust.verify_package, instr, path)
            if product is None:
                await self._hand_over(job, verified)
                return
            result = await self._install(job, product, verified)
        except VerificationError:
            PartialDownload(self.state.path, instr).discard()
            raise
        if result.outcome != "waiting_for_product_exit":
            PartialDownload(self.state.path, instr).discard()
        await self._finish(result_data(result))

    async def _ensure_root(self) -> None:
        """An agent enrolled before the release keys existed takes root v1 over its
        connection, but only if it matches the root pinned locally (`pin-root`)."""
        if (self.state.path / "tuf" / "enrollment-root.json").exists():
            return
        if not pinned_root(self.state):
            accept_first_root(self.state, None)  # refuses, saying how to pin
        accept_first_root(self.state, await self._fetch("1.root.json"))

    async def _fetch(self, name: str) -> bytes | None:
        """One metadata file over the connection; the session times the request out."""
        link = self._link
        if link is None:
            raise TransportError("not connected")
        key = (link, link.session.fetch_metadata(name, time.monotonic(), FETCH_TIMEOUT))
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._metadata[key] = future
        try:
            await link.flush()
            return await future
        except ConnectionClosed:
            raise TransportError("connection lost while fetching metadata") from None
        finally:
            self._metadata.pop(key, None)

    def _fetch_blocking(self, name: str) -> bytes | None:
        """AgentTrust's fetcher, called from a worker thread."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._fetch(name), self._loop).result(
            FETCH_TIMEOUT + 5
        )

    async def _download(self, job: str, instr: Instruction) -> Path:
        from careline.shared.trust import PartialDownload

        partial = PartialDownload(self.state.path, instr)
        if partial.path.exists():
            return partial.path
        download = _Download(partial)
        self._downloads[job] = download
        link = self._link
        try:
            if not partial.complete:
                start = partial.offset
                await self._step(job, "downloading", f"from byte {start} of {instr.length}")
                if link is None:
                    raise TransportError("not connected")
                link.session.download(job, start)
                await link.flush()
                while not partial.complete:
                    try:
                        await asyncio.wait_for(download.progress.wait(), CHUNK_TIMEOUT)
                    except TimeoutError:
                        if download.paused:
                            continue
                        raise TransportError("download stalled") from None
                    download.progress.clear()
                    if download.error is not None:
                        raise download.error
            await self._step(job, "verifying")
            return await asyncio.to_thread(partial.finish)
        finally:
            self._downloads.pop(job, None)
            if link is not None:
                link.session.end_download(job)

    async def _hand_over(self, job: str, verified: VerifiedPackage) -> None:
        """A new version of the agent itself: stage it, start the watchdog, switch, restart
        (careline.agent.selfupdate). The result comes from the new program or the watchdog."""
        from careline.agent import selfupdate
        from careline.agent.entry import EXIT_RESTART
        from careline.agent.service import program_path
        from careline.shared import __version__
        from careline.shared.trust import PartialDownload

        program = program_path()
        if program is None:
            raise ConfigError("this agent runs from a Python installation: update it with pip")
        await self._step(job, "handing_over", f"{__version__} -> {verified.instruction.version}")
        await asyncio.to_thread(selfupdate.hand_over, self.state, verified, program,
                                from_version=__version__, hook=_pause_hook(self.state))
        PartialDownload(self.state.path, verified.instruction).discard()
        log.warning("self-update %s switched to %s; restarting", job, verified.instruction.version)
        self.runner.request_restart(EXIT_RESTART)

    async def _install(self, job: str, product: ProductConfig,
                       verified: VerifiedPackage) -> InstallResult:
        installer = make_installer(self.state, product)
        await self._step(job, "installing")
        waiting = False
        while True:
            async with self._install_lock:
                result = await asyncio.to_thread(installer.install, verified)
            if result.outcome != "waiting_for_product_exit":
                return result
            if not waiting:
                waiting = True
                await self._step(job, "waiting_for_product_exit", result.reason)
            await asyncio.sleep(PRODUCT_EXIT_POLL)

    # ------------------------------------------------------------------ integrity
    async def _verify(self, job: str, product: str | None) -> None:
        found = await asyncio.to_thread(self.runner.prober.verify_now)
        if product is not None:
            find_product(self.config, product)
            found = {product: found.get(product, [])}
        for name, problems in found.items():
            if problems:
                await self._report_mismatch(name, problems, job)
        bad = {name: problems for name, problems in found.items() if problems}
        summary = "all files match" if not bad else "; ".join(
            f"{name}: {len(problems)} file(s) differ" for name, problems in bad.items())
        await self._emit("verify_result", {"job": job, "ok": not bad, "products": found,
                                     "summary": summary})
        await asyncio.to_thread(record_done, self.state,
                                {"job": job, "outcome": "verified" if not bad else "mismatch"})

    async def _report_mismatch(self, product: str, problems: list[str], job: str | None = None) -> None:
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        await self._emit("integrity_mismatch", {"product": product, "detail": shown,
                                          "problems": problems[:100], "job": job})
        self._reported[product] = tuple(problems)

    async def _verify_forever(self) -> None:
        """Re-check installed files every verify_interval; report each new mismatch once."""
        while True:
            await asyncio.sleep(self.config.verify_interval)
            try:  # the heartbeat's check may have hashed the trees already this round
                found = await asyncio.to_thread(self.runner.prober.integrity)
            except Exception:
                log.exception("periodic verification failed")
                continue
            for name, problems in found.items():
                if problems and tuple(problems) != self._reported.get(name):
                    await self._report_mismatch(name, problems)
                elif not problems:
                    self._reported.pop(name, None)
