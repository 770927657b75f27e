"""The agent updates itself (issue 17): stage, hand over by a service restart, and a watchdog
that puts the previous program back if the new one does not connect within a grace period.

The agent's program is one file: the self-contained build (`sys.executable`), or a launcher
named `careline-agent...` the service runs. A release of the product `careline-agent` carries
it (`careline release build DIR --product careline-agent`, DIR holding the new file under the
same name). The Updater checks it like any package (instruction, TUF target, hash, manifest);
then, in STATE/updates/self-update.json (the journal, written before each step):

    staged       PROGRAM.new is the new program, PROGRAM.previous a copy of the running one,
                 and the watchdog runs: the *previous* program with `watchdog`, so no code of
                 the new version is involved in deciding whether it works
    switched     PROGRAM is the new program (one atomic rename), deadline set; the agent exits
                 with EXIT_RESTART and the service manager starts PROGRAM again
    confirmed    a process started from the new program got a Welcome (`confirm`, by the
                 runner): it reports `installed`, PROGRAM.previous is removed
    rolled_back  before the switch, after a crash (`recover` at start); or by the watchdog at
                 the deadline: PROGRAM.previous back in place, `rolled_back` put in the outbox,
                 the service restarted

A kill -9 anywhere leaves a program that runs: before the switch the old one (and `recover`
reports the interrupted job), after it the new one, watched. Windows cannot replace a
running .exe in place; there the switch renames PROGRAM away first (two renames, the watchdog
covers the gap). Only Linux is tested here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from careline.agent import platform as osx
from careline.agent.service import SERVICE_NAME, program_path
from careline.agent.state import StateDir
from careline.shared.errors import ConfigError, VerificationError
from careline.shared.files import fsync_dir, write_file_atomic
from careline.shared.protocol import AGENT_PRODUCT

if TYPE_CHECKING:
    from careline.shared.trust import VerifiedPackage

SELF_PRODUCT = AGENT_PRODUCT
GRACE_SECONDS = float(os.environ.get("CARELINE_AGENT_SELF_UPDATE_GRACE", "120"))
WATCHDOG_POLL = 0.5


def journal_path(state: StateDir) -> Path:
    return state.path / "updates" / "self-update.json"


def read_journal(state: StateDir) -> dict[str, Any] | None:
    try:
        return dict(json.loads(journal_path(state).read_text()))
    except (FileNotFoundError, ValueError):
        return None


def _write_journal(state: StateDir, journal: dict[str, Any], step: str,
                   hook: Callable[[str], None] | None = None) -> None:
    journal["state"] = step
    write_file_atomic(journal_path(state), json.dumps(journal).encode())
    if hook is not None:
        hook(f"self_{step}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sibling(program: Path, suffix: str) -> Path:
    return program.with_name(program.name + suffix)


def _copy_durably(src: Path, dst: Path) -> None:
    tmp = _sibling(dst, ".tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def _result(journal: dict[str, Any], outcome: str, reason: str | None = None) -> dict[str, Any]:
    return {"job": journal["job"], "outcome": outcome, "product": SELF_PRODUCT,
            "version": journal["version"] if outcome == "installed" else journal["from_version"],
            "reason": reason}


def hand_over(state: StateDir, verified: VerifiedPackage, program: Path, *, from_version: str,
              grace: float = GRACE_SECONDS, hook: Callable[[str], None] | None = None,
              spawn: Callable[[list[str]], int] | None = None) -> None:
    """Stage the verified package's program, start the watchdog, switch. The caller then
    exits with EXIT_RESTART so the service manager starts the new program."""
    from careline.shared.package import extract_package

    instr = verified.instruction
    staging = state.path / "updates" / "self-staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _info, manifest = extract_package(verified.path, staging)
        if (manifest.product, manifest.version) != (SELF_PRODUCT, instr.version):
            raise VerificationError(f"package holds {manifest.product} {manifest.version}, "
                                    f"not {SELF_PRODUCT} {instr.version}")
        if program.name not in manifest.files:
            raise VerificationError(f"the package has no {program.name} to replace this agent with")
        journal: dict[str, Any] = {
            "job": instr.job_id, "version": instr.version, "from_version": from_version,
            "program": str(program), "new_sha256": manifest.files[program.name].sha256,
            "grace": grace, "deadline": None, "watchdog_pid": None,
        }
        _copy_durably(staging / program.name, _sibling(program, ".new"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _copy_durably(program, _sibling(program, ".previous"))
    _write_journal(state, journal, "staged")
    journal["watchdog_pid"] = (spawn or _spawn)(
        [str(_sibling(program, ".previous")), "watchdog", "--state", str(state.path)])
    _write_journal(state, journal, "staged", hook)
    journal["deadline"] = time.time() + grace
    _switch(program)
    _write_journal(state, journal, "switched", hook)


def _switch(program: Path) -> None:
    new = _sibling(program, ".new")
    if osx.IS_WINDOWS:  # a running .exe can be renamed, not replaced
        with contextlib.suppress(FileNotFoundError):
            os.replace(program, _sibling(program, ".old"))
    os.replace(new, program)
    fsync_dir(program.parent)


def _spawn(argv: list[str]) -> int:
    """The watchdog, detached: it outlives the agent's exit and the service restart."""
    flags = 0
    if osx.IS_WINDOWS:
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, creationflags=flags,
                            start_new_session=not osx.IS_WINDOWS, env=osx.child_env())
    return proc.pid


