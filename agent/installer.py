"""Install, reinstall and roll back a product so a crash never leaves a mixed install.

Layout, all siblings on one filesystem so every switch is a rename (works the same on
Windows, where symlink switching needs privileges)::

    <install_dir>                      the product as the customer runs it
    <install_dir>/<data_subdir>        the product's data: moved between trees, never written
    <install_dir>.careline-staging     the new version, unpacked and checked before the switch
    <install_dir>.careline-previous    the old version while the new one is being verified
    <install_dir>.careline-discard     a failed new version, on its way out

The switch is three renames: install -> previous, previous/data -> staging/data,
staging -> install. Each state change is journaled (JSON, fsynced, atomically replaced) before
the step it announces, and `recover()` at start-up resolves whatever a kill -9 interrupted:
before the switch it discards the staging tree, during the switch it rolls back, after it
re-runs the verification and finishes or rolls back. Rollback reads the filesystem to see
how far it got, so it can itself be interrupted and resumed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from careline.agent.filelock import locked
from careline.agent.platform import child_env
from careline.shared.errors import ConfigError, Conflict, VerificationError
from careline.shared.files import fsync_dir, write_file_atomic
from careline.shared.manifest import MANIFEST_NAME, Manifest, read_manifest, sha256_file, verify_tree

if TYPE_CHECKING:
    from careline.shared.instruction import Instruction
    from careline.shared.trust import VerifiedPackage

State = Literal[
    "staging", "staged", "switching", "switched", "verifying",
    "done", "rolling_back", "rolled_back", "failed",
]
_TERMINAL = frozenset({"done", "rolled_back", "failed"})
Outcome = Literal["installed", "rolled_back", "refused", "waiting_for_product_exit"]


class InstallResult(msgspec.Struct, frozen=True):
    """What the agent reports for a job (goes into the durable outbox as is)."""

    job_id: str
    outcome: Outcome
    product: str
    # The version installed after this job, when known.
    version: str | None = None
    reason: str | None = None


class _Journal(msgspec.Struct):
    job_id: str
    product: str
    version: str
    state: State
    had_previous: bool
    from_version: str | None
    restart_product: bool
    manifest_sha256: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ProductLayout:
    """Where one product lives on this machine."""

    name: str
    install_dir: Path
    # A top-level directory inside install_dir that holds the customer's data.
    data_subdir: str | None = None


def _rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


class Installer:
    """Installs verified packages for one product.

    `product_running()` says whether the product is in use; `stop_product()` and
    `start_product()` are used only when the instruction allows stopping it. `step_hook` is
    called with the name of each step just done (tests inject crashes there).
    """

    def __init__(
        self,
        state_dir: Path,
        layout: ProductLayout,
        product_running: Callable[[], bool],
        *,
        stop_product: Callable[[], None] | None = None,
        start_product: Callable[[], None] | None = None,
        check_timeout: float = 300.0,
        stop_timeout: float = 60.0,
        step_hook: Callable[[str], None] | None = None,
        lock_timeout: float = 600.0,
    ) -> None:
        self.layout = layout
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self._journal_path = Path(state_dir) / f"install-{layout.name}.json"
        # Held for each install and recovery: the service and apply-bundle take turns.
        self._lock_path = Path(state_dir) / f"install-{layout.name}.lock"
        self._lock_timeout = lock_timeout
        self._running = product_running
        self._stop = stop_product
        self._start = start_product
        self._check_timeout = check_timeout
        self._stop_timeout = stop_timeout
        self._hook = step_hook or (lambda _step: None)
        install = Path(layout.install_dir)
        self._install = install
        self._staging = install.with_name(install.name + ".careline-staging")
        self._previous = install.with_name(install.name + ".careline-previous")
        self._discard = install.with_name(install.name + ".careline-discard")

    # journal

    def _load(self) -> _Journal | None:
        try:
            return msgspec.json.decode(self._journal_path.read_bytes(), type=_Journal)
        except FileNotFoundError:
            return None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"install journal {self._journal_path} is corrupt: {exc}") from None

    def _set(self, journal: _Journal, state: State) -> None:
        journal.state = state
        write_file_atomic(self._journal_path, msgspec.json.encode(journal))
        self._hook(state)

    def _result(self, journal: _Journal) -> InstallResult:
        if journal.state == "done":
            return InstallResult(journal.job_id, "installed", journal.product, journal.version)
        if journal.state == "failed":
            return InstallResult(journal.job_id, "refused", journal.product,
                                 journal.from_version, journal.reason)
        return InstallResult(journal.job_id, "rolled_back", journal.product,
                             journal.from_version, journal.reason)

    # public API

    def install(self, package: VerifiedPackage) -> InstallResult:
        """Install (or reinstall) a package AgentTrust verified against its instruction.
        Waits for (then holds) the product's install lock: Conflict if it stays taken."""
        with locked(self._lock_path, self._lock_timeout, f"installing {self.layout.name}"):
            return self._install_locked(package)

    def _install_locked(self, package: VerifiedPackage) -> InstallResult:
        instr = package.instruction
        journal = self._load()
        if journal is not None and journal.state not in _TERMINAL:
            raise Conflict(f"install job {journal.job_id} is unfinished; call recover() first")
        if journal is not None and journal.job_id == instr.job_id:
            return self._result(journal)  # a retried job: report what happened
        if self._already_installed(instr):
            return InstallResult(instr.job_id, "installed", instr.product, instr.version,
                                 "already installed and intact")
        refusal, from_version = self._refusal(instr)
        if refusal is not None:
            return InstallResult(instr.job_id, "refused", instr.product, from_version, refusal)
        restart = False
        if self._running():
            if not instr.stop_product or self._stop is None or not self._stop_and_wait():
                return InstallResult(instr.job_id, "waiting_for_product_exit", instr.product,
                                     from_version, "the product is running")
            restart = True
        self._clean_leftovers()
        journal = _Journal(
            job_id=instr.job_id, product=instr.product, version=instr.version, state="staging",
            had_previous=self._install.exists(), from_version=from_version,
            restart_product=restart,
        )
        self._set(journal, "staging")
        try:
            from careline.shared.package import extract_package  # tarfile and gzip: only here

            _info, manifest = extract_package(package.path, self._staging)
            self._check_manifest(instr, manifest)
            self._fsync_tree(self._staging)
        except VerificationError as exc:
            _rmtree(self._staging)
            journal.reason = str(exc)
            self._set(journal, "failed")
            self._restart(journal)
            return self._result(journal)
        journal.manifest_sha256 = sha256_file(self._staging / MANIFEST_NAME)
        self._set(journal, "staged")
        self._set(journal, "switching")
        try:
            self._switch(journal)
        except OSError as exc:
            return self._roll_back(journal, f"switching failed: {exc}")
        self._set(journal, "switched")
        return self._verify_and_finish(journal)

    def recover(self) -> InstallResult | None:
        """Resolve a job a crash interrupted; call once at agent start before any install.

        Returns that job's result for the outbox, or None when nothing was pending.
        """
        with locked(self._lock_path, self._lock_timeout, f"installing {self.layout.name}"):
            return self._recover_locked()

    def _recover_locked(self) -> InstallResult | None:
        journal = self._load()
        if journal is None:
            return None
        if journal.state in _TERMINAL:
            self._clean_leftovers()
            return None
        if journal.state in ("staging", "staged"):
            _rmtree(self._staging)
            journal.reason = "interrupted before the switch; the installed version is unchanged"
            self._set(journal, "rolled_back")
            self._restart(journal)
            return self._result(journal)
        if journal.state == "switching":
            return self._roll_back(journal, "interrupted while switching versions")
        if journal.state == "rolling_back":
            return self._roll_back(journal, journal.reason or "interrupted while rolling back")
        return self._verify_and_finish(journal)

    # steps

    def _already_installed(self, instr: Instruction) -> bool:
        """Asked to install the version that is already there, whole: nothing to do (a job
        can be issued before the machine's report of its new version arrives)."""
        if instr.action != "install":
            return False
        try:
            installed = read_manifest(self._install)
        except ConfigError:
            return False
        if installed is None or (installed.product, installed.version) != (
                instr.product, instr.version):
            return False
        ignore = frozenset({self.layout.data_subdir} if self.layout.data_subdir else ())
        return not verify_tree(self._install, installed, ignore=ignore)

    def _refusal(self, instr: Instruction) -> tuple[str | None, str | None]:
        """(reason to refuse, installed version)."""
        if instr.product != self.layout.name:
            return f"this installer handles {self.layout.name}, not {instr.product}", None
        try:
            installed = read_manifest(self._install)
        except ConfigError:
            installed = None  # damaged install: any version may repair it
        if installed is None:
            return None, None
        if installed.product != instr.product:
            return (f"{self._install} holds {installed.product}, not {instr.product}",
                    installed.version)
        from careline.shared.package import parse_version

        try:
            older = parse_version(instr.version) <= parse_version(installed.version)
        except ConfigError as exc:
            return str(exc), installed.version
        if instr.action == "install" and older:
            return (f"version {instr.version} is not newer than installed {installed.version}; "
                    "only a reinstall may put back the entitled version", installed.version)
        return None, installed.version

    def _stop_and_wait(self) -> bool:
        assert self._stop is not None
        self._stop()
        deadline = time.monotonic() + self._stop_timeout
        while self._running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _restart(self, journal: _Journal) -> None:
        if journal.restart_product and self._start is not None:
            self._start()

    def _check_manifest(self, instr: Instruction, manifest: Manifest) -> None:
        if (manifest.product, manifest.version) != (instr.product, instr.version):
            raise VerificationError(
                f"package holds {manifest.product} {manifest.version}, instruction says "
                f"{instr.product} {instr.version}"
            )
        data = self.layout.data_subdir
        if data is not None and any(rel.split("/", 1)[0] == data for rel in manifest.files):
            raise VerificationError(f"package writes into the data directory {data!r}")

    def _fsync_tree(self, root: Path) -> None:
        for dirpath, _dirs, _files in os.walk(root):
            fsync_dir(Path(dirpath))
        fsync_dir(root.parent)

    def _switch(self, journal: _Journal) -> None:
        data = self.layout.data_subdir
        if journal.had_previous:
            _rename(self._install, self._previous)
            self._hook("moved_old")
            if data is not None and (self._previous / data).exists():
                _rename(self._previous / data, self._staging / data)
                self._hook("moved_data")
        _rename(self._staging, self._install)
        self._hook("moved_new")

    def _verify_and_finish(self, journal: _Journal) -> InstallResult:
        self._set(journal, "verifying")
        problem = self._verification_problem(journal)
        if problem is not None:
            return self._roll_back(journal, problem)
        self._set(journal, "done")
        _rmtree(self._previous)
        self._restart(journal)
        return self._result(journal)

    def _verification_problem(self, journal: _Journal) -> str | None:
        manifest_path = self._install / MANIFEST_NAME
        try:
            if sha256_file(manifest_path) != journal.manifest_sha256:
                return "the installed manifest is not the package's"
            manifest = read_manifest(self._install)
        except (OSError, ConfigError) as exc:
            return f"cannot read the installed manifest: {exc}"
        assert manifest is not None
        ignore = frozenset({self.layout.data_subdir} if self.layout.data_subdir else ())
        problems = verify_tree(self._install, manifest, ignore=ignore)
        if problems:
            shown = ", ".join(f"{p.path} {p.problem}" for p in problems[:5])
            return f"{len(problems)} installed file(s) differ from the manifest: {shown}"
        return self._run_check(manifest.check)

    def _run_check(self, argv: list[str] | None) -> str | None:
        """Run the package's own check (argv, no shell) inside the install dir."""
        if not argv:
            return None
        argv = list(argv)
        if (self._install / argv[0]).is_file():
            argv[0] = str(self._install / argv[0])
        try:
            done = subprocess.run(
                argv, cwd=self._install, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, timeout=self._check_timeout, check=False,
                env=child_env(),
            )
        except subprocess.TimeoutExpired:
            return f"check command timed out after {self._check_timeout:g}s"
        except OSError as exc:
            return f"check command could not start: {exc}"
        if done.returncode != 0:
            tail = done.stdout.decode(errors="replace").strip()[-300:]
            return f"check command exited with {done.returncode}: {tail}"
        return None

    def _roll_back(self, journal: _Journal, reason: str) -> InstallResult:
        journal.reason = reason
        self._set(journal, "rolling_back")
        self._restore(journal)
        self._set(journal, "rolled_back")
        self._restart(journal)
        return self._result(journal)

    def _restore(self, journal: _Journal) -> None:
        """Put the old tree (with the data directory) back at install_dir.

        Idempotent: it looks at which directories exist, so a crash inside it is resumed.
        """
        data = self.layout.data_subdir
        if journal.had_previous and self._previous.exists():
            if self._install.exists():  # the new version is in place: move it aside
                if data is not None and (self._install / data).exists() \
                        and not (self._previous / data).exists():
                    _rename(self._install / data, self._previous / data)
                    self._hook("rb_moved_data")
                _rmtree(self._discard)
                _rename(self._install, self._discard)
                self._hook("rb_moved_new")
            if data is not None and (self._staging / data).exists() \
                    and not (self._previous / data).exists():
                _rename(self._staging / data, self._previous / data)
                self._hook("rb_moved_data")
            _rename(self._previous, self._install)
            self._hook("rb_restored")
        elif not journal.had_previous and self._install.exists():
            _rmtree(self._discard)
            _rename(self._install, self._discard)
            self._hook("rb_moved_new")
        _rmtree(self._staging)
        _rmtree(self._discard)

    def _clean_leftovers(self) -> None:
        """Remove trees a finished job left behind (a crash during the final deletes)."""
        for path in (self._staging, self._previous, self._discard):
            _rmtree(path)