def recover(state: StateDir) -> dict[str, Any] | None:
    """At agent start: a hand-over interrupted before its switch is undone; returns the
    job's result for the outbox (None when there is nothing to report)."""
    journal = read_journal(state)
    if journal is None or journal["state"] != "staged":
        return None
    program = Path(journal["program"])
    with contextlib.suppress(FileNotFoundError):
        _sibling(program, ".new").unlink()
    _write_journal(state, journal, "rolled_back")
    return _result(journal, "rolled_back", "interrupted before the switch; this agent is unchanged")


def confirm(state: StateDir) -> dict[str, Any] | None:
    """After a Welcome: if this process runs the new program of a switch, the update worked.
    Returns the `installed` result to report, else None."""
    journal = read_journal(state)
    if journal is None or journal["state"] != "switched":
        return None
    program = Path(journal["program"])
    running = program_path()
    if running is None or running != program or _sha256(program) != journal["new_sha256"]:
        return None
    _write_journal(state, journal, "confirmed")
    for suffix in (".previous", ".old"):
        with contextlib.suppress(FileNotFoundError):
            _sibling(program, suffix).unlink()
    return _result(journal, "installed")


def watch(state: StateDir, *, poll: float = WATCHDOG_POLL,
          restart: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """The watchdog (run from the previous program): wait for `confirmed`; at the deadline
    put the previous program back, report, restart the service. Returns what it reported."""
    while True:
        journal = read_journal(state)
        if journal is None or journal["state"] in ("confirmed", "rolled_back"):
            return None
        deadline = journal.get("deadline")
        if journal["state"] == "switched" and deadline is not None and time.time() > deadline:
            return _roll_back(state, journal, restart)
        time.sleep(poll)


def _roll_back(state: StateDir, journal: dict[str, Any],
               restart: Callable[[], None] | None) -> dict[str, Any]:
    from careline.agent.outbox import Outbox
    from careline.agent.updater import record_done

    program = Path(journal["program"])
    previous = _sibling(program, ".previous")
    if not previous.exists():
        raise ConfigError(f"{previous} is gone: cannot restore the previous agent")
    _copy_durably(previous, _sibling(program, ".restore"))
    os.replace(_sibling(program, ".restore"), program)
    fsync_dir(program.parent)
    reason = (f"the new agent {journal['version']} did not connect within "
              f"{journal['grace']:g}s; {journal['from_version']} restored")
    data = _result(journal, "rolled_back", reason)
    outbox = Outbox(state.outbox_file)
    try:
        outbox.put("update_result", data)
    finally:
        outbox.close()
    record_done(state, data)
    _write_journal(state, journal, "rolled_back")
    previous.unlink()
    (restart or _restart_service)()
    return data


def _restart_service() -> None:
    manager = osx.service_manager()
    with contextlib.suppress(ConfigError):
        manager.stop(SERVICE_NAME)
    manager.start(SERVICE_NAME)


def run_watchdog(state: str | None) -> int:
    """`careline-agent watchdog --state DIR` (started by hand_over, never by hand)."""
    from careline.agent.platform import default_state_dir

    state_dir = StateDir(Path(state).resolve() if state else default_state_dir())
    watch(state_dir)
    return 0
